"""Point spread functions on the HR grid and their optical transfer functions.

Every PSF here is a square kernel of odd size, centred on its middle pixel
(``(size - 1) // 2``), non-negative and normalised to sum 1, so that convolution
(:func:`napari_sim_uq.tasks.sim.physics.fftconv.fft_convolve`, 'same' mode) does not shift the image
and conserves the total intensity away from the borders.
"""

from __future__ import annotations

import math
import numbers

import torch

from napari_sim_uq.core.errors import InputError

__all__ = [
    "airy_first_zero",
    "airy_psf",
    "gaussian_psf",
    "gaussian_sigma_from_na",
    "psf_to_otf",
]


def _positive(v: object, name: str, unit: str = "") -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise InputError(f"{name} must be a positive number{unit}, got {v!r}")
    v = float(v)
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"{name} must be a positive number{unit}, got {v!r}")
    return v


def _odd_size(size: object, name: str = "size") -> int:
    if isinstance(size, bool) or not isinstance(size, numbers.Integral):
        raise InputError(f"{name} must be a positive odd integer, got {size!r}")
    size = int(size)
    if size < 1 or size % 2 == 0:
        raise InputError(
            f"{name} must be a positive odd integer (the PSF is centred on its middle pixel), "
            f"got {size}"
        )
    return size


def gaussian_psf(
    sigma: float | torch.Tensor,
    size: int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Sampled isotropic Gaussian PSF, normalised to sum 1.

    Parameters
    ----------
    sigma : standard deviation in HR pixels (> 0); a float, or a 1-D tensor ``(B,)`` for
        one PSF per batch item (differentiable with respect to ``sigma``).
    size : odd kernel width; default ``2 * ceil(4 * max(sigma)) + 1`` (covers +-4 sigma).

    Returns ``(size, size)`` or ``(B, size, size)``.
    """
    if isinstance(sigma, torch.Tensor):
        s = sigma.to(dtype=dtype, device=device if device is not None else sigma.device)
        if s.ndim > 1:
            raise InputError(f"sigma must be a scalar or 1-D (B,), got shape {tuple(s.shape)}")
        if s.numel() == 0 or not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
            raise InputError(f"sigma must be positive and finite (HR pixels), got {sigma!r}")
        smax = float(s.detach().max())
    else:
        smax = _positive(sigma, "sigma", " (HR pixels)")
        s = torch.tensor(smax, dtype=dtype, device=device)
    size = 2 * math.ceil(4 * smax) + 1 if size is None else _odd_size(size)
    c = (size - 1) // 2
    r = torch.arange(size, dtype=dtype, device=s.device) - c
    s_ = s.reshape(*s.shape, 1, 1)
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * s_**2))
    return g / g.sum(dim=(-2, -1), keepdim=True)


def gaussian_sigma_from_na(na: float, wavelength: float, pixel_size: float) -> float:
    """Sigma (HR pixels) of the Gaussian that best fits a widefield Airy PSF.

    Uses the common approximation ``sigma = 0.21 * wavelength / NA`` (Zhang, Zerubia,
    Olivo-Marin 2007); ``wavelength`` and ``pixel_size`` in the same unit.
    """
    na = _positive(na, "na")
    wavelength = _positive(wavelength, "wavelength")
    pixel_size = _positive(pixel_size, "pixel_size")
    return 0.21 * wavelength / na / pixel_size


def airy_first_zero(na: float, wavelength: float, pixel_size: float) -> float:
    """Radius of the first dark ring, ``0.61 wavelength / NA``, in pixels."""
    na = _positive(na, "na")
    wavelength = _positive(wavelength, "wavelength")
    pixel_size = _positive(pixel_size, "pixel_size")
    return 0.6098 * wavelength / na / pixel_size


def airy_psf(
    na: float,
    wavelength: float,
    pixel_size: float,
    size: int | None = None,
    *,
    oversample: int = 5,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Widefield (scalar, in-focus) Airy PSF ``(2 J1(v) / v)^2``, ``v = 2 pi NA r / lambda``.

    Parameters
    ----------
    na : numerical aperture (> 0).
    wavelength : emission wavelength (> 0), same unit as ``pixel_size``.
    pixel_size : HR pixel size (> 0).
    size : odd kernel width; default covers 4 dark rings
        (``2 * ceil(4 * airy_first_zero) + 1``, at least 3).
    oversample : sub-samples per pixel and axis (>= 1); the intensity is averaged over
        each pixel's area, which matters when the PSF is only a few pixels wide.

    Returns ``(size, size)``, normalised to sum 1.
    """
    na = _positive(na, "na")
    wavelength = _positive(wavelength, "wavelength")
    pixel_size = _positive(pixel_size, "pixel_size")
    if isinstance(oversample, bool) or not isinstance(oversample, numbers.Integral):
        raise InputError(f"oversample must be an integer >= 1, got {oversample!r}")
    if oversample < 1:
        raise InputError(f"oversample must be an integer >= 1, got {oversample}")
    r0 = airy_first_zero(na, wavelength, pixel_size)
    size = max(3, 2 * math.ceil(4 * r0) + 1) if size is None else _odd_size(size)
    c = (size - 1) // 2
    q = int(oversample)
    # sub-pixel sample positions, computed in float64 for the Bessel function
    sub = (torch.arange(q, dtype=torch.float64) + 0.5) / q - 0.5
    pos = (torch.arange(size, dtype=torch.float64) - c)[:, None] + sub[None, :]  # (size, q)
    pos = pos.reshape(-1)
    rr = torch.sqrt(pos[:, None] ** 2 + pos[None, :] ** 2) * pixel_size
    v = 2 * math.pi * na * rr / wavelength
    vs = torch.where(v > 1e-8, v, torch.ones_like(v))
    amp = torch.where(v > 1e-8, 2 * torch.special.bessel_j1(vs) / vs, torch.ones_like(v))
    inten = (amp**2).reshape(size, q, size, q).mean(dim=(1, 3))
    inten = inten / inten.sum()
    return inten.to(dtype=dtype, device=device)


def psf_to_otf(
    psf: torch.Tensor, shape: tuple[int, int], *, real_fft: bool = False
) -> torch.Tensor:
    """Optical transfer function of a centred PSF on a grid of ``shape = (H, W)``.

    The PSF ``(..., kh, kw)`` is zero-padded to ``shape`` with its centre pixel
    (``(k - 1) // 2``) moved to index ``(0, 0)`` (circularly), then transformed, so a
    symmetric PSF gives a real OTF and ``OTF[..., 0, 0] = sum(psf)`` (1 for a normalised
    PSF). Returns the complex ``fft2`` ``(..., H, W)``, or ``rfft2`` ``(..., H, W//2+1)``
    with ``real_fft=True``. Frequencies follow ``torch.fft.fftfreq`` order (use
    ``torch.fft.fftshift`` to display).
    """
    if not isinstance(psf, torch.Tensor) or psf.ndim < 2:
        raise InputError("psf must be a tensor with at least 2 dimensions (..., kh, kw)")
    if len(shape) != 2 or min(int(s) for s in shape) < 1:
        raise InputError(f"shape must be (H, W) with positive integers, got {shape!r}")
    h, w = int(shape[0]), int(shape[1])
    kh, kw = psf.shape[-2:]
    if kh > h or kw > w:
        raise InputError(f"psf of size {kh} x {kw} does not fit the OTF grid {h} x {w}")
    padded = torch.nn.functional.pad(psf, (0, w - kw, 0, h - kh))
    padded = torch.roll(padded, shifts=(-((kh - 1) // 2), -((kw - 1) // 2)), dims=(-2, -1))
    return torch.fft.rfft2(padded) if real_fft else torch.fft.fft2(padded)
