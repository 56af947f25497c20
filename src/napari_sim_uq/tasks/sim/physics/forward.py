"""SIM forward model ``y_i = down_f( B (h * (e . l_i)) ) + b`` (DESIGN.md section 4).

- ``e``: emitter density on the HR grid ``(fH, fW)``,
- ``l_i``: illumination pattern of frame ``i`` (angle-major, ``i = a*P + p``),
- ``h``: PSF on the HR grid (normalised to sum 1 by the caller), ``*`` linear convolution
  with zero padding and 'same' alignment (:mod:`.fftconv`),
- ``B`` then ``down_f``: the ``f x f`` camera binning, i.e. the mean over non-overlapping
  ``f x f`` blocks (:func:`.binning.bin_down`),
- ``b``: background.

Boundary handling: outside the HR field of view the emitter is zero (linear, not circular,
convolution). Consequently a flat scene stays flat only where the PSF support fits inside
the field of view; within ``(k - 1) // 2`` (resp. ``k // 2``) HR pixels of the top/left
(resp. bottom/right) border the signal drops. No other approximation is made.

Accepted shapes (``F = A*P`` frames, ``B`` batch):

- emitter ``(B, 1, fH, fW)``, ``(B, fH, fW)`` or unbatched ``(fH, fW)``;
- patterns ``(B, F, fH, fW)`` or ``(F, fH, fW)`` (shared by the batch);
- psf ``(kh, kw)`` (shared), ``(B, kh, kw)`` (one per sample, applied to all frames) or
  ``(B, F, kh, kw)`` / ``(1, F, kh, kw)`` (one per frame);
- background: a number, a tensor ``()``, ``(B,)`` (one per sample), or any tensor that
  broadcasts to ``(B, F, H, W)``.

The result is ``(B, F, H, W)``, or ``(F, H, W)`` when the emitter is unbatched ``(fH, fW)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.tasks.sim.physics.binning import bin_down, box_filter_full, check_hr_factor
from napari_sim_uq.tasks.sim.physics.fftconv import (
    conv2d_direct_same,
    conv2d_direct_sampled,
    fft_convolve_sampled,
)

__all__ = ["binned_offset", "sampled_conv_sum", "sim_forward"]

CONV_BACKENDS = ("fft", "direct", "direct_strided")


def check_conv(conv: str) -> str:
    """Validate a convolution backend name (see :func:`sampled_conv_sum`)."""
    if conv not in CONV_BACKENDS:
        raise InputError(f"conv must be one of {CONV_BACKENDS}, got {conv!r}")
    return conv


def binned_offset(f: int, kh: int, kw: int) -> tuple[int, int]:
    """Index of camera pixel 0 in a *full* convolution with a box-filtered kernel.

    ``bin_down(h * S ('same'), f)[I, J] = full(S, B h)[f I + oy, f J + ox]`` with
    ``B h = box_filter_full(h, f)`` and ``(oy, ox) = (f - 1 + (kh-1)//2, f - 1 + (kw-1)//2)``
    (``kh, kw``: size of ``h`` before box filtering), for odd and even ``f`` and ``k``.
    """
    return f - 1 + (kh - 1) // 2, f - 1 + (kw - 1) // 2


def sampled_conv_sum(
    pairs: list[tuple[torch.Tensor, torch.Tensor]],
    f: int,
    offset: tuple[int, int],
    out_shape: tuple[int, int],
    conv: str = "fft",
) -> torch.Tensor:
    """Sum of full convolutions sampled at ``offset + f * (m, n)``, by the chosen backend:
    ``"fft"`` (:func:`fft_convolve_sampled`), ``"direct"`` (full :func:`conv2d_direct`,
    then sampling) or ``"direct_strided"`` (``conv2d`` evaluated only at the samples)."""
    conv = check_conv(conv)
    if conv == "fft":
        return fft_convolve_sampled(pairs, f, offset, out_shape)
    return conv2d_direct_sampled(pairs, f, offset, out_shape, strided=conv == "direct_strided")


@dataclass
class _Prepared:
    emitter: torch.Tensor  # (B, 1, fH, fW)
    patterns: torch.Tensor  # (B or 1, F, fH, fW)
    psf: torch.Tensor  # (B or 1, F or 1, kh, kw)
    f: int
    unbatched: bool


def _tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch tensor, got {type(x).__name__}")
    return x


def as_emitter4d(e: torch.Tensor, name: str = "emitter") -> torch.Tensor:
    """``(fH, fW)``, ``(B, fH, fW)`` or ``(B, 1, fH, fW)`` -> ``(B, 1, fH, fW)``."""
    e = _tensor(e, name)
    if e.ndim == 2:
        return e[None, None]
    if e.ndim == 3:
        return e[:, None]
    if e.ndim == 4 and e.shape[1] == 1:
        return e
    raise InputError(
        f"{name} must have shape (fH, fW), (B, fH, fW) or (B, 1, fH, fW), got {tuple(e.shape)}"
    )


def as_patterns4d(p: torch.Tensor, name: str = "patterns") -> torch.Tensor:
    """``(F, fH, fW)`` or ``(B, F, fH, fW)`` -> 4-D."""
    p = _tensor(p, name)
    if p.ndim == 3:
        return p[None]
    if p.ndim == 4:
        return p
    raise InputError(f"{name} must have shape (F, fH, fW) or (B, F, fH, fW), got {tuple(p.shape)}")


def as_psf4d(h: torch.Tensor, name: str = "psf") -> torch.Tensor:
    """``(kh, kw)``, ``(B, kh, kw)`` or ``(B, F, kh, kw)`` -> 4-D ``(B|1, F|1, kh, kw)``."""
    h = _tensor(h, name)
    if h.ndim == 2:
        return h[None, None]
    if h.ndim == 3:
        return h[:, None]
    if h.ndim == 4:
        return h
    raise InputError(
        f"{name} must have shape (kh, kw), (B, kh, kw) or (B, F, kh, kw), got {tuple(h.shape)}"
    )


def _check_batch(shapes: dict[str, torch.Size]) -> None:
    try:
        torch.broadcast_shapes(*[(s[0], s[1]) for s in shapes.values()])
    except RuntimeError as exc:
        desc = ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items())
        raise InputError(f"batch/frame dimensions do not match: {desc}") from exc


def prepare_inputs(
    emitter: torch.Tensor, patterns: torch.Tensor, psf: torch.Tensor, hr_factor: int
) -> _Prepared:
    """Validate and bring the forward-model inputs to 4-D (see module docstring)."""
    f = check_hr_factor(hr_factor)
    unbatched = isinstance(emitter, torch.Tensor) and emitter.ndim == 2
    e = as_emitter4d(emitter)
    pat = as_patterns4d(patterns)
    h = as_psf4d(psf)
    if e.shape[-2:] != pat.shape[-2:]:
        raise InputError(
            f"emitter {tuple(e.shape[-2:])} and patterns {tuple(pat.shape[-2:])} must have the "
            "same HR image size"
        )
    fh, fw = e.shape[-2:]
    if fh % f or fw % f:
        raise InputError(
            f"HR image size {fh} x {fw} is not divisible by hr_factor={f}; the HR grid must be "
            f"exactly {f} times the camera grid"
        )
    if min(h.shape[-2:]) < 1:
        raise InputError(f"psf must have a positive size, got {tuple(h.shape)}")
    _check_batch({"emitter": e.shape, "patterns": pat.shape, "psf": h.shape})
    if unbatched and (pat.shape[0] != 1 or h.shape[0] != 1):
        raise InputError(
            "an unbatched emitter (fH, fW) needs unbatched patterns (F, fH, fW) and a psf of "
            f"shape (kh, kw) or (1, F, kh, kw); got patterns {tuple(patterns.shape)}, "
            f"psf {tuple(psf.shape)}"
        )
    return _Prepared(e, pat, h, f, unbatched)


def background_tensor(background: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A number, ``()``, ``(B,)`` or a tensor broadcastable to ``like`` (B, F, H, W)."""
    if isinstance(background, torch.Tensor):
        b = background.to(dtype=like.dtype, device=like.device)
        if b.ndim == 1:
            b = b.reshape(-1, 1, 1, 1)
    else:
        try:
            b = torch.as_tensor(float(background), dtype=like.dtype, device=like.device)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"background must be a number or a tensor, got {background!r}"
            ) from exc
    try:
        torch.broadcast_shapes(b.shape, like.shape)
    except RuntimeError as exc:
        raise InputError(
            f"background of shape {tuple(b.shape)} does not broadcast to the output "
            f"{tuple(like.shape)}; use a number, (B,) or a broadcastable tensor"
        ) from exc
    return b


def sim_forward(
    emitter: torch.Tensor,
    patterns: torch.Tensor,
    psf: torch.Tensor,
    hr_factor: int = 1,
    background: float | torch.Tensor = 0.0,
    *,
    conv: str = "fft",
) -> torch.Tensor:
    """Noise-free SIM raw frames ``y_i = down_f(B(h * (e . l_i))) + b``.

    Parameters
    ----------
    emitter, patterns, psf, background : see the module docstring for shapes.
    hr_factor : integer ``f >= 1``; the HR grid is ``f`` times finer than the camera.
    conv : ``"fft"`` (default): one FFT convolution of ``e . l_i`` with the box-filtered PSF
        ``B h``, evaluated only at the camera pixels (:func:`sampled_conv_sum`);
        ``"direct"``: the literal definition, 'same' direct convolution
        (:func:`conv2d_direct_same`) followed by :func:`bin_down` (slow reference);
        ``"direct_strided"``: direct convolution with ``B h`` at the camera pixels only.

    Returns ``(B, F, H, W)`` with ``H = fH / f`` (``(F, H, W)`` for an unbatched emitter).
    Differentiable with respect to every tensor input.
    """
    conv = check_conv(conv)
    p = prepare_inputs(emitter, patterns, psf, hr_factor)
    s = p.emitter * p.patterns
    fh, fw = s.shape[-2:]
    if conv == "direct":
        y = bin_down(conv2d_direct_same(s, p.psf), p.f)
    else:
        kh, kw = p.psf.shape[-2:]
        pairs = [(s, box_filter_full(p.psf, p.f))]
        y = sampled_conv_sum(pairs, p.f, binned_offset(p.f, kh, kw), (fh // p.f, fw // p.f), conv)
    y = y + background_tensor(background, y)
    return y[0] if p.unbatched else y
