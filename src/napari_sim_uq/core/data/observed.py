"""Images with missing pixels (the 2D reconstruction tasks): which pixels are observed
(a mask and/or NaN), and a normalisation fitted on the observed pixels only."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_sim_uq.core.errors import InputError

__all__ = ["fit_observed_normalization", "observed_mask", "read_2d_array"]


def observed_mask(
    image: Any, mask: Any = None, what: str = "image"
) -> tuple[np.ndarray, np.ndarray]:
    """``(image float32 (H, W) with 0 at missing pixels, observed bool (H, W))``: checks the
    image (2D, real; NaN marks missing pixels) and the mask (same shape; nonzero / True =
    observed); a clear :class:`InputError` otherwise, or when nothing is observed."""
    from napari_sim_uq.core.data.images2d import image_from_array

    a = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if a.dtype == bool or a.dtype.kind not in "uif":
        raise InputError(f"{what}: unsupported data type {a.dtype} (need real numbers)")
    a = a.astype(np.float32)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    finite = np.isfinite(a)
    img = image_from_array(np.where(finite, a, 0.0), what, min_size=4)
    observed = finite
    if mask is not None:
        m = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask)
        while m.ndim > 2 and m.shape[0] == 1:
            m = m[0]
        if m.shape != img.shape:
            raise InputError(
                f"the mask has shape {tuple(m.shape)} but {what} is {img.shape[0]} x "
                f"{img.shape[1]}; they must match pixel for pixel"
            )
        if m.dtype.kind not in "biuf" or not np.isfinite(m.astype(np.float64)).all():
            raise InputError("the mask must be a finite numeric or boolean array (1 = observed)")
        observed = observed & (m != 0)
    n_obs = int(observed.sum())
    if n_obs == 0:
        raise InputError(
            f"{what}: every pixel is masked (or NaN); nothing is observed, so there is nothing "
            "to reconstruct from (the mask marks observed pixels with 1)"
        )
    return img, observed


def fit_observed_normalization(mode: str, img: np.ndarray, observed: np.ndarray, what: str):
    """The normalisation rule ``mode`` fitted on the observed pixels of ``img`` after a
    Gaussian smoothing of 1 pixel (a normalised convolution that ignores missing pixels), so
    that noise does not widen the percentiles of a model trained on clean images."""
    from scipy import ndimage

    from napari_sim_uq.core.data.normalization import Normalization

    w = observed.astype(np.float64)
    num = ndimage.gaussian_filter(np.where(observed, img, 0.0).astype(np.float64), 1.0)
    den = ndimage.gaussian_filter(w, 1.0)
    smooth = num / np.maximum(den, 1e-12)
    return Normalization(mode).fit(smooth[observed], f"{what} (observed pixels)")


def read_2d_array(path: Any, what: str) -> np.ndarray:
    """A 2D image or mask file as an array in its own dtype (an RGB(A) image: its
    luminance); a clear error for a file that holds no single 2D image."""
    from napari_sim_uq.core.data.images2d import LUMA_WEIGHTS
    from napari_sim_uq.core.io.tiff_io import decode_image

    a = np.asarray(decode_image(path))
    if a.ndim == 3 and a.shape[-1] in (3, 4) and a.shape[0] > 4:
        a = a[..., :3].astype(np.float64) @ np.asarray(LUMA_WEIGHTS)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise InputError(f"{what} '{path}' has shape {a.shape}; a single 2D image is needed")
    return a
