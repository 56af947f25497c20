"""Camera binning: f x f box average ``B`` and stride-f sampling ``down_f``.

The SIM forward model (DESIGN.md section 4) maps the high-resolution (HR) grid, ``f`` times
finer than the camera, to camera pixels by ``down_f(B x)``. With the conventions below this
is exactly the mean over non-overlapping ``f x f`` blocks (:func:`bin_down`):

- ``box_average(x, f)`` is the 'same'-aligned convolution of ``x`` with the ``f x f`` kernel
  of value ``1/f^2`` (zero padding, ``scipy.signal.convolve2d(x, k, "same")`` alignment), so
  ``box_average(x, f)[i, j]`` is the mean of ``x[i - f//2 : i - f//2 + f, j - f//2 : ...]``
  (window starting ``f // 2`` pixels before ``i``; for even ``f`` the window reaches one
  pixel further back than forward).
- ``downsample(x, f)`` keeps the pixels ``x[f//2 :: f, f//2 :: f]``: for camera pixel ``I``
  the HR pixel ``f I + f//2``, whose box window is exactly the block ``f I ... f I + f - 1``.
- Hence ``bin_down(x, f) == downsample(box_average(x, f), f)`` for odd and even ``f``,
  and block ``I`` never touches the zero padding (``H`` and ``W`` are multiples of ``f``).
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from napari_sim_uq.core.errors import InputError

__all__ = [
    "bin_down",
    "box_average",
    "box_filter_full",
    "check_hr_factor",
    "downsample",
]


def check_hr_factor(f: object, name: str = "hr_factor") -> int:
    """Validate an integer binning / HR factor ``f >= 1`` and return it as ``int``."""
    if isinstance(f, bool):
        raise InputError(f"{name} must be an integer >= 1, got {f!r}")
    if not isinstance(f, numbers.Integral):
        if isinstance(f, numbers.Real) and float(f).is_integer():  # e.g. 2.0 from a config
            f = int(f)
        else:
            raise InputError(f"{name} must be an integer >= 1, got {f!r}")
    f = int(f)
    if f < 1:
        raise InputError(f"{name} must be an integer >= 1, got {f}")
    return f


def _check_image(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise InputError(f"{name} needs at least 2 dimensions (..., H, W), got {tuple(x.shape)}")


def _check_divisible(x: torch.Tensor, f: int, name: str) -> None:
    h, w = x.shape[-2:]
    if h % f or w % f:
        raise InputError(
            f"{name}: image size {h} x {w} is not divisible by the binning factor f={f}; "
            f"crop or pad the HR image to a multiple of {f} (e.g. {h - h % f} x {w - w % f})"
        )


def box_filter_full(x: torch.Tensor, f: int, *, normalize: bool = True) -> torch.Tensor:
    """Full linear convolution of ``x (..., H, W)`` with the ``f x f`` kernel ``1/f^2``.

    Output ``(..., H + f - 1, W + f - 1)``; ``out[i, j] = mean of x[i-f+1 : i+1, j-f+1 : j+1]``
    with zeros outside ``x``. Equals ``fft_convolve(x, ones(f, f) / f**2, mode="full")``.
    With ``normalize=False`` the block sum (kernel of ones) is returned. Differentiable.
    """
    f = check_hr_factor(f, "f")
    _check_image(x, "x")
    if f == 1:
        return x
    h, w = x.shape[-2:]
    if f == 2:
        # four shifted in-place adds into one zero buffer (fewest large temporaries)
        out = x.new_zeros(*x.shape[:-2], h + 1, w + 1)
        for dy in (0, 1):
            for dx in (0, 1):
                out[..., dy : dy + h, dx : dx + w] += x
    else:
        # separable running sums of f shifted copies (cheaper than avg_pool2d on CPU)
        xp = F.pad(x, (f - 1, f - 1, f - 1, f - 1))
        rows = xp[..., 0 : h + f - 1, :] + xp[..., 1 : h + f, :]
        for d in range(2, f):
            rows.add_(xp[..., d : d + h + f - 1, :])  # in place on a temporary
        out = rows[..., 0 : w + f - 1] + rows[..., 1 : w + f]
        for d in range(2, f):
            out.add_(rows[..., d : d + w + f - 1])
    return out.div_(f * f) if normalize else out


def box_average(x: torch.Tensor, f: int) -> torch.Tensor:
    """``B x``: f x f box average, 'same' size and alignment (see module docstring).

    Zero padding at the borders (border pixels average in zeros). Differentiable.
    """
    f = check_hr_factor(f, "f")
    _check_image(x, "x")
    if f == 1:
        return x
    h, w = x.shape[-2:]
    c = (f - 1) // 2
    return box_filter_full(x, f)[..., c : c + h, c : c + w]


def downsample(x: torch.Tensor, f: int) -> torch.Tensor:
    """``down_f x = x[..., f//2 :: f, f//2 :: f]`` (H, W must be multiples of ``f``)."""
    f = check_hr_factor(f, "f")
    _check_image(x, "x")
    _check_divisible(x, f, "downsample")
    o = f // 2
    return x[..., o::f, o::f]


def bin_down(x: torch.Tensor, f: int) -> torch.Tensor:
    """Mean over non-overlapping ``f x f`` blocks: ``(..., H, W) -> (..., H/f, W/f)``.

    Equals ``downsample(box_average(x, f), f)``. ``H`` and ``W`` must be divisible by ``f``.
    """
    f = check_hr_factor(f, "f")
    _check_image(x, "x")
    _check_divisible(x, f, "bin_down")
    if f == 1:
        return x
    h, w = x.shape[-2:]
    lead = x.shape[:-2]
    return x.reshape(*lead, h // f, f, w // f, f).mean(dim=(-3, -1))
