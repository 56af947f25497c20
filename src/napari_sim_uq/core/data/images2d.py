"""2D training data: reading images, normalising them, and random degraded patches.

:func:`read_image_2d` reads one PNG or TIFF image (8-bit, 16-bit, other integers or float)
as float32 ``(H, W)`` in its stored units. Colour images (RGB, RGBA, palette PNGs,
grayscale + alpha) are converted to luminance ``0.299 R + 0.587 G + 0.114 B`` (ITU-R
BT.601, Pillow's ``"L"`` weights, without its rounding), alpha ignored, with a
``UserWarning``; other channel counts, NaN or infinite values, stacks of several planes and
images smaller than ``min_size`` are refused with an
:class:`~napari_sim_uq.core.errors.InputError` naming the file.

:class:`PatchDataset` normalises every image (:class:`Normalization`, percentile by
default; per image, or one rule fitted on all images with ``norm_scope="dataset"``), then
serves random ``patch x patch`` windows, degraded by a
:class:`~napari_sim_uq.core.data.degrade.Degradation` in normalised units. The window and
the degradation of item ``index`` depend only on ``(seed, epoch, index)``
(:meth:`PatchDataset.set_epoch`, called by
:func:`~napari_sim_uq.core.data.loaders.set_loader_epoch`), so training is reproducible
with any number of loader workers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from napari_sim_uq.core.data.degrade import Degradation, parse_degradations
from napari_sim_uq.core.data.loaders import positive_int, resolve_files
from napari_sim_uq.core.data.normalization import Normalization
from napari_sim_uq.core.errors import FileFormatError, InputError
from napari_sim_uq.core.io.tiff_io import (
    PNG_SUFFIXES,
    READ_SUFFIXES,
    TIFF_SUFFIXES,
    check_ifd_chain,
    decode_image,
)

__all__ = ["LUMA_WEIGHTS", "NORM_SCOPES", "PatchDataset", "image_from_array", "read_image_2d"]

#: weights of R, G, B in the luminance of a colour image (ITU-R BT.601)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
NORM_SCOPES = ("image", "dataset")
_COLOUR_PNG_MODES = ("RGB", "RGBA", "P", "PA", "LA", "La", "RGBa", "RGBX")


def _luminance(data: np.ndarray, what: str, channels: str) -> np.ndarray:
    """``(H, W, C)`` colour pixels -> float64 luminance ``(H, W)`` (module docstring)."""
    c = data.shape[-1]
    if c in (3, 4):
        rgb = data[..., :3].astype(np.float64)
        out = rgb @ np.asarray(LUMA_WEIGHTS)
        how = "converted to luminance 0.299 R + 0.587 G + 0.114 B"
    elif c == 2:  # grayscale + alpha
        out = data[..., 0].astype(np.float64)
        how = "its gray channel used"
    else:
        raise InputError(
            f"{what}: has {c} colour channels (shape {data.shape}); 2D training reads "
            "grayscale, RGB or RGBA images: convert it to grayscale first"
        )
    alpha = " (alpha ignored)" if c in (2, 4) else ""
    warnings.warn(f"{what}: {channels} colour image, {how}{alpha}", UserWarning, stacklevel=3)
    return out


def _colour_png(path: Path) -> np.ndarray | None:
    """The luminance of a colour PNG, or ``None`` when ``path`` is not one (grayscale or
    unreadable PNGs are left to :func:`decode_image` and its checks)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode not in _COLOUR_PNG_MODES:
                return None
            if mode in ("P", "PA"):
                img = img.convert("RGBA")
            elif mode in ("La", "RGBa", "RGBX"):
                img = img.convert("LA" if mode == "La" else "RGBA")
            data = np.asarray(img)
    except Exception:  # decode_image gives the clear error for a damaged file
        return None
    return _luminance(data, f"'{path}'", f"PNG mode {mode!r}")


def _colour_tiff(path: Path) -> np.ndarray | None:
    """The luminance of a TIFF with interleaved colour samples (axes ``...YXS``), or
    ``None`` when it has none."""
    import tifffile

    try:
        check_ifd_chain(path)  # a looping page chain: a clear error before tifffile reads it
        with tifffile.TiffFile(path) as tif:
            if not tif.series or not tif.series[0].axes.endswith("S"):
                return None
    except FileFormatError:
        raise
    except Exception:  # decode_image gives the clear error
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            data = tif.series[0].asarray()
    except MemoryError:
        raise FileFormatError(f"Cannot open '{path}': not enough memory to load it") from None
    except Exception as err:
        raise FileFormatError(f"Cannot open '{path}': unreadable TIFF ({err})") from err
    return _luminance(data, f"'{path}'", "TIFF")


def image_from_array(a: Any, what: str = "image", min_size: int = 8) -> np.ndarray:
    """``a`` as a float32 ``(H, W)`` image: squeezes singleton leading axes and refuses
    stacks, non-numeric data, NaN/inf and images smaller than ``min_size`` (InputError
    naming ``what``)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if a.dtype.kind not in "uif":
        raise InputError(f"{what}: unsupported data type {a.dtype} (need real numbers)")
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        more = (
            f"a stack of {int(np.prod(a.shape[:-2]))} planes"
            if a.ndim > 2
            else f"{a.ndim}-dimensional"
        )
        raise InputError(
            f"{what}: is {more} (shape {a.shape}); 2D training needs single 2D images: "
            "save the planes as separate files (or pass them as a list of 2D arrays)"
        )
    out = a.astype(np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        n_nan = int(np.isnan(out).sum())
        n_inf = int(out.size - finite.sum()) - n_nan
        raise InputError(
            f"{what}: contains {n_nan} NaN and {n_inf} infinite values (in float32); replace "
            "them (e.g. with the background level) first"
        )
    if min(out.shape) < min_size:
        raise InputError(
            f"{what}: is {out.shape[0]} x {out.shape[1]} pixels, smaller than the minimum "
            f"{min_size} x {min_size}"
        )
    return out


def read_image_2d(path: str | os.PathLike, *, min_size: int = 8) -> np.ndarray:
    """One PNG or TIFF image as float32 ``(H, W)`` in its stored units (module docstring)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READ_SUFFIXES:
        raise InputError(
            f"Cannot open '{path}': unsupported file type '{suffix}' "
            f"(supported: {', '.join(READ_SUFFIXES)})"
        )
    data = None
    if path.is_file():
        if suffix in PNG_SUFFIXES:
            data = _colour_png(path)
        elif suffix in TIFF_SUFFIXES:
            data = _colour_tiff(path)
    if data is None:
        data = decode_image(path)  # missing, damaged, truncated or huge files: clear errors
    return image_from_array(data, f"'{path}'", min_size)


# --------------------------------------------------------------------------- dataset


def _sources(sources: Any) -> list[tuple[str, Path | np.ndarray]]:
    """``(name, path or array)`` for every image of ``sources`` (module docstring)."""
    if isinstance(sources, (np.ndarray, torch.Tensor)):
        a = np.asarray(sources.detach().cpu() if isinstance(sources, torch.Tensor) else sources)
        if a.ndim == 3:
            return [(f"array plane {i}", a[i]) for i in range(a.shape[0])]
        return [("array", a)]
    if isinstance(sources, (str, os.PathLike)):
        return [(f"'{p}'", p) for p in resolve_files(sources)]
    if not isinstance(sources, Sequence) or isinstance(sources, (bytes, Mapping)):
        raise InputError(
            "images must be a glob, a folder, a file, a list of files or a list of 2D arrays, "
            f"got {type(sources).__name__}"
        )
    if len(sources) == 0:
        raise InputError("the list of training images is empty")
    out: list[tuple[str, Path | np.ndarray]] = []
    for i, s in enumerate(sources):
        if isinstance(s, (np.ndarray, torch.Tensor)):
            out.append((f"array {i}", s))
        elif isinstance(s, (str, os.PathLike)):
            out.append((f"'{s}'", Path(os.fspath(s))))
        else:
            raise InputError(f"image {i} must be a file path or a 2D array, got {type(s).__name__}")
    return out


class PatchDataset(Dataset):
    """Random degraded patches of 2D images for training an autoencoder.

    Parameters
    ----------
    sources : a glob, a folder, a file, a list of files, a list of 2D arrays (napari
        layers; a 3D array is a stack of 2D images), or a mix of files and arrays. All images
        are read into memory at construction.
    patch : side of the square patches in pixels, or ``None`` for whole images (one item per
        image; images of different sizes then need ``batch_size=1``).
    patches_per_image : items per image and epoch (``len = images x patches_per_image``).
    degradation : a :class:`Degradation`, a spec string (``"noise:0.1,mask:boxes"``), a
        stored dict, or ``None`` (``"x"`` equals ``"target"``).
    seed : with the epoch and the item index, selects the window and the degradation.
    norm_mode, norm_percentiles : the :class:`Normalization` rule.
    norm_scope : ``"image"`` (each image fitted on its own) or ``"dataset"`` (one rule
        fitted on all pixels of all images: keeps brightness differences between images).
    normalization : a fitted :class:`Normalization` (or its dict) applied to every image
        instead of fitting (e.g. the training set's, for validation data).

    Items are dicts of float32 tensors ``(1, P, P)``: ``"x"`` degraded, ``"target"`` clean
    (normalised), ``"mask"`` observed pixels (1 observed, 0 removed; all ones without a
    masking step).
    """

    def __init__(
        self,
        sources: Any,
        patch: int | None = 64,
        patches_per_image: int = 16,
        degradation: Degradation | str | Mapping | None = None,
        seed: int = 0,
        norm_mode: str = "percentile",
        *,
        norm_percentiles: tuple[float, float] = (0.1, 99.9),
        norm_scope: str = "image",
        normalization: Normalization | Mapping | None = None,
    ) -> None:
        self.patch = positive_int(patch, "patch")
        self.patches_per_image = (
            1 if patch is None else positive_int(patches_per_image, "patches_per_image", False)
        )
        self.degradation = parse_degradations(degradation)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self.epoch = 0
        if norm_scope not in NORM_SCOPES:
            raise InputError(f"norm_scope must be one of {NORM_SCOPES}, got {norm_scope!r}")
        self.norm_rule = Normalization.with_percentiles(norm_mode, norm_percentiles)
        self.norm_scope = norm_scope
        if isinstance(normalization, Mapping):
            normalization = Normalization.from_dict(dict(normalization))
        if normalization is not None and not isinstance(normalization, Normalization):
            raise InputError(
                f"normalization must be a Normalization or its dict, got {normalization!r}"
            )

        min_size = self.patch or 2
        self.names: list[str] = []
        raw: list[np.ndarray] = []
        for name, src in _sources(sources):
            if isinstance(src, Path):
                img = read_image_2d(src, min_size=min_size)
            else:
                img = image_from_array(src, name, min_size)
            self.names.append(name)
            raw.append(img)

        if normalization is not None:
            self.norms = [normalization] * len(raw)
            self.norm_scope = "fixed"
        elif norm_scope == "dataset":
            pooled = np.concatenate([r.ravel() for r in raw])
            fitted = self.norm_rule.fit(pooled, what="the training images")
            self.norms = [fitted] * len(raw)
        else:
            self.norms = [
                self.norm_rule.fit(r, what=n) for r, n in zip(raw, self.names, strict=True)
            ]
        self.images = [n.apply(r).astype(np.float32) for r, n in zip(raw, self.norms, strict=True)]

    # -- normalisation for checkpoints
    @property
    def normalization(self) -> Normalization:
        """The fitted normalisation shared by all images (``norm_scope`` ``"dataset"`` or a
        given one), or the unfitted rule (``"image"``: every image gets its own fit)."""
        return self.norms[0] if self.norm_scope != "image" else self.norm_rule

    def norm_to_dict(self) -> dict:
        """``{"scope": ..., "normalization": Normalization.to_dict()}`` for a checkpoint."""
        return {"scope": self.norm_scope, "normalization": self.normalization.to_dict()}

    # -- sampling
    def set_epoch(self, epoch: int) -> None:
        """Select the windows and degradations of ``epoch`` (call at every epoch's start)."""
        self.epoch = int(epoch)

    def _seeds(self, index: int) -> tuple[np.random.Generator, torch.Generator]:
        ss = np.random.SeedSequence([self.seed, self.epoch, index])
        crop_ss, degrade_ss = ss.spawn(2)
        g = torch.Generator()
        g.manual_seed(int(degrade_ss.generate_state(1, np.uint64)[0]) & 0x7FFF_FFFF_FFFF_FFFF)
        return np.random.default_rng(crop_ss), g

    def window(self, index: int) -> tuple[int, int, int, int, int]:
        """``(image, y0, x0, h, w)`` of item ``index`` in the current epoch."""
        index = self._check_index(index)
        k = index // self.patches_per_image
        H, W = self.images[k].shape
        if self.patch is None:
            return k, 0, 0, H, W
        rng, _ = self._seeds(index)
        p = self.patch
        return k, int(rng.integers(0, H - p + 1)), int(rng.integers(0, W - p + 1)), p, p

    def check_batchable(self) -> None:
        """Whole images of different sizes cannot be stacked into a batch."""
        if self.patch is None and len({im.shape for im in self.images}) > 1:
            raise InputError(
                "the images have different sizes and patch=None (whole images): use "
                "batch_size=1, or a patch size"
            )

    def _check_index(self, index: int) -> int:
        n = len(self)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"dataset index must be an integer, got {index!r}")
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        return int(index) % n

    def __len__(self) -> int:
        return len(self.images) * self.patches_per_image

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        k, y0, x0, h, w = self.window(index)
        _, g = self._seeds(self._check_index(index))
        clean = torch.from_numpy(np.ascontiguousarray(self.images[k][y0 : y0 + h, x0 : x0 + w]))
        clean = clean[None, None]
        degraded, mask = self.degradation(clean, g)
        if mask is None:
            mask = torch.ones_like(clean)
        return {"x": degraded[0].float(), "target": clean[0], "mask": mask[0].float()}

    def __repr__(self) -> str:
        return (
            f"PatchDataset({len(self.images)} images, patch={self.patch}, "
            f"patches_per_image={self.patches_per_image}, degradation={self.degradation.spec()!r}, "
            f"seed={self.seed}, norm={self.norm_scope} {self.norm_rule.mode})"
        )
