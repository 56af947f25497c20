"""Synthetic 2D fluorescence-like images, anomalies for the anomaly benchmark, and datasets.

:func:`generate_image`: structures from :func:`napari_sim_uq.core.data.structures.render_structures`
(filaments, rings, beads, textured nuclei; the mix set by ``kind``), blurred by a Gaussian
PSF (``scipy.ndimage.gaussian_filter``, reflect boundary) and min-max normalised to
``[0, 1]``. Clean images only: noise and other damage come from
:mod:`napari_sim_uq.core.data.degrade`. Structure counts scale with the image size
(reference 128 x 128): filaments and rings with the longer side, beads and nuclei with the
area.

:func:`insert_anomaly` adds one abnormal structure and returns its mask, the anomaly's
nominal region: ``blob`` (a bright soft disk; mask: the disk), ``cluster`` (a dense cluster
of 30-80 PSF-blurred beads; mask: the cluster's disk), ``texture`` (a patch replaced by a
foreign high-frequency grating; mask: the patch), ``line`` (a sharp straight bright
scratch across the image, not blurred by the PSF; mask: the line's pixels).

:func:`generate_dataset_2d` writes ``out_dir/{train,val,test}/image_XXXXX.tif``; image ``i``
of split ``s`` (0 train, 1 val, 2 test) is ``generate_image(size, (seed, s, i), kind)``,
so a dataset is the same whatever the counts of the other splits.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_sim_uq.core.data.structures import render_structures, splat
from napari_sim_uq.core.errors import InputError

__all__ = [
    "ANOMALY_KINDS",
    "IMAGE_KINDS",
    "SPLITS",
    "generate_dataset_2d",
    "generate_image",
    "insert_anomaly",
]

IMAGE_KINDS = ("mixed", "filaments", "nuclei")
ANOMALY_KINDS = ("blob", "cluster", "texture", "line")
SPLITS = ("train", "val", "test")
DTYPES = ("uint16", "float32")
_FILE_RE = re.compile(r"^image_\d{5}\.tif$")
_REF = 128.0  # reference image side of the structure counts


def _size2(size: Any) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (size, size)
    try:
        h, w = size
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (h, w))
    except (TypeError, ValueError):
        ok = False
    if not ok or min(h, w) < 8:
        raise InputError(f"size must be an integer >= 8 or (height, width) of such, got {size!r}")
    return int(h), int(w)


def _seed_sequence(seed: Any) -> np.random.SeedSequence:
    entropy = seed if isinstance(seed, (list, tuple)) else [seed]
    if not entropy or any(
        isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in entropy
    ):
        raise InputError(f"seed must be a non-negative integer or a tuple of them, got {seed!r}")
    return np.random.SeedSequence([int(s) for s in entropy])


def _sigma(v: Any, name: str) -> float:
    try:
        out = float(v)
    except (TypeError, ValueError):
        out = math.nan
    if not (math.isfinite(out) and out >= 0):
        raise InputError(f"{name} must be a number >= 0 (pixels), got {v!r}")
    return out


def _counts(kind: str, h: int, w: int) -> dict:
    s = max(h, w) / _REF
    a = h * w / _REF**2

    def rng_(lo: float, hi: float, scale: float, minimum: int = 0) -> tuple[int, int]:
        lo_n = max(minimum, round(lo * scale))
        return lo_n, max(lo_n, round(hi * scale))

    if kind == "filaments":
        return dict(n_filaments=rng_(3, 8, s, 1), n_rings=rng_(0, 2, s), n_beads=rng_(0, 10, a))
    if kind == "nuclei":
        return dict(n_filaments=0, n_rings=0, n_beads=rng_(0, 5, a), n_nuclei=rng_(3, 8, a, 1))
    return dict(
        n_filaments=rng_(2, 5, s, 1),
        n_rings=rng_(0, 2, s),
        n_beads=rng_(3, 12, a),
        n_nuclei=rng_(1, 3, a, 1),
    )


def generate_image(
    size: int | tuple[int, int],
    seed: int | Sequence[int],
    kind: str = "mixed",
    *,
    psf_sigma: float = 1.5,
    line_width: float = 0.8,
    fine_factor: int = 2,
    background: float = 0.0,
) -> np.ndarray:
    """A clean float32 ``(H, W)`` image in ``[0, 1]`` (minimum 0, maximum 1).

    ``kind``: ``"mixed"`` (filaments, rings, beads and a few nuclei), ``"filaments"``
    (filaments, rings, beads) or ``"nuclei"`` (textured nuclei and a few beads). ``seed``: an
    integer or a tuple of integers (``np.random.SeedSequence`` entropy); the same arguments
    give the same image. ``psf_sigma`` and ``line_width`` are in pixels.

    ``background`` (``>= 0``, ``< 1``): a smooth autofluorescence background, as in real
    fluorescence images, of mean level ``background`` (varying between 0.5x and 1.5x of it
    over a fifth of the image); the image is then ``b + (1 - max b) s`` with the structures
    ``s`` in ``[0, 1]``, so it lies in ``[0, 1]`` with its darkest pixels near ``b``. It
    draws from its own random stream: the structures are those of ``background=0``.
    """
    from scipy import ndimage

    h, w = _size2(size)
    if kind not in IMAGE_KINDS:
        raise InputError(f"kind must be one of {', '.join(IMAGE_KINDS)}, got {kind!r}")
    psf_sigma = _sigma(psf_sigma, "psf_sigma")
    rng = np.random.default_rng(_seed_sequence(seed))
    counts = _counts(kind, h, w)
    img = render_structures(
        (h, w),
        fine_factor,
        line_width=line_width,
        rng=rng,
        nucleus_size=(0.05, 0.12),
        **counts,
    ).astype(np.float64)
    if psf_sigma > 0:
        img = ndimage.gaussian_filter(img, psf_sigma, mode="reflect")
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    if not (isinstance(background, (int, float)) and 0 <= background < 1):
        raise InputError(f"background must be a level in [0, 1), got {background!r}")
    if background > 0:
        brng = np.random.default_rng(_seed_sequence(seed).spawn(1)[0])
        field = ndimage.gaussian_filter(brng.normal(size=(h, w)), max(h, w) / 5, mode="wrap")
        span = field.max() - field.min()
        u = (field - field.min()) / span if span > 0 else np.full((h, w), 0.5)
        b = np.minimum(background * (0.5 + u), 0.99)
        img = b + (1.0 - b.max()) * img
    return img.astype(np.float32)


# --------------------------------------------------------------------------- anomalies


def _as_rng(rng: Any) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(_seed_sequence(rng))


def insert_anomaly(
    img: np.ndarray,
    rng: np.random.Generator | int,
    kind: str = "blob",
    *,
    psf_sigma: float = 1.5,
) -> tuple[np.ndarray, np.ndarray]:
    """``img`` (2D, intensities in ``[0, 1]``) with one anomaly, clipped to ``[0, 1]``, and
    the anomaly's bool mask (module docstring). ``kind``: one of :data:`ANOMALY_KINDS`, or
    ``"random"`` (one of them drawn from ``rng``). ``rng``: a NumPy Generator or a seed.
    The input is not modified."""
    from scipy import ndimage

    a = np.asarray(img)
    if a.ndim != 2 or a.dtype.kind not in "uif" or min(a.shape) < 8:
        raise InputError(
            f"insert_anomaly needs a 2D image of at least 8 x 8 pixels, got shape {a.shape} "
            f"and type {a.dtype}"
        )
    if not np.isfinite(a).all():
        raise InputError("insert_anomaly: the image contains NaN or infinite values")
    valid = (*ANOMALY_KINDS, "random")
    if kind not in valid:
        raise InputError(f"anomaly kind must be one of {', '.join(valid)}, got {kind!r}")
    psf_sigma = _sigma(psf_sigma, "psf_sigma")
    rng = _as_rng(rng)
    if kind == "random":
        kind = ANOMALY_KINDS[int(rng.integers(len(ANOMALY_KINDS)))]
    H, W = a.shape
    side = min(H, W)
    out = a.astype(np.float64)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)

    if kind in ("blob", "cluster"):
        r = (
            max(2.0, rng.uniform(0.05, 0.1) * side)
            if kind == "blob"
            else max(3.0, rng.uniform(0.06, 0.12) * side)
        )
        cy, cx = rng.uniform((r, r), (H - r, W - r))
        d = np.hypot(yy - cy, xx - cx)
        amp = rng.uniform(0.7, 1.0)
        mask = d <= r
        if kind == "blob":
            profile = 1 / (1 + np.exp((d / r - 1) * 6))
        else:
            n = int(rng.integers(30, 81))
            rad = r * np.sqrt(rng.uniform(0, 1, n))
            ang = rng.uniform(0, 2 * np.pi, n)
            pts = np.zeros((H, W))
            splat(pts, cy + rad * np.sin(ang), cx + rad * np.cos(ang), np.ones(n))
            profile = ndimage.gaussian_filter(pts, max(psf_sigma, 0.7))
            profile /= profile.max()
        out = out + amp * profile
    elif kind == "texture":
        ph, pw = (rng.uniform(0.15, 0.3, 2) * np.array([H, W])).round().astype(int)
        y0, x0 = int(rng.integers(0, H - ph + 1)), int(rng.integers(0, W - pw + 1))
        mask = np.zeros((H, W), bool)
        mask[y0 : y0 + ph, x0 : x0 + pw] = True
        period = rng.uniform(2.5, 4.0)
        t = rng.uniform(0, np.pi)
        grating = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(t) + yy * np.sin(t)) / period)
        out = np.where(mask, 0.2 + 0.6 * grating, out)
    else:  # line: a sharp scratch through the image
        cy, cx = rng.uniform((0.2 * H, 0.2 * W), (0.8 * H, 0.8 * W))
        t = rng.uniform(0, np.pi)
        width = rng.uniform(1.0, 2.0)
        dist = np.abs((xx - cx) * np.sin(t) - (yy - cy) * np.cos(t))
        mask = dist <= width / 2 + 0.5
        profile = np.clip(width / 2 + 0.5 - dist, 0, 1)
        out = out + rng.uniform(0.7, 1.0) * profile
    return np.clip(out, 0, 1).astype(np.float32), mask


# --------------------------------------------------------------------------- datasets


def _count(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise InputError(f"{name} must be an integer >= 0, got {v!r}")
    return int(v)


def generate_dataset_2d(
    out_dir: str | os.PathLike,
    n_train: int,
    n_val: int,
    n_test: int,
    size: int | tuple[int, int] = 128,
    seed: int = 0,
    overwrite: bool = False,
    *,
    kind: str = "mixed",
    dtype: str = "uint16",
    psf_sigma: float = 1.5,
    background: float = 0.0,
) -> dict[str, list[Path]]:
    """Write clean synthetic images to ``out_dir/{train,val,test}/image_XXXXX.tif`` and
    ``out_dir/dataset_2d.json`` (the parameters); returns ``{split: [files]}``.

    ``dtype``: ``"uint16"`` (``round(65535 * image)``) or ``"float32"`` (the image as is).
    Existing files are never replaced unless ``overwrite=True`` (checked before anything is
    written); with ``overwrite=True``, older ``image_XXXXX.tif`` files of these splits beyond
    the new counts are removed too, so a split holds exactly this dataset.
    """
    from napari_sim_uq.core.io.tiff_io import atomic_write, write_image

    counts = {
        "train": _count(n_train, "n_train"),
        "val": _count(n_val, "n_val"),
        "test": _count(n_test, "n_test"),
    }
    if sum(counts.values()) == 0:
        raise InputError("nothing to generate: n_train, n_val and n_test are all 0")
    h, w = _size2(size)
    _seed_sequence(seed)
    if kind not in IMAGE_KINDS:
        raise InputError(f"kind must be one of {', '.join(IMAGE_KINDS)}, got {kind!r}")
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    psf_sigma = _sigma(psf_sigma, "psf_sigma")
    if not (isinstance(background, (int, float)) and 0 <= background < 1):
        raise InputError(f"background must be a level in [0, 1), got {background!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output folder '{out_dir}' is a file; choose a folder")

    files = {s: [out_dir / s / f"image_{i:05d}.tif" for i in range(n)] for s, n in counts.items()}
    doc_path = out_dir / "dataset_2d.json"
    for s in SPLITS:
        d = out_dir / s
        if d.exists() and not d.is_dir():
            raise InputError(f"'{d}' is a file; choose another output folder")
    existing = [p for s in SPLITS for p in files[s] if p.exists()]
    if doc_path.exists():
        existing.append(doc_path)
    if existing and not overwrite:
        raise FileExistsError(
            f"'{out_dir}' already holds a dataset ({len(existing)} files, e.g. '{existing[0]}'); "
            "not overwriting it (pass overwrite=True, or choose another folder)"
        )
    if overwrite:
        for s in SPLITS:
            d = out_dir / s
            if d.is_dir():
                keep = {p.name for p in files[s]}
                for p in d.iterdir():
                    if p.is_file() and _FILE_RE.match(p.name) and p.name not in keep:
                        p.unlink()

    for split_no, s in enumerate(SPLITS):
        for i, path in enumerate(files[s]):
            img = generate_image(
                (h, w), (int(seed), split_no, i), kind, psf_sigma=psf_sigma, background=background
            )
            data = np.rint(img * 65535).astype(np.uint16) if dtype == "uint16" else img
            md = {
                "sim_uq": {
                    "synthetic2d": {
                        "seed": int(seed),
                        "split": s,
                        "index": i,
                        "kind": kind,
                        "psf_sigma": psf_sigma,
                        "background": background,
                    }
                }
            }
            write_image(path, data, name=path.stem, metadata=md, overwrite=overwrite)
    doc = {
        "format": "napari-sim-uq synthetic 2D dataset",
        "size": [h, w],
        "seed": int(seed),
        "kind": kind,
        "dtype": dtype,
        "psf_sigma": psf_sigma,
        "background": background,
        "counts": counts,
        "image": "image i of split s (0 train, 1 val, 2 test) = "
        "generate_image(size, (seed, s, i), kind, psf_sigma=psf_sigma, background=background), "
        "in [0, 1]" + (", stored as round(65535 * image)" if dtype == "uint16" else ""),
    }
    text = json.dumps(doc, indent=2)
    atomic_write(doc_path, lambda tmp: Path(tmp).write_text(text), overwrite=True)
    return files
