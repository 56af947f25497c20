"""SIM training and reconstruction data: intensity normalisation, datasets and loaders.

Pure NumPy/PyTorch (no Qt, no napari).

Normalisation: :mod:`napari_sim_uq.core.data.normalization` (the raw stacks are normalised per
stack, per time point). Loaders and file lists: :mod:`napari_sim_uq.core.data.loaders`.

Ground truth in the same units
------------------------------
The forward model ``y_i = down_f(B(h * (e . l_i))) + b`` (DESIGN.md 4) is linear in the
emitter ``e`` and the background ``b`` (the PSF sums to 1, the patterns are dimensionless).
So if the raw data are normalised, ``x' = (x - offset) / scale``, the targets that reproduce
``x'`` through the same forward model are::

    e' = e / scale     l' = l     b' = (b - offset) / scale     sigma' = sigma / scale

``gt_norm="raw"`` (default) uses exactly this: the network's emitter then lives in the
units of the normalised raw data, and a physics loss on ``x'`` and a supervised loss on
``e'`` agree. This is the right choice for supervised training. The other modes scale the
emitter target on its own and break that consistency: ``"minmax_full"`` (the reference
method: ground-truth emitter min-max scaled to [0, 1] over the full image), ``"percentile"``
(the emitter's own 0.1-99.9 percentiles), ``"none"`` (photons as stored). Patterns are
never rescaled; noise sigma and background describe the raw data and always follow the raw
normalisation. Each supervised item carries the emitter's ``(offset, scale)`` so a
prediction maps back to photons by ``e = e' * scale + offset``.

Datasets on disk
----------------
The layout of :mod:`napari_sim_uq.tasks.sim.synth`: raw stacks ``D/{split}/NAME.tif``, ground
truth ``D/{split}_gt/NAME.tif`` (emitter ``(fH, fW)``) and ``D/{split}_gt/NAME_lp.tif``
(patterns ``(A*P, fH, fW)``), and optionally ``D/{split}_meta/NAME.npz`` (``noise_sigma``,
``background``, ``psf``, ``hr_factor``, ...). Time series files ``(T, A*P, H, W)`` give
``T`` items (their ground truth may be one image for all time points or one per time point).
"""

from __future__ import annotations

import math
import os
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from napari_sim_uq.core.data.loaders import (
    positive_int,
    resolve_files,
)
from napari_sim_uq.core.data.normalization import (
    Normalization,
    _as_numpy,
    _check_numeric,
)
from napari_sim_uq.core.errors import FileFormatError, InputError
from napari_sim_uq.core.io.layout import Layout, as_frames, infer_layout
from napari_sim_uq.core.io.tiff_io import (
    TIFF_SUFFIXES,
    _int_or_none,
    _stored_layer_info,
    check_ifd_chain,
    decode_image,
    read_image,
)

__all__ = [
    "GT_NORMS",
    "SimStackDataset",
    "emitter_normalization",
    "frames_from_array",
    "ground_truth_paths",
]

GT_NORMS = ("raw", "minmax_full", "percentile", "none")


# --------------------------------------------------------------------------- normalisation


def emitter_normalization(
    emitter: Any, gt_norm: str, raw_norm: Normalization, what: str = "ground truth"
) -> tuple[float, float]:
    """``(offset, scale)`` mapping a ground-truth emitter to training targets,
    ``e' = (e - offset) / scale``, for ``gt_norm`` in :data:`GT_NORMS`.

    ``"raw"`` gives ``(0, raw_norm.scale)``: the physics-consistent choice (module docstring).
    """
    if gt_norm not in GT_NORMS:
        raise InputError(f"gt_norm must be one of {GT_NORMS}, got {gt_norm!r}")
    if gt_norm == "raw":
        return 0.0, raw_norm.scale
    if gt_norm == "none":
        return 0.0, 1.0
    mode = "minmax" if gt_norm == "minmax_full" else "percentile"
    n = Normalization(mode).fit(emitter, what=what)
    return n.offset, n.scale


# --------------------------------------------------------------------------- in-memory arrays


def frames_from_array(
    array: Any,
    angles: int | None = None,
    phases: int | None = None,
    *,
    expected_frames: int | None = None,
    axes: str | None = None,
    what: str = "array",
) -> tuple[np.ndarray, Layout]:
    """An in-memory SIM array of any supported layout as ``(T, A*P, H, W)`` float32 frames.

    ``(A*P, H, W)`` and ``(A, P, H, W)`` give ``T = 1``; ``(T, A*P, H, W)`` gives ``T`` time
    points. ``axes`` (e.g. ``"TZYX"``) settles an ambiguous 4D shape. ``expected_frames`` is
    the number of frames a model needs. Returns a copy (never a view of ``array``).
    """
    a = _as_numpy(array)
    if a.ndim == 2:
        raise InputError(
            f"{what}: this is a 2D image (shape {a.shape}), not a SIM stack. SIM "
            "reconstruction needs the raw frames, (angles*phases, H, W)."
        )
    a = _check_numeric(a, what)
    layout = infer_layout(a.shape, angles=angles, phases=phases, axes=axes, what=what)
    frames = np.array(as_frames(a, layout), dtype=np.float32, copy=True)
    _check_expected_frames(layout, expected_frames, what)
    return frames, layout


def _check_expected_frames(layout: Layout, expected: int | None, what: str) -> None:
    if expected is not None and layout.n_frames != expected:
        raise InputError(
            f"{what}: has {layout.n_frames} frames per stack ({layout.angles} angles x "
            f"{layout.phases} phases) but {expected} are expected (expected_frames={expected})"
        )


# --------------------------------------------------------------------------- files


def ground_truth_paths(raw_path: str | os.PathLike) -> dict[str, Path]:
    """Where the ground truth of ``D/{split}/NAME.tif`` lies (the generator's layout):
    ``emitter`` ``D/{split}_gt/NAME.tif``, ``patterns`` ``D/{split}_gt/NAME_lp.tif`` and
    ``meta`` ``D/{split}_meta/NAME.npz``."""
    p = Path(raw_path)
    split, root, stem = p.parent.name, p.parent.parent, p.stem
    gt = root / f"{split}_gt"
    return {
        "emitter": gt / f"{stem}{p.suffix}",
        "patterns": gt / f"{stem}_lp{p.suffix}",
        "meta": root / f"{split}_meta" / f"{stem}.npz",
    }


def _tiff_header(path: Path) -> tuple[tuple[int, ...], str, dict] | None:
    """(shape, axes, ImageJ metadata) of a TIFF's first series without reading pixels, or
    None when the header cannot be read (then a full read gives the proper error)."""
    import tifffile

    if path.suffix.lower() not in TIFF_SUFFIXES or not path.is_file():
        return None
    try:
        check_ifd_chain(path)  # a looping directory chain would make tifffile read forever
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                return None
            series = tif.series[0]
            return tuple(int(s) for s in series.shape), series.axes, dict(tif.imagej_metadata or {})
    except Exception:  # any failure: a full read (read_image) gives the proper diagnosis
        return None


def _probe_stack(path: Path, angles: int | None, phases: int | None) -> tuple[tuple, Layout]:
    """Shape and layout of a raw stack, as :func:`read_image` would infer them, from the
    header only where possible (same rules: caller's angles/phases over ImageJ
    ``sim_angles``/``sim_phases``, a layout stored by this package over both)."""
    head = _tiff_header(path)
    if head is None or head[1].endswith("S"):
        rec = read_image(path, angles=angles, phases=phases)
        return tuple(rec.data.shape), rec.layout
    shape, axes, ij = head
    stored = _stored_layer_info(ij)
    a = angles if angles is not None else _int_or_none(ij.get("sim_angles"))
    p = phases if phases is not None else _int_or_none(ij.get("sim_phases"))
    if stored.get("layout"):
        a = stored["layout"].get("angles", a)
        p = stored["layout"].get("phases", p)
    ij_axes = stored.get("tiff_axes") or axes
    return shape, infer_layout(shape, angles=a, phases=p, axes=ij_axes, what=f"'{path}'")


def _gt_shape(path: Path) -> tuple[int, ...]:
    head = _tiff_header(path)
    if head is not None:
        return head[0]
    return tuple(_read_gt(path).shape)


def _read_gt(path: Path) -> np.ndarray:
    """A ground-truth array (any shape) as float32, with clear errors."""
    return _check_numeric(decode_image(path), f"'{path}'").astype(np.float32, copy=False)


def _read_meta(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise FileFormatError(f"Cannot open '{path}': not a readable .npz file ({err})") from None


# --------------------------------------------------------------------------- dataset


@dataclass
class _FileInfo:
    path: Path
    n_t: int
    n_frames: int
    hw: tuple[int, int]
    layout: Layout
    gt: dict[str, Path] | None = None
    has_meta: bool = False


class SimStackDataset(Dataset):
    """Raw SIM stacks (and, with ``supervised=True``, their ground truth) as training items.

    Parameters
    ----------
    pattern_or_paths : a glob (``"D/train/*.tif"``), a folder or a list of files.
    supervised : pair each ``D/{split}/NAME.tif`` with ``D/{split}_gt/NAME.tif`` (emitter),
        ``D/{split}_gt/NAME_lp.tif`` (patterns; when no file has them, the items carry
        the emitter ground truth only) and, if present for every file,
        ``D/{split}_meta/NAME.npz`` (noise sigma, background).
    gt_norm : emitter target normalisation, one of :data:`GT_NORMS` (module docstring;
        ``"raw"``, the physics-consistent one, by default).
    norm_mode, norm_percentiles : the raw normalisation (:class:`Normalization`), fitted
        per stack (per time point), on the full field of view before cropping.
    angles, phases : passed to :func:`read_image` for files without SIM metadata.
    expected_frames : frames per stack the model needs (``A*P``); other files are refused.
    hr_factor : the HR factor ``f``; by default derived from the ground-truth shape (which
        must be exactly ``f`` times the raw size, the same ``f`` for every file).
    crop : ``(h, w)`` random crop in LR pixels, the HR ground truth cropped at the matching
        ``(f*h, f*w)`` window. The window depends only on ``seed``, the epoch
        (:meth:`set_epoch`) and the item index.
    cache : keep arrays read from disk in memory (filled lazily; :meth:`preload` fills it
        at once, e.g. before a DataLoader forks its workers).

    Items are dicts: ``"x"`` ``(A*P, H, W)`` float32 normalised raw; ``"norm"``
    ``{"offset", "scale"}`` 0-d float32 tensors; ``"index"`` (int64). Supervised items add
    ``"emitter_gt"`` ``(1, fH, fW)``, ``"lp_gt"`` ``(A*P, fH, fW)``, ``"emitter_norm"``
    ``{"offset", "scale"}`` and, with meta files, ``"noise_sigma"`` ``(A*P, H, W)`` and
    ``"background"`` (0-d), both in normalised raw units.

    Files of different sizes cannot be batched: use ``batch_size=1`` or ``crop``
    (:func:`make_loader` checks this).
    """

    def __init__(
        self,
        pattern_or_paths: str | os.PathLike | Sequence,
        *,
        supervised: bool = False,
        gt_norm: str = "raw",
        norm_mode: str = "percentile",
        norm_percentiles: tuple[float, float] = (0.1, 99.9),
        angles: int | None = None,
        phases: int | None = None,
        expected_frames: int | None = None,
        hr_factor: int | None = None,
        crop: tuple[int, int] | None = None,
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        if gt_norm not in GT_NORMS:
            raise InputError(f"gt_norm must be one of {GT_NORMS}, got {gt_norm!r}")
        self.norm_template = Normalization.with_percentiles(norm_mode, norm_percentiles)
        self.supervised = bool(supervised)
        self.gt_norm = gt_norm
        self.angles = positive_int(angles, "angles")
        self.phases = positive_int(phases, "phases")
        self.expected_frames = positive_int(expected_frames, "expected_frames")
        given_f = positive_int(hr_factor, "hr_factor")
        if crop is not None:
            try:
                ch, cw = crop
            except (TypeError, ValueError):
                raise InputError(f"crop must be (height, width) in pixels, got {crop!r}") from None
            crop = (positive_int(ch, "crop height", False), positive_int(cw, "crop width", False))
        self.crop = crop
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self.epoch = 0
        self.cache = bool(cache)
        self._cache: dict[int, dict] = {}
        self._norms: dict[tuple[int, int], Normalization] = {}
        self._emitter_norms: dict[tuple[int, int], tuple[float, float]] = {}
        self._patterns: list | None = None  # per item PatternEstimate (set_pattern_estimates)
        self._pattern_f = 1

        self.files = resolve_files(pattern_or_paths)
        self._info = [self._probe(p) for p in self.files]
        self.hr_factor = given_f
        self.has_meta = False
        self.has_patterns = False
        if self.supervised:
            self.hr_factor = self._pair_ground_truth(given_f)
        if crop is not None:
            for info in self._info:
                if crop[0] > info.hw[0] or crop[1] > info.hw[1]:
                    raise InputError(
                        f"crop {crop} is larger than '{info.path}' ({info.hw[0]} x {info.hw[1]} "
                        "pixels)"
                    )
        self._index = [(k, t) for k, info in enumerate(self._info) for t in range(info.n_t)]

    # -- construction helpers
    def _probe(self, path: Path) -> _FileInfo:
        shape, layout = _probe_stack(path, self.angles, self.phases)
        if not layout.is_sim:
            raise InputError(
                f"'{path}': this is {layout.what} (shape {shape}), not a SIM stack; a raw SIM "
                "stack has angles x phases frames (A*P, H, W)"
            )
        _check_expected_frames(layout, self.expected_frames, f"'{path}'")
        n_t = layout.n_timepoints or 1
        return _FileInfo(path, n_t, layout.n_frames, (shape[-2], shape[-1]), layout)

    def _pair_ground_truth(self, given_f: int | None) -> int:
        f_all = given_f
        f_source = "hr_factor" if given_f is not None else None
        meta_missing = []
        # light patterns: for every file or for none (then emitter-only supervision)
        lp_found = [ground_truth_paths(i.path)["patterns"].is_file() for i in self._info]
        self.has_patterns = any(lp_found)
        for info in self._info:
            gt = ground_truth_paths(info.path)
            if not gt["emitter"].is_file():
                raise InputError(
                    f"no ground truth for '{info.path.name}': expected '{gt['emitter']}' "
                    "(supervised=True)"
                )
            if self.has_patterns and not gt["patterns"].is_file():
                raise InputError(
                    f"no ground-truth light pattern for '{info.path.name}': expected "
                    f"'{gt['patterns']}' (other files of this dataset have one)"
                )
            info.gt = gt
            info.has_meta = gt["meta"].is_file()
            if not info.has_meta:
                meta_missing.append(gt["meta"])
            H, W = info.hw
            es = _gt_shape(gt["emitter"])
            if len(es) < 2:
                raise InputError(f"'{gt['emitter']}': ground truth must be 2D, got shape {es}")
            fh, fw = es[-2:]
            if fh % H or fw % W or fh // H != fw // W or fh < H:
                raise InputError(
                    f"'{gt['emitter']}': ground-truth emitter is {fh} x {fw}, which is not the "
                    f"same integer multiple f of the raw stack '{info.path}' ({H} x {W}); it "
                    "must be (f*H, f*W)"
                )
            f = fh // H
            if f_all is None:
                f_all, f_source = f, f"'{gt['emitter']}'"
            elif f != f_all:
                raise InputError(
                    f"'{gt['emitter']}': ground-truth emitter is {fh} x {fw}, expected "
                    f"({f_all}*{H}, {f_all}*{W}) = ({f_all * H}, {f_all * W}) for hr_factor="
                    f"{f_all} (from {f_source})"
                )
            lead = math.prod(es[:-2])
            if lead not in (1, info.n_t):
                raise InputError(
                    f"'{gt['emitter']}': ground-truth emitter has shape {es}; expected "
                    f"({fh}, {fw})" + (f" or ({info.n_t}, {fh}, {fw})" if info.n_t > 1 else "")
                )
            if not self.has_patterns:
                continue
            ls = _gt_shape(gt["patterns"])
            F = info.n_frames
            if len(ls) < 3 or ls[-2:] != (fh, fw) or math.prod(ls[:-2]) not in (F, info.n_t * F):
                raise InputError(
                    f"'{gt['patterns']}': ground-truth light patterns have shape {ls}; expected "
                    f"({F}, {fh}, {fw}) to match '{info.path.name}' and its emitter"
                )
        self.has_meta = not meta_missing
        if meta_missing and len(meta_missing) < len(self._info):
            warnings.warn(
                f"meta files (noise sigma, background) exist for only some of the "
                f"{len(self._info)} files (e.g. '{meta_missing[0]}' is missing); items will "
                "carry no noise_sigma/background",
                stacklevel=3,
            )
        return f_all

    # -- public helpers
    @property
    def config(self) -> dict:
        """The dataset options as JSON (for checkpoints and result metadata)."""
        return {
            "supervised": self.supervised,
            "gt_norm": self.gt_norm,
            "norm": {
                k: v for k, v in self.norm_template.to_dict().items() if "pct" in k or k == "mode"
            },
            "angles": self.angles,
            "phases": self.phases,
            "expected_frames": self.expected_frames,
            "hr_factor": self.hr_factor,
            "crop": list(self.crop) if self.crop else None,
            "seed": self.seed,
        }

    @property
    def item_shapes(self) -> list[tuple[int, int, int]]:
        """``(A*P, h, w)`` of the items of each file (after cropping)."""
        return [(i.n_frames, *(self.crop or i.hw)) for i in self._info]

    @property
    def full_shapes(self) -> list[tuple[int, int, int]]:
        """``(A*P, H, W)`` of the whole frames of each item (no crop)."""
        return [(i.n_frames, *i.hw) for i in self._info for _ in range(i.n_t)]

    def raw_frames(self, index: int) -> np.ndarray:
        """The whole raw frames ``(A*P, H, W)`` of item ``index`` as stored (float32, not
        normalised, not cropped; a view of the cache: do not modify)."""
        k, t = self._index[self._check_index(index)]
        return self._load(k)["frames"][t]

    def set_pattern_estimates(self, estimates: Sequence | None, hr_factor: int) -> None:
        """Give every item its light patterns (one
        :class:`~napari_sim_uq.tasks.sim.classical.estimate.PatternEstimate` per item, of
        its whole frames, or ``None`` to remove them): items then carry ``"lp_est"`` and
        ``"lp_est_var"`` ``(A*P, fh, fw)``, the parametric patterns and their variance on
        the item's (cropped) HR grid (:mod:`napari_sim_uq.tasks.sim.pattern_model`)."""
        if estimates is not None and len(estimates) != len(self):
            raise InputError(
                f"{len(estimates)} pattern estimates for a dataset of {len(self)} items"
            )
        self._patterns = None if estimates is None else list(estimates)
        self._pattern_f = positive_int(hr_factor, "hr_factor", False)

    def check_batchable(self) -> None:
        """Raise :class:`InputError` unless all items have the same shape."""
        shapes = self.item_shapes
        for info, s in zip(self._info, shapes, strict=True):
            if s != shapes[0]:
                raise InputError(
                    f"'{self._info[0].path}' gives items of shape {shapes[0]} but "
                    f"'{info.path}' gives {s}; files of different sizes or frame counts "
                    "cannot share a batch: use batch_size=1, or crop=(h, w) for sizes"
                )

    def item_source(self, index: int) -> tuple[Path, int]:
        """``(file, time point)`` of item ``index``."""
        k, t = self._index[self._check_index(index)]
        return self.files[k], t

    def set_epoch(self, epoch: int) -> None:
        """Select the random crops of ``epoch`` (call at the start of every epoch)."""
        self.epoch = int(epoch)

    def crop_window(self, index: int) -> tuple[int, int, int, int]:
        """``(y0, x0, h, w)`` in LR pixels of item ``index`` in the current epoch (the HR
        window is ``(f*y0, f*x0, f*h, f*w)``); the full field without ``crop``."""
        index = self._check_index(index)
        k, _ = self._index[index]
        H, W = self._info[k].hw
        if self.crop is None:
            return 0, 0, H, W
        h, w = self.crop
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)), h, w

    def normalization(self, index: int) -> Normalization:
        """The raw normalisation of item ``index`` (float64 numbers, for inversion)."""
        k, t = self._index[self._check_index(index)]
        return self._norm(k, t)

    def sample_meta(self, index: int) -> dict[str, np.ndarray]:
        """The meta ``.npz`` of item ``index``'s file as stored (psf, ...), or ``{}``."""
        k, _ = self._index[self._check_index(index)]
        info = self._info[k]
        if not (info.gt and info.has_meta):
            return {}
        return _read_meta(info.gt["meta"])

    def preload(self) -> SimStackDataset:
        """Read every file into the cache now (no-op without ``cache``)."""
        if self.cache:
            for k in range(len(self._info)):
                self._load(k)
        return self

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return (
            f"SimStackDataset({len(self.files)} files, {len(self)} items, "
            f"supervised={self.supervised}, gt_norm={self.gt_norm!r}, crop={self.crop})"
        )

    # -- loading
    def _check_index(self, index: int) -> int:
        n = len(self._index)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"item {index} out of range for a dataset of {n} items")
        return i

    def _load(self, k: int) -> dict:
        if k in self._cache:
            return self._cache[k]
        info = self._info[k]
        rec = read_image(info.path, angles=self.angles, phases=self.phases)
        if not rec.layout.is_sim:
            raise InputError(f"'{info.path}': this is {rec.layout.what}, not a SIM stack")
        frames = np.asarray(as_frames(rec.data, rec.layout), dtype=np.float32)
        expected = (info.n_t, info.n_frames, *info.hw)
        if frames.shape != expected:
            raise InputError(
                f"'{info.path}': read as {frames.shape} frames but {expected} when the dataset "
                "was opened; did the file change?"
            )
        d: dict[str, Any] = {"frames": frames}
        if self.supervised:
            d.update(self._load_gt(info))
        if self.cache:
            self._cache[k] = d
        return d

    def _load_gt(self, info: _FileInfo) -> dict:
        f = self.hr_factor
        H, W = info.hw
        T, F = info.n_t, info.n_frames
        hr = (f * H, f * W)
        e = _read_gt(info.gt["emitter"])
        if e.shape[-2:] != hr or math.prod(e.shape[:-2]) not in (1, T):
            raise InputError(f"'{info.gt['emitter']}': ground-truth emitter has shape {e.shape}")
        out: dict[str, Any] = {"emitter": e.reshape(-1, *hr)}
        if self.has_patterns:
            lp = _read_gt(info.gt["patterns"])
            if lp.shape[-2:] != hr or math.prod(lp.shape[:-2]) not in (F, T * F):
                raise InputError(f"'{info.gt['patterns']}': light patterns have shape {lp.shape}")
            out["patterns"] = lp.reshape(-1, F, *hr)
        if self.has_meta:
            path = info.gt["meta"]
            meta = _read_meta(path)
            for key in ("noise_sigma", "background"):
                if key not in meta:
                    raise InputError(f"'{path}': has no '{key}' entry")
            if "hr_factor" in meta and int(np.asarray(meta["hr_factor"])) != f:
                raise InputError(
                    f"'{path}': says hr_factor={int(np.asarray(meta['hr_factor']))} but the "
                    f"ground truth of '{info.path.name}' is {f} times the raw size"
                )
            ns = _check_numeric(np.asarray(meta["noise_sigma"]), f"'{path}' noise_sigma")
            if ns.shape == (H, W):
                ns = np.broadcast_to(ns, (F, H, W))
            if ns.shape[-2:] != (H, W) or math.prod(ns.shape[:-2]) not in (F, T * F):
                raise InputError(
                    f"'{path}': noise_sigma has shape {ns.shape}; expected ({F}, {H}, {W}) "
                    f"to match '{info.path.name}'"
                )
            bg = _check_numeric(np.asarray(meta["background"]), f"'{path}' background")
            if bg.size != 1:
                raise InputError(f"'{path}': background must be one number, got shape {bg.shape}")
            out["noise_sigma"] = ns.astype(np.float32).reshape(-1, F, H, W)
            out["background"] = float(bg.reshape(()))
        return out

    def _norm(self, k: int, t: int) -> Normalization:
        key = (k, t)
        if key not in self._norms:
            frames = self._load(k)["frames"][t]
            what = f"'{self.files[k]}'" + (f" time point {t}" if self._info[k].n_t > 1 else "")
            self._norms[key] = self.norm_template.fit(frames, what=what)
        return self._norms[key]

    def _emitter_norm(self, k: int, t: int, emitter: np.ndarray, raw: Normalization):
        key = (k, t)
        if key not in self._emitter_norms:
            what = f"'{self._info[k].gt['emitter']}'"
            self._emitter_norms[key] = emitter_normalization(emitter, self.gt_norm, raw, what)
        return self._emitter_norms[key]

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        k, t = self._index[index]
        d = self._load(k)
        norm = self._norm(k, t)
        y0, x0, h, w = self.crop_window(index)
        lr = (slice(None), slice(y0, y0 + h), slice(x0, x0 + w))
        item: dict[str, Any] = {
            "x": _tensor(norm.apply(d["frames"][t][lr])),
            "norm": _norm_tensors(norm.offset, norm.scale),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        if self._patterns is not None:
            from napari_sim_uq.tasks.sim.classical.patterns import parametric_patterns

            mean, std = parametric_patterns(
                self._patterns[index], self._pattern_f, (h, w), (y0, x0)
            )
            item["lp_est"] = _tensor(mean)
            item["lp_est_var"] = _tensor(np.square(std))
        if not self.supervised:
            return item
        f = self.hr_factor
        hr = (slice(f * y0, f * (y0 + h)), slice(f * x0, f * (x0 + w)))
        emitter = d["emitter"][t if len(d["emitter"]) > 1 else 0]
        e_off, e_scale = self._emitter_norm(k, t, emitter, norm)
        e = (emitter[hr].astype(np.float64) - e_off) / e_scale
        item["emitter_gt"] = _tensor(e[None])
        if self.has_patterns:
            patterns = d["patterns"][t if len(d["patterns"]) > 1 else 0]
            item["lp_gt"] = _tensor(patterns[(slice(None), *hr)])
        item["emitter_norm"] = _norm_tensors(e_off, e_scale)
        if self.has_meta:
            ns = d["noise_sigma"][t if len(d["noise_sigma"]) > 1 else 0]
            item["noise_sigma"] = _tensor(norm.apply_std(ns[lr]))
            item["background"] = torch.tensor(norm.apply(d["background"]), dtype=torch.float32)
        return item


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A float32 tensor owning a fresh copy (never sharing memory with the cache)."""
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


def _norm_tensors(offset: float, scale: float) -> dict[str, torch.Tensor]:
    return {
        "offset": torch.tensor(offset, dtype=torch.float32),
        "scale": torch.tensor(scale, dtype=torch.float32),
    }


# --------------------------------------------------------------------------- loaders
