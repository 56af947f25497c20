"""Sinusoidal SIM illumination patterns.

For ``A`` angles and ``P`` phases the frames are ordered angle-major, ``frame = a * P + p``,
and

    I_ap(r) = 1 + m * cos(2 pi k_a . r + phi_a + 2 pi p / P)

with pixel coordinates ``r = (x, y)`` = (column index, row index) on the HR grid, origin at
the centre of pixel ``[0, 0]``, modulation depth ``m`` in ``[0, 1]``, per-angle phase offset
``phi_a`` (radians) and wave vector ``k_a`` in cycles per HR pixel:

    theta_a = angle_offset + pi * a / A,    k_a = (cos theta_a, sin theta_a) / period.

``period`` is the fringe period in HR pixels. Periods below 2 HR pixels exceed the Nyquist
limit of the grid and alias; they are accepted (the formula is still evaluated exactly) but
are not meaningful SIM patterns. The mean of every pattern is 1, its values lie in
``[1 - m, 1 + m]``.
"""

from __future__ import annotations

import math
import numbers

import torch

from napari_sim_uq.core.errors import InputError

__all__ = ["illumination_patterns", "pattern_angles", "wave_vectors"]

Scalar = float | torch.Tensor


def _positive_int(v: object, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) < 1:
        raise InputError(f"{name} must be an integer >= 1, got {v!r}")
    return int(v)


def _param(
    v: Scalar, name: str, dtype: torch.dtype, device: torch.device | str | None
) -> torch.Tensor:
    """A scalar or 1-D (batch) parameter as a tensor of shape () or (B,)."""
    if isinstance(v, torch.Tensor):
        t = v.to(dtype=dtype, device=device if device is not None else v.device)
    elif isinstance(v, numbers.Real) and not isinstance(v, bool):
        t = torch.tensor(float(v), dtype=dtype, device=device)
    else:
        try:
            t = torch.as_tensor(v, dtype=dtype, device=device)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name} must be a number or a 1-D array, got {v!r}") from exc
    if t.ndim > 1:
        raise InputError(f"{name} must be a scalar or a 1-D batch (B,), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{name} must be finite, got {v!r}")
    return t


def _check_period(period: torch.Tensor) -> None:
    if bool((period <= 0).any()):
        bad = period[period <= 0].flatten()[0].item()
        raise InputError(f"period must be > 0 HR pixels (fringe period), got {bad:g}")


def pattern_angles(
    n_angles: int,
    angle_offset: Scalar = 0.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Pattern orientations ``theta_a = angle_offset + pi a / A`` in radians: (A,) or (B, A)."""
    n_angles = _positive_int(n_angles, "n_angles")
    off = _param(angle_offset, "angle_offset", dtype, device)
    a = torch.arange(n_angles, dtype=dtype, device=off.device)
    return off.unsqueeze(-1) + math.pi * a / n_angles


def wave_vectors(
    n_angles: int,
    period: Scalar,
    angle_offset: Scalar = 0.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Wave vectors ``k_a = (cos theta_a, sin theta_a) / period`` in cycles per HR pixel.

    Returns ``(A, 2)`` with columns ``(k_x, k_y)`` (x = column, y = row), or ``(B, A, 2)``
    when ``period`` or ``angle_offset`` is a batch ``(B,)``.
    """
    n_angles = _positive_int(n_angles, "n_angles")
    per = _param(period, "period", dtype, device)
    _check_period(per)
    theta = pattern_angles(n_angles, angle_offset, dtype=dtype, device=per.device)
    k = torch.stack((torch.cos(theta), torch.sin(theta)), dim=-1)
    return k / per.reshape(*per.shape, 1, 1)


def illumination_patterns(
    shape: tuple[int, int],
    n_angles: int = 3,
    n_phases: int = 3,
    period: Scalar = 4.0,
    modulation: Scalar = 0.8,
    angle_offset: Scalar = 0.0,
    phase_offsets: Scalar | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """SIM illumination patterns ``I_ap`` on an HR grid of ``shape = (H, W)``.

    Parameters
    ----------
    shape : (H, W) of the HR grid.
    n_angles, n_phases : A >= 1 and P >= 1.
    period : fringe period in HR pixels (> 0), scalar or batch (B,).
    modulation : depth m in [0, 1], scalar or batch (B,).
    angle_offset : orientation of angle 0 in radians, scalar or batch (B,).
    phase_offsets : per-angle phase phi_a in radians, shape (A,) or (B, A); scalar
        broadcasts to all angles; None means 0.

    Returns
    -------
    ``(A*P, H, W)``, angle-major (``frame = a*P + p``); ``(B, A*P, H, W)`` when any
    parameter carries a batch dimension. Differentiable with respect to tensor parameters.
    """
    if (
        not isinstance(shape, tuple | list)
        or len(shape) != 2
        or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in shape)
        or min(shape) < 1
    ):
        raise InputError(f"shape must be (H, W) with positive integers, got {shape!r}")
    h, w = int(shape[0]), int(shape[1])
    n_angles = _positive_int(n_angles, "n_angles")
    n_phases = _positive_int(n_phases, "n_phases")

    per = _param(period, "period", dtype, device)
    dev = per.device
    _check_period(per)
    m = _param(modulation, "modulation", dtype, dev)
    if bool(((m < 0) | (m > 1)).any()):
        bad = m[(m < 0) | (m > 1)].flatten()[0].item()
        raise InputError(f"modulation must be in [0, 1] (modulation depth), got {bad:g}")
    off = _param(angle_offset, "angle_offset", dtype, dev)

    if phase_offsets is None:
        phi = torch.zeros(n_angles, dtype=dtype, device=dev)
    else:
        phi = torch.as_tensor(phase_offsets, dtype=dtype, device=dev)
        if phi.ndim == 0:
            phi = phi.expand(n_angles)
        if phi.ndim > 2 or phi.shape[-1] != n_angles:
            raise InputError(
                f"phase_offsets must have shape ({n_angles},) or (B, {n_angles}) for "
                f"n_angles={n_angles}, got {tuple(phi.shape)}"
            )
        if not bool(torch.isfinite(phi).all()):
            raise InputError("phase_offsets must be finite")

    batch_sizes = {t.shape[0] for t in (per, m, off) if t.ndim == 1}
    if phi.ndim == 2:
        batch_sizes.add(phi.shape[0])
    if len(batch_sizes) > 1:
        raise InputError(
            f"batched pattern parameters disagree on the batch size: {sorted(batch_sizes)}"
        )
    batched = bool(batch_sizes)
    nb = batch_sizes.pop() if batched else 1

    per_b = per.expand(nb) if batched else per.reshape(1)
    m_b = m.expand(nb) if batched else m.reshape(1)
    off_b = off.expand(nb) if batched else off.reshape(1)
    phi_b = phi.expand(nb, n_angles) if phi.ndim == 1 else phi

    theta = off_b[:, None] + math.pi * torch.arange(n_angles, dtype=dtype, device=dev) / n_angles
    kx = torch.cos(theta) / per_b[:, None]  # (B, A)
    ky = torch.sin(theta) / per_b[:, None]
    ys = torch.arange(h, dtype=dtype, device=dev)
    xs = torch.arange(w, dtype=dtype, device=dev)
    # phase of angle a at pixel (y, x): 2 pi (kx x + ky y) + phi_a   -> (B, A, H, W)
    arg = 2 * math.pi * (kx[..., None, None] * xs + ky[..., None, None] * ys[:, None])
    arg = arg + phi_b[..., None, None]
    steps = 2 * math.pi * torch.arange(n_phases, dtype=dtype, device=dev) / n_phases  # (P,)
    arg = arg[:, :, None] + steps[:, None, None]  # (B, A, P, H, W)
    pat = 1 + m_b[:, None, None, None, None] * torch.cos(arg)
    pat = pat.reshape(nb, n_angles * n_phases, h, w)
    return pat if batched else pat[0]
