"""Transfer functions and Fourier helpers of the classical SIM tools (raw-pixel units).

Frequencies are in cycles per raw pixel, ``(k_x, k_y)`` = (column, row) as everywhere in
the SIM task. The transfer function of a raw frame is the PSF's optical transfer function
times the camera pixel's: a Gaussian PSF of std ``sigma`` raw pixels has
``OTF(k) = exp(-2 pi^2 sigma^2 |k|^2)``; a pixel that integrates its whole area has
``sinc(k_x) sinc(k_y)``. The synthetic generator averages ``f`` HR samples per raw pixel
instead (box average then stride-``f`` sampling), whose transfer along one axis is the
Dirichlet kernel ``sin(pi k) / (f sin(pi k / f))``; ``binning=f`` selects it (``None``: the
camera's continuous pixel, the limit ``f -> infinity``).
"""

from __future__ import annotations

import math

import torch

from napari_sim_uq.core.errors import InputError

__all__ = ["apodized_window", "frequency_grid", "pixel_transfer", "raw_otf"]


def frequency_grid(
    shape: tuple[int, int],
    *,
    spacing: float = 1.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(k_x, k_y)`` of the FFT bins of an ``(H, W)`` grid whose pixels are ``spacing`` raw
    pixels apart, in cycles per raw pixel (broadcastable ``(1, W)`` and ``(H, 1)``)."""
    h, w = int(shape[0]), int(shape[1])
    kx = torch.fft.fftfreq(w, d=spacing, dtype=dtype, device=device)[None, :]
    ky = torch.fft.fftfreq(h, d=spacing, dtype=dtype, device=device)[:, None]
    return kx, ky


def _dirichlet(k: torch.Tensor, f: int | None) -> torch.Tensor:
    """1-D transfer of a raw pixel: ``sinc(k)`` (``f=None``) or the f-sample box average."""
    if f is None:
        return torch.sinc(k)
    if f == 1:
        return torch.ones_like(k)
    num = torch.sin(math.pi * k)
    den = f * torch.sin(math.pi * k / f)
    small = den.abs() < 1e-12
    return torch.where(small, torch.ones_like(k), num / torch.where(small, 1.0, den))


def pixel_transfer(kx: torch.Tensor, ky: torch.Tensor, binning: int | None = None) -> torch.Tensor:
    """Transfer function of the raw pixel (see the module docstring)."""
    if binning is not None and (isinstance(binning, bool) or int(binning) < 1):
        raise InputError(f"binning must be None or an integer >= 1, got {binning!r}")
    f = None if binning is None else int(binning)
    return _dirichlet(kx, f) * _dirichlet(ky, f)


def raw_otf(
    kx: torch.Tensor, ky: torch.Tensor, sigma: float, binning: int | None = None
) -> torch.Tensor:
    """OTF of a raw frame at ``(kx, ky)``: Gaussian PSF of std ``sigma`` raw pixels times the
    pixel transfer (real, 1 at k = 0)."""
    if not (isinstance(sigma, int | float) and math.isfinite(sigma) and sigma > 0):
        raise InputError(f"psf_sigma must be a positive number of raw pixels, got {sigma!r}")
    c = -2.0 * math.pi**2 * float(sigma) ** 2
    gauss = torch.exp(c * kx**2) * torch.exp(c * ky**2)  # separable: cheap on (1, W), (H, 1)
    return gauss * pixel_transfer(kx, ky, binning)


def apodized_window(
    shape: tuple[int, int],
    taper: float = 0.15,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Separable Tukey window: flat in the middle, cosine taper over ``taper`` of each side
    (suppresses the edge discontinuity of a non-periodic frame before an FFT)."""

    def tukey(n: int) -> torch.Tensor:
        x = (torch.arange(n, dtype=dtype, device=device) + 0.5) / n  # (0, 1)
        edge = max(float(taper), 1e-6)
        d = torch.minimum(x, 1 - x) / edge  # 0 at the border, 1 at the taper's end
        return torch.where(d >= 1, torch.ones_like(x), 0.5 - 0.5 * torch.cos(math.pi * d))

    h, w = int(shape[0]), int(shape[1])
    return tukey(h)[:, None] * tukey(w)[None, :]
