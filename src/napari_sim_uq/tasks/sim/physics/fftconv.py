"""Linear 2-D convolution of batched images, by FFT and directly.

Conventions (shared by every function here):

- ``x`` has shape ``(..., H, W)`` and ``kernel`` has shape ``(..., kh, kw)``; the leading
  dimensions broadcast against each other (one PSF per batch item applied to all frames,
  ``x (B, F, H, W)`` with ``kernel (B, 1, kh, kw)``; one PSF for everything,
  ``kernel (kh, kw)``; or one kernel per frame).
- The convolution is linear (zero padding outside the image), never circular.
- ``mode="full"`` returns the ``(H + kh - 1, W + kw - 1)`` result,
  ``full[i, j] = sum_{s, t} x[s, t] * kernel[i - s, j - t]``.
- ``mode="same"`` returns ``full[c_h : c_h + H, c_w : c_w + W]`` with
  ``c = (k - 1) // 2``: exactly the alignment of ``scipy.signal.convolve2d(x, k, "same")``
  for odd and even kernels (for an odd kernel its centre pixel is the origin; for an even
  kernel the origin is the pixel just before the centre).

This is a true convolution (the kernel is flipped), unlike ``torch.nn.functional.conv2d``,
which computes a correlation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from napari_sim_uq.core.errors import InputError

__all__ = [
    "conv2d_direct",
    "conv2d_direct_same",
    "conv2d_direct_sampled",
    "fft_convolve_sampled",
    "fft_convolve",
    "fft_convolve_same",
    "next_fast_len",
]

_MODES = ("same", "full")


@functools.lru_cache(maxsize=1024)
def next_fast_len(n: int) -> int:
    """Smallest integer ``>= n`` whose prime factors are all 2, 3 or 5 (fast FFT sizes)."""
    if n < 1:
        raise InputError(f"next_fast_len: n must be >= 1, got {n}")
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def _check(x: torch.Tensor, kernel: torch.Tensor, mode: str, name: str) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(kernel, torch.Tensor):
        raise InputError(f"{name}: x and kernel must be torch tensors")
    if x.ndim < 2 or kernel.ndim < 2:
        raise InputError(
            f"{name}: x and kernel need at least 2 dimensions (..., H, W), got shapes "
            f"{tuple(x.shape)} and {tuple(kernel.shape)}"
        )
    if mode not in _MODES:
        raise InputError(f"{name}: mode must be one of {_MODES}, got {mode!r}")
    if min(x.shape[-2:]) < 1 or min(kernel.shape[-2:]) < 1:
        raise InputError(
            f"{name}: empty image or kernel, shapes {tuple(x.shape)} and {tuple(kernel.shape)}"
        )
    try:
        torch.broadcast_shapes(x.shape[:-2], kernel.shape[:-2])
    except RuntimeError as exc:
        raise InputError(
            f"{name}: leading dimensions of x {tuple(x.shape[:-2])} and kernel "
            f"{tuple(kernel.shape[:-2])} do not broadcast"
        ) from exc


def _crop(full: torch.Tensor, h: int, w: int, kh: int, kw: int, mode: str) -> torch.Tensor:
    if mode == "full":
        return full[..., : h + kh - 1, : w + kw - 1]
    ch, cw = (kh - 1) // 2, (kw - 1) // 2
    return full[..., ch : ch + h, cw : cw + w]


def fft_convolve(x: torch.Tensor, kernel: torch.Tensor, mode: str = "same") -> torch.Tensor:
    """Linear convolution ``x * kernel`` over the last two dimensions, by real FFT.

    Both operands are zero-padded to (at least) ``(H + kh - 1, W + kw - 1)`` (rounded up to a
    fast FFT size), so there is no wrap-around. Leading dimensions broadcast; the kernel's
    transform is computed once per distinct kernel, not once per frame. Real inputs only.
    Differentiable; works on any device; the result has the promoted floating dtype.

    Parameters
    ----------
    x : tensor (..., H, W)
    kernel : tensor (..., kh, kw)
    mode : "same" (scipy ``convolve2d(..., "same")`` alignment) or "full".
    """
    _check(x, kernel, mode, "fft_convolve")
    dtype = torch.promote_types(x.dtype, kernel.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    x = x.to(dtype)
    kernel = kernel.to(dtype)
    h, w = x.shape[-2:]
    kh, kw = kernel.shape[-2:]
    ph, pw = next_fast_len(h + kh - 1), next_fast_len(w + kw - 1)
    fx = torch.fft.rfft2(x, s=(ph, pw))
    fk = torch.fft.rfft2(kernel, s=(ph, pw))
    full = torch.fft.irfft2(fx * fk, s=(ph, pw))
    return _crop(full, h, w, kh, kw, mode)


def fft_convolve_same(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``fft_convolve(x, kernel, mode="same")``."""
    return fft_convolve(x, kernel, mode="same")


def _promote(x: torch.Tensor, kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = torch.promote_types(x.dtype, kernel.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return x.to(dtype), kernel.to(dtype)


def _grouped_correlation(xp: torch.Tensor, kflip: torch.Tensor, stride: int) -> torch.Tensor:
    """Valid correlation of padded images ``xp (..., Hp, Wp)`` with ``kflip (..., kh, kw)``.

    Leading dimensions broadcast. Dimensions where the kernel broadcasts (size 1) go into
    the ``conv2d`` batch, the others into groups, so a kernel shared by many images is one
    ordinary convolution and distinct kernels one grouped convolution.
    """
    hp, wp = xp.shape[-2:]
    kh, kw = kflip.shape[-2:]
    lead = torch.broadcast_shapes(xp.shape[:-2], kflip.shape[:-2])
    nl = len(lead)
    klead = (1,) * (nl - (kflip.ndim - 2)) + tuple(kflip.shape[:-2])
    xb = xp.expand(*lead, hp, wp)
    kb = kflip.reshape(*klead, kh, kw)
    group_axes = [i for i, n in enumerate(klead) if n != 1]
    batch_axes = [i for i, n in enumerate(klead) if n == 1]
    perm = batch_axes + group_axes
    n_batch = math.prod(lead[i] for i in batch_axes)
    n_groups = math.prod(lead[i] for i in group_axes)
    xg = xb.permute(*perm, nl, nl + 1).reshape(n_batch, n_groups, hp, wp)
    kg = kb.permute(*perm, nl, nl + 1).reshape(n_groups, 1, kh, kw)
    out = F.conv2d(xg, kg, stride=stride, groups=n_groups)
    oh, ow = out.shape[-2:]
    out = out.reshape(*[lead[i] for i in perm], oh, ow)
    inv = [perm.index(i) for i in range(nl)]
    return out.permute(*inv, nl, nl + 1)


def conv2d_direct(x: torch.Tensor, kernel: torch.Tensor, mode: str = "same") -> torch.Tensor:
    """Reference linear convolution computed directly with ``torch.nn.functional.conv2d``.

    Same conventions and result as :func:`fft_convolve` (up to rounding), but the cost is
    ``O(H W kh kw)`` per image. The kernel is flipped because ``conv2d`` is a correlation.
    Distinct kernels are handled with grouped convolution; a kernel shared by all images
    uses one ordinary convolution with the images stacked in the batch dimension.
    """
    _check(x, kernel, mode, "conv2d_direct")
    x, kernel = _promote(x, kernel)
    kh, kw = kernel.shape[-2:]
    if mode == "full":
        pads = (kw - 1, kw - 1, kh - 1, kh - 1)
    else:
        ch, cw = (kh - 1) // 2, (kw - 1) // 2
        pads = (kw - 1 - cw, cw, kh - 1 - ch, ch)
    # explicit F.pad: conv2d's own (large) padding argument is much slower on CPU
    return _grouped_correlation(F.pad(x, pads), torch.flip(kernel, dims=(-2, -1)), 1)


def conv2d_direct_same(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``conv2d_direct(x, kernel, mode="same")``: scipy ``convolve2d(..., "same")`` alignment."""
    return conv2d_direct(x, kernel, mode="same")


# --------------------------------------------------------------------------------------
# Sums of full convolutions sampled on a strided grid (binning, SIM forward model)
# --------------------------------------------------------------------------------------

Pair = tuple[torch.Tensor, torch.Tensor]


def _check_sampled(
    pairs: Sequence[Pair], step: int, offset: tuple[int, int], out_shape: tuple[int, int]
) -> tuple[int, int, int, int, int]:
    if len(pairs) == 0:
        raise InputError("sampled convolution needs at least one (x, kernel) pair")
    for x, k in pairs:
        _check(x, k, "full", "sampled convolution")
    step = int(step)
    oy, ox = (int(o) for o in offset)
    oh, ow = (int(o) for o in out_shape)
    if step < 1 or oy < 0 or ox < 0 or oh < 1 or ow < 1:
        raise InputError(
            f"sampled convolution: need step >= 1, offset >= 0, out_shape >= 1; got step={step}, "
            f"offset={offset}, out_shape={out_shape}"
        )
    return step, oy, ox, oh, ow


def _fft_size(n: int, k: int, step: int, offset: int, out: int) -> int:
    """Circular size that reproduces the wanted samples of a linear convolution exactly.

    The circular result is ``sum_j full[i + j P]``; with ``P >= L - offset`` (``L = n + k - 1``)
    no wanted index ``i >= offset`` receives wrapped-around terms. ``P`` is a multiple of
    ``step`` (for folding the spectrum) and large enough to hold the signal and the kernel.
    """
    need = max(n + k - 1 - offset, offset + step * (out - 1) + 1, n, k, 1)
    return step * next_fast_len(-(-need // step))


def fft_convolve_sampled(
    pairs: Sequence[Pair], step: int, offset: tuple[int, int], out_shape: tuple[int, int]
) -> torch.Tensor:
    """``sum_p full(x_p * k_p)[oy + step*m, ox + step*n]`` for ``m < out_h``, ``n < out_w``.

    ``pairs`` is a list of ``(x, kernel)`` with broadcastable leading dimensions. Computed
    with one inverse FFT for the whole sum; the padding is the minimum that keeps the wanted
    samples free of wrap-around, the kernel is circularly shifted by the offset, and the
    row spectrum is folded ``step`` times (aliasing = subsampling), so the inverse transform
    runs on ``1/step`` of the rows. Samples beyond the full result are 0. Differentiable.
    """
    step, oy, ox, oh, ow = _check_sampled(pairs, step, offset, out_shape)
    ph = max(_fft_size(x.shape[-2], k.shape[-2], step, oy, oh) for x, k in pairs)
    pw = max(_fft_size(x.shape[-1], k.shape[-1], step, ox, ow) for x, k in pairs)
    spec = None
    for x, k in pairs:
        x, k = _promote(x, k)
        kh, kw = k.shape[-2:]
        kp = F.pad(k, (0, pw - kw, 0, ph - kh))
        kp = torch.roll(kp, shifts=(-oy, -ox), dims=(-2, -1))  # output index offset -> 0
        if step > 1:
            kp = kp / step  # normalisation of the folded row transform, applied to the kernel
        fx, fk = torch.fft.rfft2(x, s=(ph, pw)), torch.fft.rfft2(kp)
        if spec is None:
            spec = fx * fk
        elif spec.shape == torch.broadcast_shapes(spec.shape, fx.shape, fk.shape):
            spec = spec.addcmul_(fx, fk)  # in place on a temporary autograd does not need
        else:
            spec = spec + fx * fk
    if step > 1:
        # keeping every step-th row  <=>  summing the step aliases of the row spectrum
        spec = spec.reshape(*spec.shape[:-2], step, ph // step, spec.shape[-1]).sum(dim=-3)
    rows = torch.fft.ifft(spec, dim=-2)[..., :oh, :]
    cols = torch.fft.irfft(rows, n=pw, dim=-1)
    return cols[..., 0 : step * ow : step]


def conv2d_direct_sampled(
    pairs: Sequence[Pair],
    step: int,
    offset: tuple[int, int],
    out_shape: tuple[int, int],
    *,
    strided: bool = False,
) -> torch.Tensor:
    """Direct-convolution counterpart of :func:`fft_convolve_sampled` (same result).

    ``strided=False`` computes every full convolution with :func:`conv2d_direct` and then
    samples it (the plain reference); ``strided=True`` evaluates only the wanted samples
    (``conv2d`` with ``stride=step``), ``step^2`` times less work.
    """
    step, oy, ox, oh, ow = _check_sampled(pairs, step, offset, out_shape)
    total = None
    for x, k in pairs:
        x, k = _promote(x, k)
        kh, kw = k.shape[-2:]
        h, w = x.shape[-2:]
        # rows needed in the fully padded image: up to oy + step*(oh-1) + kh
        extra_h = max(0, oy + step * (oh - 1) + kh - (h + 2 * (kh - 1)))
        extra_w = max(0, ox + step * (ow - 1) + kw - (w + 2 * (kw - 1)))
        if strided:
            xp = F.pad(x, (kw - 1, kw - 1 + extra_w, kh - 1, kh - 1 + extra_h))
            xp = xp[..., oy:, ox:]
            t = _grouped_correlation(xp, torch.flip(k, dims=(-2, -1)), step)[..., :oh, :ow]
        else:
            full = F.pad(conv2d_direct(x, k, mode="full"), (0, extra_w, 0, extra_h))
            t = full[..., oy : oy + step * oh : step, ox : ox + step * ow : step]
        total = t if total is None else total + t
    return total
