"""Synthetic fluorescent structures for every task's generator (NumPy, SciPy).

:func:`render_structures` draws filaments, rings and beads as points on a grid
``fine_factor`` times finer than the output, blurs them to their line width and area-averages
them down to the output grid; optional nuclei (textured, soft-edged ellipses) are drawn on
the output grid itself. The result is float32 with maximum 1 (all zero if nothing is
drawn). Every random number comes from the ``rng`` passed in, in a fixed order (filaments,
rings, beads, then nuclei), and nuclei draw nothing unless requested, so a caller that
never asks for nuclei gets the same numbers as before they existed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from napari_sim_uq.core.errors import InputError

__all__ = ["count_range", "render_structures", "splat"]


def count_range(v: Any, name: str) -> tuple[int, int]:
    """An integer count or an inclusive ``(low, high)`` range of counts, as a pair."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        lo = hi = int(v)
    else:
        try:
            lo_v, hi_v = v
            whole = not any(isinstance(x, bool) or float(x) != int(x) for x in (lo_v, hi_v))
        except (TypeError, ValueError, OverflowError):
            whole = False
        if not whole:
            raise InputError(
                f"{name} must be a count or a (low, high) pair of whole numbers, got {v!r}"
            )
        lo, hi = int(lo_v), int(hi_v)
    if lo < 0 or hi < lo:
        raise InputError(f"{name} must satisfy 0 <= low <= high, got {v!r}")
    return lo, hi


def _float_range(v: Any, name: str, minimum: float = 0.0) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in v)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a (low, high) pair of numbers, got {v!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < minimum or hi < lo:
        raise InputError(f"{name} must satisfy {minimum:g} <= low <= high, got {v!r}")
    return lo, hi


def splat(img: np.ndarray, ys: np.ndarray, xs: np.ndarray, w: np.ndarray) -> None:
    """Add point weights to ``img`` with bilinear interpolation (points may fall outside)."""
    h, wd = img.shape
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = ys - y0, xs - x0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < wd)
            np.add.at(img, (yy[ok], xx[ok]), (w * wy * wx)[ok])


def _nuclei(
    shape: tuple[int, int],
    n: int,
    size: tuple[float, float],
    brightness: tuple[float, float],
    texture: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """``n`` soft-edged ellipses (semi-axes ``size`` x the shorter side) with a smooth
    multiplicative texture ``1 + texture * N(0,1) blurred by 2 pixels`` (clipped at 0)."""
    from scipy import ndimage

    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    img = np.zeros((H, W))
    side = min(H, W)
    for _ in range(n):
        cy, cx = rng.uniform((0, 0), (H, W))
        a, b = rng.uniform(*size, 2) * side
        t = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(t) + dy * np.sin(t)) / max(a, 0.5)
        v = (-dx * np.sin(t) + dy * np.cos(t)) / max(b, 0.5)
        img += rng.uniform(*brightness) / (1 + np.exp((np.hypot(u, v) - 1) * 8))
    grain = ndimage.gaussian_filter(rng.normal(size=(H, W)), 2.0)
    return np.clip(img * (1 + texture * grain), 0, None)


def render_structures(
    shape_hr: tuple[int, int],
    fine_factor: int,
    n_filaments: int | tuple[int, int],
    n_rings: int | tuple[int, int],
    n_beads: int | tuple[int, int],
    line_width: float,
    rng: np.random.Generator,
    *,
    n_nuclei: int | tuple[int, int] = 0,
    nucleus_size: tuple[float, float] = (0.04, 0.1),
    nucleus_brightness: tuple[float, float] = (0.3, 0.7),
    nucleus_texture: float = 2.0,
) -> np.ndarray:
    """Filaments, rings, beads (and optionally nuclei) on a ``shape_hr`` grid, float32, max 1.

    Counts are integers or inclusive ``(low, high)`` ranges drawn per call. Filaments are
    smooth random curves of length 0.5-1.5 field widths, rings have radius 3-8 % of the
    shorter side, beads are points; all three are blurred by a Gaussian of sigma
    ``line_width`` (output pixels) and scaled to peak ~1 before the sum. Nuclei are
    ellipses with semi-axes ``nucleus_size`` x the shorter side, brightness drawn from
    ``nucleus_brightness``, and a smooth texture of strength ``nucleus_texture``. The sum is
    divided by its maximum.
    """
    from scipy import ndimage

    try:
        H, W = (int(s) for s in shape_hr)
    except (TypeError, ValueError):
        raise InputError(f"shape_hr must be (height, width), got {shape_hr!r}") from None
    if H < 1 or W < 1:
        raise InputError(f"shape_hr must be positive, got {shape_hr!r}")
    if isinstance(fine_factor, bool) or not isinstance(fine_factor, (int, np.integer)):
        raise InputError(f"fine_factor must be an integer >= 1, got {fine_factor!r}")
    if fine_factor < 1:
        raise InputError(f"fine_factor must be an integer >= 1, got {fine_factor!r}")
    if not (math.isfinite(line_width) and line_width > 0):
        raise InputError(f"line_width must be > 0, got {line_width!r}")
    fil_lo, fil_hi = count_range(n_filaments, "n_filaments")
    ring_lo, ring_hi = count_range(n_rings, "n_rings")
    bead_lo, bead_hi = count_range(n_beads, "n_beads")
    nuc_lo, nuc_hi = count_range(n_nuclei, "n_nuclei")
    size = _float_range(nucleus_size, "nucleus_size")
    brightness = _float_range(nucleus_brightness, "nucleus_brightness")
    if not (math.isfinite(nucleus_texture) and nucleus_texture >= 0):
        raise InputError(f"nucleus_texture must be >= 0, got {nucleus_texture!r}")

    ff = int(fine_factor)
    fh, fw = H * ff, W * ff
    lines = np.zeros((fh, fw))
    beads = np.zeros((fh, fw))
    step = 0.5  # fine pixels between points along a curve
    n_fil = rng.integers(fil_lo, fil_hi + 1)
    for _ in range(n_fil):
        # a smooth random curve: heading follows a random walk, length ~ 0.5-1.5 field
        length = rng.uniform(0.5, 1.5) * max(fh, fw)
        n = max(int(length / step), 2)
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.02, n))
        heading = ndimage.gaussian_filter1d(heading, 20, mode="nearest")
        start = rng.uniform((0, 0), (fh, fw))
        ys = start[0] + np.cumsum(np.sin(heading)) * step
        xs = start[1] + np.cumsum(np.cos(heading)) * step
        splat(lines, ys, xs, np.full(n, rng.uniform(0.5, 1.0) * step))
    n_ring = rng.integers(ring_lo, ring_hi + 1)
    for _ in range(n_ring):
        r = rng.uniform(0.03, 0.08) * min(fh, fw)
        cy, cx = rng.uniform((r, r), (fh - r, fw - r))
        n = max(int(2 * np.pi * r / step), 8)
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        splat(
            lines, cy + r * np.sin(t), cx + r * np.cos(t), np.full(n, rng.uniform(0.5, 1.0) * step)
        )
    n_bead = rng.integers(bead_lo, bead_hi + 1)
    if n_bead:
        pos = rng.uniform((0, 0), (fh - 1, fw - 1), size=(n_bead, 2))
        splat(beads, pos[:, 0], pos[:, 1], rng.uniform(0.5, 1.0, n_bead))
    sigma_fine = line_width * ff
    lines = ndimage.gaussian_filter(lines, sigma_fine)
    # a line of weight `step` per `step` pixels has unit mass per unit length: scale its
    # blurred profile to peak ~1, and beads (single points) to the same peak
    lines *= np.sqrt(2 * np.pi) * sigma_fine
    beads = ndimage.gaussian_filter(beads, sigma_fine) * (2 * np.pi * sigma_fine**2)
    fine = lines + beads
    hr = fine.reshape(H, ff, W, ff).mean(axis=(1, 3))
    if nuc_hi > 0:  # draws nothing unless nuclei are asked for (see the module docstring)
        n_nuc = int(rng.integers(nuc_lo, nuc_hi + 1))
        if n_nuc:
            hr = hr + _nuclei((H, W), n_nuc, size, brightness, nucleus_texture, rng)
    peak = hr.max()
    return (hr / peak if peak > 0 else hr).astype(np.float32)
