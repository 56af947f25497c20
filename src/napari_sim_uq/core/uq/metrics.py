"""Image-quality, calibration and anomaly-detection metrics.

Pure NumPy/SciPy (MS-SSIM is written in torch so that it can serve as a training loss;
torch is imported only when :func:`ms_ssim` is called). Inputs may be NumPy arrays or
torch tensors; everything except :func:`ms_ssim` and the ``*_batch`` functions converts
them to float64 NumPy arrays and returns Python floats, small dicts or NumPy arrays. The
batched image-quality functions (:func:`mse_batch`, :func:`psnr_batch`,
:func:`ssim_batch`, :func:`ms_ssim_batch`, :func:`image_quality`) work in torch on the
inputs' device and return one value per image; they too import torch only when called.
The definitions are written out in ``docs/metrics.md``.

Calibration metrics take the residual ``r = x - mu`` and the predicted standard deviation
``sigma`` (same shape) and an optional boolean ``mask`` of the same shape that selects the
pixels to evaluate. NaN/inf values and ``sigma <= 0`` are errors only where the mask
selects them. Bad input raises :class:`napari_sim_uq.core.errors.InputError`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.special import ndtri
from scipy.stats import rankdata

from napari_sim_uq.core.errors import InputError

__all__ = [
    "MS_SSIM_WEIGHTS",
    "LEVEL_1SIGMA",
    "LEVEL_2SIGMA",
    "mse",
    "psnr",
    "ssim",
    "ms_ssim",
    "IMAGE_QUALITY_METRICS",
    "MS_SSIM_AUTO_WINDOWS",
    "mse_batch",
    "psnr_batch",
    "ssim_batch",
    "ms_ssim_batch",
    "ms_ssim_plan",
    "image_quality",
    "nrmse",
    "percentile_normalize",
    "zms",
    "calib_ratio",
    "sigma_scale",
    "gaussian_nll",
    "spearman",
    "coverage",
    "calibration_curve",
    "uce",
    "interval_calibration",
    "mace",
    "miscalibration_area",
    "ause",
    "calibration_report",
    "anomaly_scores",
    "roc_curve",
    "roc_auc",
    "eer",
    "f1_at_threshold",
    "anomaly_report",
]

#: Wang, Simoncelli & Bovik (2003) scale weights, finest scale first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: Probability mass of the central +-1 sigma and +-2 sigma Gaussian intervals.
LEVEL_1SIGMA = math.erf(1.0 / math.sqrt(2.0))  # 0.682689...
LEVEL_2SIGMA = math.erf(2.0 / math.sqrt(2.0))  # 0.954500...
#: Spearman's rho is computed on a fixed-seed random subset above this many pixels.
SPEARMAN_MAX_SAMPLES = 2_000_000
_MSSSIM_FLOOR = 1e-8
_BINNINGS = ("equal_count", "equal_width")
_ERRORS = ("mse", "rmse")


# --------------------------------------------------------------------------- input checks


def _is_tensor(a: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(a, torch.Tensor)


def _as_array(a: Any, name: str, fn: str) -> np.ndarray:
    """``a`` (array-like or torch tensor) as a float64 NumPy array."""
    if a is None:
        raise InputError(f"{fn}: {name} is missing (got None)")
    if _is_tensor(a):
        t = a.detach().cpu()
        if t.is_complex():
            raise InputError(f"{fn}: {name} must be real-valued, got a complex tensor")
        a = t.double().numpy() if t.is_floating_point() else t.numpy()
    try:
        arr = np.asarray(a)
        if np.iscomplexobj(arr):
            raise InputError(f"{fn}: {name} must be real-valued, got dtype {arr.dtype}")
        return arr.astype(np.float64, copy=False)
    except (TypeError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{fn}: {name} must be a numeric array ({err})") from None


def _check_finite(a: np.ndarray, name: str, fn: str) -> None:
    n_bad = a.size - int(np.count_nonzero(np.isfinite(a)))
    if n_bad:
        raise InputError(
            f"{fn}: {name} contains {n_bad} NaN or infinite value(s) (of {a.size}); "
            "fix the input or exclude those pixels with a mask"
        )


def _as_mask(mask: Any, shape: tuple[int, ...], fn: str) -> np.ndarray:
    if _is_tensor(mask):
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask)
    if m.shape != shape:
        raise InputError(f"{fn}: mask has shape {m.shape} but the data have shape {shape}")
    if m.dtype != bool:
        if m.dtype.kind not in "biuf" or not np.all((m == 0) | (m == 1)):
            raise InputError(f"{fn}: mask must be boolean (or 0/1), got dtype {m.dtype}")
        m = m.astype(bool)
    if not m.any():
        raise InputError(f"{fn}: mask selects no pixels")
    return m


def _gather(fn: str, mask: Any = None, flatten: bool = True, **arrays: Any) -> list[np.ndarray]:
    """Convert, check shapes/emptiness, apply the mask, check finiteness."""
    conv = {k: _as_array(v, k, fn) for k, v in arrays.items()}
    shapes = {a.shape for a in conv.values()}
    if len(shapes) > 1:
        names = " and ".join(conv)
        got = ", ".join(f"{k} {a.shape}" for k, a in conv.items())
        raise InputError(f"{fn}: {names} must have the same shape, got {got}")
    shape = next(iter(shapes))
    if math.prod(shape) == 0:
        raise InputError(f"{fn}: empty input (shape {shape})")
    m = None if mask is None else _as_mask(mask, shape, fn)
    out = []
    for k, a in conv.items():
        if m is not None:
            a = a[m]
        elif flatten:
            a = a.ravel()
        _check_finite(a, k, fn)
        out.append(a)
    return out


def _check_positive(s: np.ndarray, fn: str, name: str = "sigma") -> None:
    n_bad = int(np.count_nonzero(s <= 0))
    if n_bad:
        raise InputError(
            f"{fn}: {name} must be > 0 everywhere, found {n_bad} value(s) <= 0 "
            f"(min {float(s.min()):.3g}); floor the predicted {name} or mask those pixels"
        )


def _calib(fn: str, r: Any, sigma: Any, mask: Any, r_name: str = "r"):
    rr, ss = _gather(fn, mask, **{r_name: r, "sigma": sigma})
    _check_positive(ss, fn)
    return rr, ss


def _positive_float(v: Any, name: str, fn: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise InputError(f"{fn}: {name} must be a number, got {v!r}") from None
    if not math.isfinite(f) or f <= 0:
        raise InputError(f"{fn}: {name} must be a finite number > 0, got {v!r}")
    return f


def _int_at_least(v: Any, lo: int, name: str, fn: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise InputError(f"{fn}: {name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) * 0.5))


# --------------------------------------------------------------------------- image quality


def mse(x: Any, ref: Any) -> float:
    """Mean squared error ``mean((x - ref)^2)``."""
    a, b = _gather("mse", x=x, ref=ref)
    return float(np.mean((a - b) ** 2))


def psnr(x: Any, ref: Any, data_range: float) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB.

    ``data_range`` (max - min of the intensity scale) is required; ``inf`` if x == ref.
    """
    dr = _positive_float(data_range, "data_range", "psnr")
    a, b = _gather("psnr", x=x, ref=ref)
    m = float(np.mean((a - b) ** 2))
    if m == 0.0:
        return math.inf
    return 10.0 * math.log10(dr * dr / m)


def ssim(x: Any, ref: Any, data_range: float, *, win_size: int = 7) -> float:
    """Mean structural similarity, as ``skimage.metrics.structural_similarity`` defaults.

    Uniform ``win_size`` window along every axis (scipy ``uniform_filter``, reflect
    boundary), sample covariances (``N/(N-1)``), K1 = 0.01, K2 = 0.03, mean of the SSIM
    map after cropping ``(win_size - 1) // 2`` pixels from every border. Computed in
    float64 (scikit-image uses float32 for float32 inputs). N-D inputs use an N-D window.
    """
    fn = "ssim"
    dr = _positive_float(data_range, "data_range", fn)
    a, b = _gather(fn, flatten=False, x=x, ref=ref)
    win = _int_at_least(win_size, 3, "win_size", fn)
    if win % 2 == 0:
        raise InputError(f"{fn}: win_size must be odd, got {win}")
    if a.ndim == 0 or min(a.shape) < win:
        raise InputError(
            f"{fn}: images of shape {a.shape} are smaller than the {win}-pixel window "
            "along some axis; use larger images or a smaller (odd) win_size"
        )

    def filt(z):
        return ndimage.uniform_filter(z, size=win)

    ux, uy = filt(a), filt(b)
    uxx, uyy, uxy = filt(a * a), filt(b * b), filt(a * b)
    n = win**a.ndim
    cov_norm = n / (n - 1.0)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (0.01 * dr) ** 2
    c2 = (0.03 * dr) ** 2
    smap = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return float(smap[(slice(pad, -pad),) * a.ndim].mean())


def ms_ssim(
    x: Any,
    ref: Any,
    data_range: float,
    *,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    win_size: int = 11,
    win_sigma: float = 1.5,
    reduction: str = "mean",
):
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003), differentiable, in torch.

    ``x`` and ``ref``: ``(H, W)`` or ``(B, C, H, W)``, NumPy or torch. At each of the
    ``len(weights)`` scales the Gaussian-window (``win_size``, ``win_sigma``, 'valid'
    region, no padding) contrast-structure term ``cs = mean((2 cov + C2)/(vx + vy + C2))``
    is computed, and at the coarsest scale the mean SSIM ``mean(l * cs)``; between scales
    the images are 2x2 average-pooled (an odd last row/column is dropped). Result:
    ``prod_j v_j ** w_j`` per image and channel, each ``v_j`` floored at 1e-8 so that the
    fractional powers stay defined. ``weights=[1.0]`` gives single-scale Gaussian SSIM.

    Returns a torch tensor if either input is a tensor (scalar for ``reduction="mean"``,
    ``(B, C)`` for ``"none"``), else a float (``"mean"``) or a NumPy array. Tensors are not
    scanned for NaN (that would force a device sync in training loops).
    """
    import torch
    import torch.nn.functional as F

    fn = "ms_ssim"
    dr = _positive_float(data_range, "data_range", fn)
    if reduction not in ("mean", "none"):
        raise InputError(f"{fn}: reduction must be 'mean' or 'none', got {reduction!r}")
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)):
        raise InputError(f"{fn}: weights must be a non-empty 1D sequence of finite numbers")
    win = _int_at_least(win_size, 1, "win_size", fn)
    if win % 2 == 0:
        raise InputError(f"{fn}: win_size must be odd, got {win}")
    sig = _positive_float(win_sigma, "win_sigma", fn)

    as_tensor = _is_tensor(x) or _is_tensor(ref)
    if as_tensor:
        like = x if _is_tensor(x) else ref
        X = x if _is_tensor(x) else torch.as_tensor(np.asarray(x), device=like.device)
        Y = ref if _is_tensor(ref) else torch.as_tensor(np.asarray(ref), device=like.device)
        if X.shape != Y.shape:
            raise InputError(
                f"{fn}: x and ref must have the same shape, got {tuple(X.shape)} "
                f"and {tuple(Y.shape)}"
            )
        dtype = torch.promote_types(X.dtype, Y.dtype)
        if not dtype.is_floating_point:
            dtype = torch.float32
        X, Y = X.to(dtype), Y.to(dtype)
    else:
        a, b = _gather(fn, flatten=False, x=x, ref=ref)
        X, Y = torch.from_numpy(a), torch.from_numpy(b)
    if X.ndim == 2:
        X, Y = X[None, None], Y[None, None]
    elif X.ndim != 4:
        raise InputError(
            f"{fn}: expected images of shape (H, W) or (B, C, H, W), got {tuple(X.shape)}"
        )
    n_scales = w.size
    h, wd = X.shape[-2:]
    for _ in range(n_scales - 1):
        h, wd = h // 2, wd // 2
    if X.shape[0] * X.shape[1] == 0:
        raise InputError(f"{fn}: empty input (shape {tuple(X.shape)})")
    if min(h, wd) < win:
        need = win * 2 ** (n_scales - 1)
        raise InputError(
            f"{fn}: images of size {X.shape[-2]}x{X.shape[-1]} are too small for "
            f"{n_scales} scales with a {win}-pixel window: need at least {need} pixels "
            "per side (or pass fewer weights)"
        )

    coords = torch.arange(win, dtype=X.dtype, device=X.device) - (win - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sig * sig))
    g = g / g.sum()
    c1 = (0.01 * dr) ** 2
    c2 = (0.03 * dr) ** 2
    nc = X.shape[1]

    def terms(a, b):
        z = torch.cat([a, b, a * a, b * b, a * b], dim=1)
        nb, k, h, w = z.shape
        # separable Gaussian, 'valid'; every channel as a batch item of one channel
        z = F.conv2d(z.reshape(nb * k, 1, h, w), g.view(1, 1, 1, -1))
        z = F.conv2d(z, g.view(1, 1, -1, 1))
        z = z.reshape(nb, k, z.shape[-2], z.shape[-1])
        mx, my, exx, eyy, exy = z.split(nc, dim=1)
        vx = exx - mx * mx
        vy = eyy - my * my
        cxy = exy - mx * my
        cs_map = (2 * cxy + c2) / (vx + vy + c2)
        l_map = (2 * mx * my + c1) / (mx * mx + my * my + c1)
        return (l_map * cs_map).mean(dim=(-2, -1)), cs_map.mean(dim=(-2, -1))

    vals = []
    for j in range(n_scales):
        s_j, cs_j = terms(X, Y)
        if j < n_scales - 1:
            vals.append(cs_j)
            X, Y = F.avg_pool2d(X, 2), F.avg_pool2d(Y, 2)
        else:
            vals.append(s_j)
    stack = torch.stack(vals, dim=0).clamp_min(_MSSSIM_FLOOR)  # (scales, B, C)
    wt = torch.as_tensor(w, dtype=stack.dtype, device=stack.device).view(-1, 1, 1)
    out = torch.prod(stack**wt, dim=0)  # (B, C)
    if reduction == "mean":
        out = out.mean()
    if as_tensor:
        return out
    return float(out) if reduction == "mean" else out.numpy()


def _pnorm(arr: np.ndarray, low: float, high: float, name: str, fn: str) -> np.ndarray:
    if not (0.0 <= low < high <= 100.0):
        raise InputError(f"{fn}: need 0 <= low < high <= 100, got low={low}, high={high}")
    lo, hi = np.percentile(arr, [low, high])
    if not hi > lo:
        raise InputError(
            f"{fn}: {name} is constant between its {low} and {high} percentiles "
            f"(both {lo:.6g}), so it cannot be percentile-normalised"
        )
    return (arr - lo) / (hi - lo)


def percentile_normalize(a: Any, low: float = 0.1, high: float = 99.9) -> np.ndarray:
    """``(a - p_low) / (p_high - p_low)`` with ``np.percentile`` (linear), no clipping."""
    (arr,) = _gather("percentile_normalize", flatten=False, image=a)
    return _pnorm(arr, low, high, "image", "percentile_normalize")


def nrmse(x: Any, ref: Any, low: float = 0.1, high: float = 99.9) -> float:
    """RMSE after normalising ``x`` and ``ref`` each by its own 0.1/99.9 percentiles."""
    a, b = _gather("nrmse", flatten=False, x=x, ref=ref)
    na = _pnorm(a, low, high, "x", "nrmse")
    nb = _pnorm(b, low, high, "ref", "nrmse")
    return float(np.sqrt(np.mean((na - nb) ** 2)))


# --------------------------------------------------------------------------- batched (torch)

#: Metric names accepted by :func:`image_quality` (and its default ``metrics``).
IMAGE_QUALITY_METRICS = ("mse", "psnr", "ssim", "ms_ssim")
#: MS-SSIM windows tried by the automatic rule of :func:`ms_ssim_plan`, largest first.
MS_SSIM_AUTO_WINDOWS = (11, 7)


def _to_tensor(a: Any, name: str, fn: str, device: Any):
    """``a`` as a real torch tensor; NumPy input goes to ``device`` (integers as float64)."""
    import torch

    if a is None:
        raise InputError(f"{fn}: {name} is missing (got None)")
    if _is_tensor(a):
        t = a
    else:
        try:
            arr = np.asarray(a)
        except (TypeError, ValueError) as err:
            raise InputError(f"{fn}: {name} must be a numeric array ({err})") from None
        if arr.dtype.kind not in "biufc":
            raise InputError(f"{fn}: {name} must be a numeric array, got dtype {arr.dtype}")
        if arr.dtype.kind == "c":
            raise InputError(f"{fn}: {name} must be real-valued, got dtype {arr.dtype}")
        if arr.dtype.kind in "biu":
            arr = arr.astype(np.float64)
        elif not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        t = torch.from_numpy(np.ascontiguousarray(arr)).to(device)
    if t.is_complex():
        raise InputError(f"{fn}: {name} must be real-valued, got a complex tensor")
    return t


def _as_bhw(t: Any, shape: tuple[int, ...], fn: str):
    """``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)`` as ``(B, H, W)``."""
    if t.ndim == 2:
        t = t[None]
    elif t.ndim == 4 and t.shape[1] == 1:
        t = t[:, 0]
    elif t.ndim == 4:
        raise InputError(
            f"{fn}: expected images of shape (H, W), (B, H, W) or (B, 1, H, W), got {shape} "
            f"with {shape[1]} channels; pass the channels as separate images, e.g. "
            "x.reshape(-1, H, W)"
        )
    elif t.ndim != 3:
        raise InputError(
            f"{fn}: expected images of shape (H, W), (B, H, W) or (B, 1, H, W), got {shape}"
        )
    if t.shape[0] == 0:
        raise InputError(f"{fn}: empty batch (shape {shape})")
    if t.shape[1] * t.shape[2] == 0:
        raise InputError(f"{fn}: empty images (shape {shape})")
    return t


def _batch_inputs(fn: str, x: Any, ref: Any, mask: Any = None):
    """Tensors ``(B, H, W)`` on one device in one float dtype, and the mask (or None)."""
    import torch

    devices = {a.device for a in (x, ref) if _is_tensor(a)}
    if len(devices) > 1:
        raise InputError(
            f"{fn}: x and ref are on different devices ({x.device} and {ref.device}); "
            "move them to one device"
        )
    device = devices.pop() if devices else torch.device("cpu")
    X = _to_tensor(x, "x", fn, device)
    Y = _to_tensor(ref, "ref", fn, device)
    if X.shape != Y.shape:
        raise InputError(
            f"{fn}: x and ref must have the same shape, got x {tuple(X.shape)}, "
            f"ref {tuple(Y.shape)}"
        )
    shape = tuple(X.shape)
    X, Y = _as_bhw(X, shape, fn), _as_bhw(Y, shape, fn)
    dtype = torch.promote_types(X.dtype, Y.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float64
    elif dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    X, Y = X.to(dtype), Y.to(dtype)
    if mask is None:
        return X, Y, None
    if _is_tensor(mask):
        m = mask.to(device)
    else:
        m = torch.from_numpy(np.ascontiguousarray(np.asarray(mask))).to(device)
    if tuple(m.shape) != shape:
        raise InputError(f"{fn}: mask has shape {tuple(m.shape)} but the data have shape {shape}")
    if m.dtype != torch.bool:
        if m.is_complex() or not bool(((m == 0) | (m == 1)).all()):
            raise InputError(f"{fn}: mask must be boolean (or 0/1), got dtype {m.dtype}")
        m = m != 0
    return X, Y, m.reshape(X.shape)


def _check_finite_t(fn: str, t: Any, name: str, mask: Any = None, hint: str = "") -> None:
    import torch

    bad = ~torch.isfinite(t)
    if mask is not None:
        bad = bad & mask
    n_bad = int(bad.sum())
    if n_bad:
        raise InputError(
            f"{fn}: {name} contains {n_bad} NaN or infinite value(s) (of {t.numel()}); "
            + (hint or "fix the input")
        )


def _batch_range(fn: str, data_range: Any, X: Any):
    """``(float or None, tensor (B,))``: one data range for all images, or one per image."""
    import torch

    n = X.shape[0]
    try:
        if _is_tensor(data_range):
            v = data_range.detach().cpu().double().numpy()
        else:
            v = np.asarray(data_range, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(
            f"{fn}: data_range must be a number or one number per image, got {data_range!r}"
        ) from None
    if v.ndim == 0:
        scalar: float | None = float(v)
        vals = np.full(n, scalar)
    elif v.shape == (n,):
        scalar, vals = None, v
    else:
        raise InputError(
            f"{fn}: data_range must be a number or hold one value per image (shape ({n},)), "
            f"got shape {v.shape}"
        )
    if not np.all(np.isfinite(vals) & (vals > 0)):
        raise InputError(f"{fn}: data_range must be finite and > 0, got {data_range!r}")
    return scalar, torch.as_tensor(vals, dtype=X.dtype, device=X.device)


def _mse_t(X: Any, Y: Any, M: Any):
    import torch

    d2 = (X - Y).square()
    if M is None:
        return d2.mean(dim=(-2, -1))
    d2 = torch.where(M, d2, torch.zeros((), dtype=d2.dtype, device=d2.device))
    return d2.sum(dim=(-2, -1)) / M.sum(dim=(-2, -1)).to(d2.dtype)  # 0/0 = NaN


def _psnr_from_mse(m: Any, L: Any):
    import torch

    return 20.0 * torch.log10(L) - 10.0 * torch.log10(m)  # log10(0) = -inf -> +inf


def _ssim_t(fn: str, X: Any, Y: Any, L: Any, win_size: Any):
    import torch
    import torch.nn.functional as F

    win = _int_at_least(win_size, 3, "win_size", fn)
    if win % 2 == 0:
        raise InputError(f"{fn}: win_size must be odd, got {win}")
    h, w = X.shape[-2:]
    if min(h, w) < win:
        raise InputError(
            f"{fn}: images of size {h}x{w} are smaller than the {win}-pixel window; "
            "use larger images or a smaller (odd) win_size"
        )
    # uniform window, 'valid' region only: exactly the reflect-filtered map after the
    # (win - 1) // 2 border crop of ssim(), since the crop removes every padded window
    z = torch.stack([X, Y, X * X, Y * Y, X * Y], dim=1)
    ux, uy, uxx, uyy, uxy = F.avg_pool2d(z, win, stride=1).unbind(1)
    n = win * win
    cov_norm = n / (n - 1.0)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (0.01 * L).square().view(-1, 1, 1)
    c2 = (0.03 * L).square().view(-1, 1, 1)
    smap = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return smap.mean(dim=(-2, -1))


def _ms_plan(fn: str, height: Any, width: Any, win_size: Any, weights: Any) -> dict:
    h = _int_at_least(height, 1, "height", fn)
    w = _int_at_least(width, 1, "width", fn)
    side = min(h, w)
    if win_size is None:
        wins = MS_SSIM_AUTO_WINDOWS
    else:
        win = _int_at_least(win_size, 1, "win_size", fn)
        if win % 2 == 0:
            raise InputError(f"{fn}: win_size must be odd, got {win}")
        wins = (win,)

    def fits(win: int, n: int) -> bool:  # floor halving, as 2x2 average pooling
        return (side >> (n - 1)) >= win

    if weights is not None:
        wt = np.asarray(weights, dtype=np.float64)
        if wt.ndim != 1 or wt.size == 0 or not np.all(np.isfinite(wt)):
            raise InputError(f"{fn}: weights must be a non-empty 1D sequence of finite numbers")
        n = int(wt.size)
        for win in wins:
            if fits(win, n):
                return {"win_size": win, "n_scales": n, "weights": tuple(float(v) for v in wt)}
        win = wins[-1]
        raise InputError(
            f"{fn}: images of size {h}x{w} are too small for {n} scales with a {win}-pixel "
            f"window: need at least {win * 2 ** (n - 1)} pixels per side (or pass fewer "
            "weights, or weights=None for the automatic rule)"
        )
    for win in wins:
        n = max((k for k in range(1, len(MS_SSIM_WEIGHTS) + 1) if fits(win, k)), default=0)
        if n:
            wt = np.asarray(MS_SSIM_WEIGHTS[:n], dtype=np.float64)
            if n < len(MS_SSIM_WEIGHTS):  # all 5: the published weights as they are
                wt = wt / wt.sum()
            return {"win_size": win, "n_scales": n, "weights": tuple(float(v) for v in wt)}
    raise InputError(
        f"{fn}: images of size {h}x{w} are smaller than the {wins[-1]}-pixel MS-SSIM window; "
        f"need at least {wins[-1]} pixels per side"
    )


def ms_ssim_plan(
    height: int,
    width: int,
    *,
    win_size: int | None = None,
    weights: Sequence[float] | None = None,
) -> dict:
    """Scales and window that :func:`ms_ssim_batch` uses for ``height x width`` images.

    Returns ``{"win_size", "n_scales", "weights"}``. Automatic rule (``weights=None``):
    the window is 11 if the smaller image side is at least 11, else 7 (``win_size``
    overrides it); the number of scales ``n`` is the largest ``n <= 5`` for which the
    coarsest scale, ``min(H, W) // 2**(n - 1)``, still holds the window; for ``n < 5`` the
    weights are the first ``n`` Wang weights (:data:`MS_SSIM_WEIGHTS`, finest first)
    divided by their sum, for ``n = 5`` the published weights unchanged (they sum to
    0.9999). So 176 px and more get the standard 5 scales, 32x32 gets 2 scales with the
    11-px window, 8x8 one scale with the 7-px window. With ``weights`` given, ``n = len(weights)``,
    the weights are used as given, and the window is the largest of 11 and 7 (or
    ``win_size``) that fits at that many scales. Too small images raise ``InputError``.
    """
    return _ms_plan("ms_ssim_plan", height, width, win_size, weights)


def _ms_ssim_t(X: Any, Y: Any, scalar: float | None, L: Any, plan: dict, win_sigma: float):
    if scalar is None:
        # one data range per image: SSIM terms are invariant under (x, ref, L) -> (x, ref, L)/L
        X = X / L.view(-1, 1, 1)
        Y = Y / L.view(-1, 1, 1)
        scalar = 1.0
    vals = ms_ssim(
        X[:, None],
        Y[:, None],
        scalar,
        weights=plan["weights"],
        win_size=plan["win_size"],
        win_sigma=win_sigma,
        reduction="none",
    )
    return vals[:, 0]


_FULL_IMAGE_HINT = "SSIM and MS-SSIM use every pixel, so the images must be finite everywhere"
_MASK_HINT = "fix the input or exclude those pixels with a mask"


def mse_batch(x: Any, ref: Any, *, mask: Any = None):
    """Per-image mean squared error, in torch on the inputs' device.

    ``x`` and ``ref``: ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)`` torch tensors or NumPy
    arrays (NumPy goes to the device of the other input if that is a tensor, else the CPU);
    ``(B, C, H, W)`` with ``C > 1`` is rejected. Returns a tensor of shape ``(B,)`` in the
    computation dtype: float32 for float32 (and float16/bfloat16) input, float64 for
    float64 or integer input. ``mask`` (boolean or 0/1, same shape) selects the pixels of
    each image; an image whose mask selects nothing gives NaN. Selected pixels must be
    finite.
    """
    fn = "mse_batch"
    X, Y, M = _batch_inputs(fn, x, ref, mask)
    _check_finite_t(fn, X, "x", M, _MASK_HINT)
    _check_finite_t(fn, Y, "ref", M, _MASK_HINT)
    return _mse_t(X, Y, M)


def psnr_batch(x: Any, ref: Any, data_range: Any, *, mask: Any = None):
    """Per-image PSNR ``10 log10(data_range^2 / MSE)`` in dB, shape ``(B,)``.

    Inputs, dtype and ``mask`` as :func:`mse_batch`. ``data_range`` is a number > 0 or one
    per image (shape ``(B,)``). Identical images give ``inf``; an image whose mask selects
    nothing gives NaN. Equals :func:`psnr` (and scikit-image's
    ``peak_signal_noise_ratio``) per image.
    """
    fn = "psnr_batch"
    X, Y, M = _batch_inputs(fn, x, ref, mask)
    _check_finite_t(fn, X, "x", M, _MASK_HINT)
    _check_finite_t(fn, Y, "ref", M, _MASK_HINT)
    _, L = _batch_range(fn, data_range, X)
    return _psnr_from_mse(_mse_t(X, Y, M), L)


def ssim_batch(x: Any, ref: Any, data_range: Any, *, win_size: int = 7):
    """Per-image SSIM, the same maths as :func:`ssim` (scikit-image's defaults), shape ``(B,)``.

    Uniform ``win_size`` window, sample covariances, K1 = 0.01, K2 = 0.03; the mean over
    the 'valid' window positions, which is exactly the reflect-filtered SSIM map after
    :func:`ssim`'s ``(win_size - 1) // 2`` border crop. Inputs and dtype as
    :func:`mse_batch` (all pixels must be finite); ``data_range`` a number > 0 or one per
    image. Float32 input is computed in float32 (as scikit-image does).
    """
    fn = "ssim_batch"
    X, Y, _ = _batch_inputs(fn, x, ref)
    _check_finite_t(fn, X, "x", hint=_FULL_IMAGE_HINT)
    _check_finite_t(fn, Y, "ref", hint=_FULL_IMAGE_HINT)
    _, L = _batch_range(fn, data_range, X)
    return _ssim_t(fn, X, Y, L, win_size)


def ms_ssim_batch(
    x: Any,
    ref: Any,
    data_range: Any,
    *,
    weights: Sequence[float] | None = None,
    win_size: int | None = None,
    win_sigma: float = 1.5,
    return_plan: bool = False,
):
    """Per-image MS-SSIM (:func:`ms_ssim`) with scales chosen for the image size, ``(B,)``.

    The number of scales, the weights and the window follow :func:`ms_ssim_plan` (by
    default as many of the 5 standard scales as fit, Wang weights renormalised to sum 1, an
    11-px Gaussian window, or 7 px for images under 11 px), so small images such as 32x32
    work; images of 176 px and more get exactly :func:`ms_ssim` with its defaults. Inputs
    and dtype as :func:`mse_batch` (all pixels must be finite); ``data_range`` a number > 0
    or one per image. With ``return_plan=True`` returns ``(values, plan)``.
    """
    fn = "ms_ssim_batch"
    X, Y, _ = _batch_inputs(fn, x, ref)
    sig = _positive_float(win_sigma, "win_sigma", fn)
    _check_finite_t(fn, X, "x", hint=_FULL_IMAGE_HINT)
    _check_finite_t(fn, Y, "ref", hint=_FULL_IMAGE_HINT)
    scalar, L = _batch_range(fn, data_range, X)
    plan = _ms_plan(fn, X.shape[-2], X.shape[-1], win_size, weights)
    out = _ms_ssim_t(X, Y, scalar, L, plan, sig)
    return (out, plan) if return_plan else out


def image_quality(
    x: Any,
    ref: Any,
    data_range: Any,
    *,
    mask: Any = None,
    metrics: str | Sequence[str] = IMAGE_QUALITY_METRICS,
    win_size: int = 7,
) -> dict:
    """Several per-image quality metrics at once: ``{name: tensor (B,)}``.

    ``metrics`` is a subset of :data:`IMAGE_QUALITY_METRICS` (``"mse"``, ``"psnr"``,
    ``"ssim"``, ``"ms_ssim"``), in the order wanted. The inputs are converted and checked
    once. ``mask`` applies to MSE and PSNR only; SSIM (``win_size``, as
    :func:`ssim_batch`) and MS-SSIM (automatic scales, as :func:`ms_ssim_batch`) are
    window statistics of the full images, so with either of them every pixel must be
    finite. Inputs, dtype and ``data_range`` as in the single-metric functions.
    """
    fn = "image_quality"
    names = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    unknown = [m for m in names if m not in IMAGE_QUALITY_METRICS]
    if unknown or not names:
        raise InputError(
            f"{fn}: metrics must be a non-empty selection of {IMAGE_QUALITY_METRICS}, "
            f"got {metrics!r}"
        )
    X, Y, M = _batch_inputs(fn, x, ref, mask)
    full = any(m in ("ssim", "ms_ssim") for m in names)
    hint = _FULL_IMAGE_HINT if full else _MASK_HINT
    _check_finite_t(fn, X, "x", None if full else M, hint)
    _check_finite_t(fn, Y, "ref", None if full else M, hint)
    scalar, L = _batch_range(fn, data_range, X)
    out: dict = {}
    if "mse" in names or "psnr" in names:
        out["mse"] = _mse_t(X, Y, M)
    if "psnr" in names:
        out["psnr"] = _psnr_from_mse(out["mse"], L)
    if "ssim" in names:
        out["ssim"] = _ssim_t(fn, X, Y, L, win_size)
    if "ms_ssim" in names:
        plan = _ms_plan(fn, X.shape[-2], X.shape[-1], None, None)
        out["ms_ssim"] = _ms_ssim_t(X, Y, scalar, L, plan, 1.5)
    return {m: out[m] for m in dict.fromkeys(names)}


# --------------------------------------------------------------------------- calibration


def _zms(r: np.ndarray, s: np.ndarray) -> float:
    return float(np.mean((r / s) ** 2))


def zms(r: Any, sigma: Any, *, mask: Any = None) -> float:
    """Z mean square ``mean(r^2 / sigma^2)`` (ideal 1; > 1: sigma too small)."""
    return _zms(*_calib("zms", r, sigma, mask))


def calib_ratio(r: Any, sigma: Any, *, mask: Any = None) -> float:
    """``mean(r^2) / mean(sigma^2)`` (ideal 1)."""
    rr, ss = _calib("calib_ratio", r, sigma, mask)
    return float(np.mean(rr * rr) / np.mean(ss * ss))


def sigma_scale(r: Any, sigma: Any, *, mask: Any = None) -> float:
    """NLL-optimal scale ``s = sqrt(mean(r^2 / sigma^2))``; recalibrate with ``s * sigma``."""
    return math.sqrt(_zms(*_calib("sigma_scale", r, sigma, mask)))


def _nll(r: np.ndarray, s: np.ndarray) -> float:
    return float(np.mean(0.5 * math.log(2 * math.pi) + np.log(s) + 0.5 * (r / s) ** 2))


def gaussian_nll(r: Any, sigma: Any, *, mask: Any = None) -> float:
    """Mean Gaussian negative log-likelihood ``0.5 log(2 pi) + log sigma + r^2 / (2 sigma^2)``."""
    return _nll(*_calib("gaussian_nll", r, sigma, mask))


def _spearman(s: np.ndarray, a: np.ndarray, max_samples: int, seed: int) -> float:
    n = a.size
    if n > max_samples:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))
        a, s = a[idx], s[idx]
    if a.size < 2:
        return math.nan
    ra = rankdata(a)
    rs = rankdata(s)
    ra -= ra.mean()
    rs -= rs.mean()
    den = math.sqrt(float(np.dot(ra, ra)) * float(np.dot(rs, rs)))
    if den == 0.0:
        return math.nan
    return float(np.dot(ra, rs) / den)


def spearman(
    sigma: Any,
    abs_r: Any,
    *,
    mask: Any = None,
    max_samples: int = SPEARMAN_MAX_SAMPLES,
    seed: int = 0,
) -> float:
    """Spearman's rho between ``sigma`` and ``|r|`` (absolute value taken here).

    Same as ``scipy.stats.spearmanr`` (average ranks for ties). Above ``max_samples``
    pixels it is computed on a uniform random subset of ``max_samples`` pixels drawn
    without replacement with ``numpy.random.default_rng(seed)`` (reproducible). NaN if
    either input is constant.
    """
    fn = "spearman"
    ms = _int_at_least(max_samples, 2, "max_samples", fn)
    a, s = _calib(fn, abs_r, sigma, mask, r_name="abs_r")
    return _spearman(s, np.abs(a), ms, seed)


def _level(level: Any, fn: str) -> float:
    try:
        lv = float(level)
    except (TypeError, ValueError):
        raise InputError(f"{fn}: level must be a number in (0, 1), got {level!r}") from None
    if not 0.0 < lv < 1.0:
        raise InputError(f"{fn}: level must be in (0, 1) (e.g. 0.95), got {level!r}")
    return lv


def coverage(r: Any, sigma: Any, level: float, *, mask: Any = None) -> float:
    """Fraction of pixels with ``|r| <= z sigma``, ``z = Phi^-1(0.5 + level / 2)``."""
    lv = _level(level, "coverage")
    rr, ss = _calib("coverage", r, sigma, mask)
    z = float(ndtri(0.5 + lv / 2.0))
    return float(np.mean(np.abs(rr) <= z * ss))


def _binning(v: np.ndarray, n_bins: int, binning: str, fn: str):
    """Bin index per element and bin edges for the predicted variances ``v``."""
    n = v.size
    if binning == "equal_count":
        if n < n_bins:
            raise InputError(
                f"{fn}: equal-count binning needs at least n_bins={n_bins} pixels, got {n}"
            )
        order = np.argsort(v, kind="stable")
        idx = np.empty(n, dtype=np.intp)
        idx[order] = (np.arange(n, dtype=np.int64) * n_bins) // n
        starts = -((-np.arange(n_bins, dtype=np.int64) * n) // n_bins)  # ceil(m n / M)
        vs = v[order]
        edges = np.append(vs[starts], vs[-1])
    elif binning == "equal_width":
        lo, hi = float(v.min()), float(v.max())
        edges = np.linspace(lo, hi, n_bins + 1)
        if hi > lo:
            idx = np.floor((v - lo) / (hi - lo) * n_bins).astype(np.intp)
            np.clip(idx, 0, n_bins - 1, out=idx)
        else:
            idx = np.zeros(n, dtype=np.intp)
    else:
        raise InputError(f"{fn}: binning must be one of {_BINNINGS}, got {binning!r}")
    return idx, edges


def _curve(r: np.ndarray, s: np.ndarray, n_bins: int, binning: str, fn: str) -> dict:
    n_bins = _int_at_least(n_bins, 1, "n_bins", fn)
    v = s * s
    idx, edges = _binning(v, n_bins, binning, fn)
    count = np.bincount(idx, minlength=n_bins)
    sv = np.bincount(idx, weights=v, minlength=n_bins)
    se = np.bincount(idx, weights=r * r, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mv = np.where(count > 0, sv / np.maximum(count, 1), np.nan)
        me = np.where(count > 0, se / np.maximum(count, 1), np.nan)
    return {
        "mean_variance": mv,
        "mse": me,
        "count": count,
        "bin_edges": edges,
        "binning": binning,
    }


def calibration_curve(
    r: Any, sigma: Any, n_bins: int = 20, binning: str = "equal_count", *, mask: Any = None
) -> dict:
    """Per bin of predicted variance: mean predicted variance vs empirical MSE (ideal y = x).

    Returns ``{"mean_variance", "mse", "count", "bin_edges", "binning"}`` (arrays of length
    ``n_bins``; ``bin_edges`` has ``n_bins + 1``). Empty bins (equal-width only) hold NaN.
    """
    rr, ss = _calib("calibration_curve", r, sigma, mask)
    return _curve(rr, ss, n_bins, binning, "calibration_curve")


def _uce(curve: dict) -> float:
    c = curve["count"]
    ok = c > 0
    diff = np.abs(curve["mse"][ok] - curve["mean_variance"][ok])
    return float(np.sum(c[ok] * diff) / np.sum(c))


def uce(
    r: Any, sigma: Any, n_bins: int = 20, binning: str = "equal_count", *, mask: Any = None
) -> float:
    """Uncertainty calibration error ``sum_m |B_m|/N |MSE(B_m) - MV(B_m)|`` (variance units)."""
    rr, ss = _calib("uce", r, sigma, mask)
    return _uce(_curve(rr, ss, n_bins, binning, "uce"))


def _abs_area(x: np.ndarray, d: np.ndarray) -> float:
    """Exact integral of ``|d|`` for ``d`` piecewise linear on the grid ``x``."""
    d0, d1 = d[:-1], d[1:]
    h = np.diff(x)
    a0, a1 = np.abs(d0), np.abs(d1)
    cross = d0 * d1 < 0
    with np.errstate(invalid="ignore", divide="ignore"):
        seg = np.where(cross, (d0 * d0 + d1 * d1) / (2.0 * (a0 + a1)), 0.5 * (a0 + a1))
    return float(np.sum(h * seg))


def _interval(r: np.ndarray, s: np.ndarray, n_levels: int, fn: str) -> dict:
    n_levels = _int_at_least(n_levels, 2, "n_levels", fn)
    levels = np.linspace(0.01, 0.99, n_levels)
    z = np.sort(np.abs(r / s))
    bounds = ndtri(0.5 + levels / 2.0)
    observed = np.searchsorted(z, bounds, side="right") / z.size
    diff = observed - levels
    return {
        "expected": levels,
        "observed": observed,
        "mace": float(np.mean(np.abs(diff))),
        "miscalibration_area": _abs_area(levels, diff),
    }


def interval_calibration(r: Any, sigma: Any, n_levels: int = 100, *, mask: Any = None) -> dict:
    """Expected vs observed proportions in central Gaussian intervals (uncertainty-toolbox).

    Levels ``p = linspace(0.01, 0.99, n_levels)``; observed = fraction with
    ``|r / sigma| <= Phi^-1(0.5 + p / 2)``. Returns ``{"expected", "observed", "mace",
    "miscalibration_area"}``: MACE = mean |observed - expected|; area = integral of
    |observed - expected| over p for the piecewise-linear curve (exact at sign changes).
    """
    rr, ss = _calib("interval_calibration", r, sigma, mask)
    return _interval(rr, ss, n_levels, "interval_calibration")


def mace(r: Any, sigma: Any, n_levels: int = 100, *, mask: Any = None) -> float:
    """Mean absolute calibration error (interval mode); see :func:`interval_calibration`."""
    rr, ss = _calib("mace", r, sigma, mask)
    return _interval(rr, ss, n_levels, "mace")["mace"]


def miscalibration_area(r: Any, sigma: Any, n_levels: int = 100, *, mask: Any = None) -> float:
    """Miscalibration area (interval mode); see :func:`interval_calibration`."""
    rr, ss = _calib("miscalibration_area", r, sigma, mask)
    return _interval(rr, ss, n_levels, "miscalibration_area")["miscalibration_area"]


def _sparsification(
    r: np.ndarray, s: np.ndarray, n_steps: int, error: str, normalize: bool, fn: str
) -> dict:
    n_steps = _int_at_least(n_steps, 2, "n_steps", fn)
    if error not in _ERRORS:
        raise InputError(f"{fn}: error must be one of {_ERRORS}, got {error!r}")
    e2 = r * r
    n = e2.size
    fractions = np.arange(n_steps, dtype=np.float64) / n_steps
    n_keep = n - np.floor(fractions * n).astype(np.int64)  # >= 1

    def curve(key):
        # ascending stable sort: removing the largest keys keeps the first n_keep
        cs = np.cumsum(e2[np.argsort(key, kind="stable")])
        return cs[n_keep - 1] / n_keep

    by_sigma = curve(s)
    oracle = curve(np.abs(r))
    if error == "rmse":
        by_sigma, oracle = np.sqrt(by_sigma), np.sqrt(oracle)
    if normalize and by_sigma[0] > 0:
        full = by_sigma[0]
        by_sigma, oracle = by_sigma / full, oracle / full
    return {
        "ause": _trapezoid(by_sigma - oracle, fractions),
        "fractions": fractions,
        "curve": by_sigma,
        "oracle": oracle,
        "error": error,
        "normalized": bool(normalize),
    }


def ause(
    r: Any,
    sigma: Any,
    n_steps: int = 100,
    *,
    error: str = "rmse",
    normalize: bool = True,
    mask: Any = None,
) -> dict:
    """Area under the sparsification error (sigma ranking vs oracle |r| ranking).

    For fractions ``f = k / n_steps`` (k = 0 .. n_steps-1) the ``floor(f N)`` pixels with
    the largest sigma (ties: later index first) are removed and ``error`` ("rmse" or
    "mse") of the rest is computed; the oracle removes the largest ``|r|``. With
    ``normalize`` both curves are divided by the full-image error (curves start at 1, AUSE
    is unit-free). AUSE = trapezoid integral of ``curve - oracle`` over f (>= 0, 0 ideal).
    Returns ``{"ause", "fractions", "curve", "oracle", "error", "normalized"}``.
    """
    rr, ss = _calib("ause", r, sigma, mask)
    return _sparsification(rr, ss, n_steps, error, normalize, "ause")


def calibration_report(
    x: Any,
    mu: Any,
    sigma: Any,
    mask: Any = None,
    *,
    n_bins: int = 20,
    binning: str = "equal_count",
    n_levels: int = 100,
    n_steps: int = 100,
) -> dict:
    """All scalar calibration metrics of ``sigma`` for the residual ``x - mu``.

    Keys: ``n`` (pixels used), ``mse``, ``zms``, ``calib_ratio``, ``sigma_scale``, ``nll``,
    ``spearman``, ``cov68`` (fraction within +-1 sigma, ideal 0.6827), ``cov95`` (within
    +-2 sigma, ideal 0.9545), ``uce``, ``mace``, ``miscalibration_area``, ``ause``
    (normalised RMSE sparsification). All plain Python numbers.
    """
    fn = "calibration_report"
    xx, mm, ss = _gather(fn, mask, x=x, mu=mu, sigma=sigma)
    _check_positive(ss, fn)
    r = xx - mm
    zm = _zms(r, ss)
    absr = np.abs(r)
    inter = _interval(r, ss, n_levels, fn)
    return {
        "n": int(r.size),
        "mse": float(np.mean(r * r)),
        "zms": zm,
        "calib_ratio": float(np.mean(r * r) / np.mean(ss * ss)),
        "sigma_scale": math.sqrt(zm),
        "nll": _nll(r, ss),
        "spearman": _spearman(ss, absr, SPEARMAN_MAX_SAMPLES, 0),
        "cov68": float(np.mean(absr <= ss)),
        "cov95": float(np.mean(absr <= 2.0 * ss)),
        "uce": _uce(_curve(r, ss, n_bins, binning, fn)),
        "mace": inter["mace"],
        "miscalibration_area": inter["miscalibration_area"],
        "ause": _sparsification(r, ss, n_steps, "rmse", True, fn)["ause"],
    }


# --------------------------------------------------------------------------- anomaly detection


def anomaly_scores(x: Any, mu: Any, sigma: Any) -> np.ndarray:
    """Per-sample ``mean((x - mu)^2 / sigma^2)`` over all axes but the first; shape ``(N,)``."""
    fn = "anomaly_scores"
    xx, mm, ss = _gather(fn, flatten=False, x=x, mu=mu, sigma=sigma)
    if xx.ndim == 0:
        raise InputError(f"{fn}: expected a batch of samples (N, ...), got a scalar")
    _check_positive(ss, fn)
    z2 = ((xx - mm) / ss) ** 2
    return z2.reshape(z2.shape[0], -1).mean(axis=1)


def _scores_labels(scores: Any, labels: Any, fn: str) -> tuple[np.ndarray, np.ndarray]:
    (s,) = _gather(fn, scores=scores)
    if _is_tensor(labels):
        labels = labels.detach().cpu().numpy()
    lab = np.asarray(labels)
    if lab.size != s.size:
        raise InputError(
            f"{fn}: scores and labels must have the same number of elements, "
            f"got {s.size} and {lab.size}"
        )
    lab = lab.ravel()
    if lab.dtype != bool:
        if lab.dtype.kind not in "biuf" or not np.all((lab == 0) | (lab == 1)):
            raise InputError(f"{fn}: labels must be boolean or 0/1 (1 = anomaly)")
        lab = lab.astype(bool)
    return s, lab


def _both_classes(lab: np.ndarray, fn: str) -> tuple[int, int]:
    npos = int(np.count_nonzero(lab))
    nneg = lab.size - npos
    if npos == 0 or nneg == 0:
        raise InputError(
            f"{fn}: labels must contain both classes, got {npos} positive(s) and {nneg} negative(s)"
        )
    return npos, nneg


def _roc(s: np.ndarray, lab: np.ndarray, npos: int, nneg: int) -> dict:
    order = np.argsort(-s, kind="stable")
    ss, yy = s[order], lab[order]
    last = np.r_[np.flatnonzero(np.diff(ss)), ss.size - 1]  # last index of each distinct score
    tps = np.cumsum(yy)[last]
    fps = (last + 1) - tps
    return {
        "fpr": np.r_[0.0, fps / nneg],
        "tpr": np.r_[0.0, tps / npos],
        "thresholds": np.r_[np.inf, ss[last]],
    }


def roc_curve(scores: Any, labels: Any) -> dict:
    """ROC curve: ``{"fpr", "tpr", "thresholds"}``, decreasing thresholds (first ``inf``).

    A sample is called anomalous when ``score >= threshold``; labels 1/True = anomaly.
    """
    s, lab = _scores_labels(scores, labels, "roc_curve")
    return _roc(s, lab, *_both_classes(lab, "roc_curve"))


def roc_auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) + 0.5 P(tie) (Mann-Whitney)."""
    s, lab = _scores_labels(scores, labels, "roc_auc")
    npos, nneg = _both_classes(lab, "roc_auc")
    ranks = rankdata(s)
    return float((ranks[lab].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


def eer(scores: Any, labels: Any) -> tuple[float, float]:
    """Equal error rate and its threshold: ``(eer, threshold)``.

    Over the ROC thresholds (``score >= t`` is anomalous) the one minimising
    ``|FPR - FNR|`` is taken (the highest such threshold on ties) and
    ``eer = (FPR + FNR) / 2`` there (exact when the two rates meet at a threshold).
    """
    s, lab = _scores_labels(scores, labels, "eer")
    roc = _roc(s, lab, *_both_classes(lab, "eer"))
    fnr = 1.0 - roc["tpr"]
    i = int(np.argmin(np.abs(roc["fpr"] - fnr)))
    return float((roc["fpr"][i] + fnr[i]) / 2.0), float(roc["thresholds"][i])


def f1_at_threshold(scores: Any, labels: Any, threshold: float) -> float:
    """F1 = 2 TP / (2 TP + FP + FN) calling ``score >= threshold`` anomalous (0 if undefined)."""
    s, lab = _scores_labels(scores, labels, "f1_at_threshold")
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise InputError(
            f"f1_at_threshold: threshold must be a number, got {threshold!r}"
        ) from None
    if math.isnan(t):
        raise InputError("f1_at_threshold: threshold is NaN")
    pred = s >= t
    tp = int(np.count_nonzero(pred & lab))
    fp = int(np.count_nonzero(pred & ~lab))
    fn_ = int(np.count_nonzero(~pred & lab))
    den = 2 * tp + fp + fn_
    return 2.0 * tp / den if den else 0.0


def anomaly_report(scores: Any, labels: Any) -> dict:
    """``{"auc", "eer", "eer_threshold", "f1"}`` with F1 at the EER threshold."""
    e, t = eer(scores, labels)
    return {
        "auc": roc_auc(scores, labels),
        "eer": e,
        "eer_threshold": t,
        "f1": f1_at_threshold(scores, labels, t),
    }
