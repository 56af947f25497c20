"""Parametric light patterns from an illumination estimate, with a delta-method std.

Frame ``(a, p)`` is ``l(r) = 1 + m_ap cos(theta)``, ``theta = 2 pi k_a . (r - r0) + phi_ap``
on the HR grid (pixel ``u`` of an ``f`` times finer grid lies at raw position
``(u - (f - 1) / 2) / f``; ``r0`` is the estimate's phase origin, the frame's centre). Its
variance from the parameters' noise std (:class:`~napari_sim_uq.tasks.sim.classical.
estimate.PatternEstimate` ``phase_std``, ``modulation_std``, ``k_std``; independent, first
order):

    Var(l) = m^2 sin^2(theta) (sd_phi^2 + (2 pi)^2 sd_k^2 |r - r0|^2) + cos^2(theta) sd_m^2

An estimate without stds (given parameters) has a zero std. A frame marked ``unfitted``
(no phase could be fitted) is an unknown fringe of depth ``s`` (its ``modulation_std``) at a
uniformly unknown phase: mean 1, variance ``s^2 / 2`` everywhere.
"""

from __future__ import annotations

import math

import numpy as np

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.tasks.sim.classical.estimate import PatternEstimate

__all__ = ["parametric_patterns"]


def parametric_patterns(
    est: PatternEstimate,
    hr_factor: int = 2,
    shape: tuple[int, int] | None = None,
    offset: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std ``(A*P, f H, f W)`` float32 of the patterns of ``est`` on the HR grid
    of its frames (``shape``: another field size, e.g. a crop, whose raw pixel [0, 0] is
    the estimate's raw pixel ``offset = (y0, x0)``)."""
    if isinstance(hr_factor, bool) or not isinstance(hr_factor, int) or hr_factor < 1:
        raise InputError(f"hr_factor must be an integer >= 1, got {hr_factor!r}")
    f = hr_factor
    h, w = est.shape if shape is None else shape
    ox, oy = est.phase_origin
    y0, x0 = offset
    dx = (np.arange(f * w) - (f - 1) / 2) / f + x0 - ox
    dy = (np.arange(f * h) - (f - 1) / 2) / f + y0 - oy
    a_n, p_n = est.phases.shape
    zeros = np.zeros((a_n, p_n))
    sd_phi = zeros if est.phase_std is None else np.nan_to_num(est.phase_std)
    sd_m = zeros if est.modulation_std is None else np.nan_to_num(est.modulation_std)
    sd_k = np.zeros(a_n) if est.k_std is None else np.nan_to_num(est.k_std)
    unfitted = np.zeros((a_n, p_n), bool) if est.unfitted is None else est.unfitted
    r2 = dx[None, :] ** 2 + dy[:, None] ** 2
    mean = np.empty((a_n * p_n, f * h, f * w), np.float32)
    std = np.empty_like(mean)
    for a in range(a_n):
        kx, ky = est.wave_vectors[a]
        base = 2 * math.pi * (kx * dx[None, :] + ky * dy[:, None])
        for p in range(p_n):
            if unfitted[a, p]:
                mean[a * p_n + p] = 1.0
                std[a * p_n + p] = sd_m[a, p] / math.sqrt(2.0)
                continue
            theta = base + est.phases[a, p]
            m = est.frame_modulation[a, p]
            mean[a * p_n + p] = 1 + m * np.cos(theta)
            var = (m * np.sin(theta)) ** 2 * (
                sd_phi[a, p] ** 2 + (2 * math.pi * sd_k[a]) ** 2 * r2
            ) + (np.cos(theta) * sd_m[a, p]) ** 2
            std[a * p_n + p] = np.sqrt(var)
    return mean, std
