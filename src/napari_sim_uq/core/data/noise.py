"""Noise draws that every task's synthetic data share (NumPy, SciPy).

:func:`poisson_by_inversion` draws Poisson counts that are a monotone step function of the
rate, so that rates differing only in their last bits (FFTs on another machine, another
thread count) give the same counts almost everywhere. NumPy's ``rng.poisson`` consumes a
rate-dependent number of uniforms, so a last-bit change of a rate changes the draw (and
every later draw of the stream); with inversion, a count changes only where the rate
crosses a CDF step, with probability ~ ``pmf * |d rate|`` per pixel (~1e-13 per pixel for
float64 rounding).
"""

from __future__ import annotations

import numpy as np

from napari_sim_uq.core.errors import InputError

__all__ = ["poisson_by_inversion"]


def poisson_by_inversion(rate: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson draws with mean ``rate`` (float64 array, finite, >= 0) by inversion of the CDF.

    One uniform number ``u`` per pixel, drawn independently of ``rate``, is mapped to the
    smallest ``k`` with ``P(X <= k) >= u`` (the Poisson quantile, as
    ``scipy.stats.poisson.ppf``), so the draw is a monotone step function of the rate: a rate
    that differs in its last bits (another machine's FFT) gives the same count except with
    probability ~ ``pmf * |d rate|`` (see the module docstring). NumPy's ``rng.poisson``
    consumes a rate-dependent number of uniforms, so it has no such property.

    The quantile is found from a Cornish-Fisher start ``rate + sqrt(rate) z + (z^2 - 1)/6``
    (``z`` the normal quantile of ``u``), corrected step by step with the CDF
    (``scipy.special.pdtr``); two passes suffice for almost every pixel. The generator's
    cost is measured by ``bench/generate.py`` (docs/benchmarks.md).
    """
    from scipy import special

    rate = np.asarray(rate, dtype=np.float64)
    if not np.isfinite(rate).all() or (rate < 0).any():
        raise InputError("Poisson rates must be finite and >= 0")
    # rng.random() is a multiple of 2^-53 in [0, 1): shift by half a step into (0, 1), where
    # the quantile is finite
    u = rng.random(rate.shape) + 2.0**-54
    z = special.ndtri(u)
    k = np.maximum(np.floor(rate + np.sqrt(rate) * z + (z * z - 1.0) / 6.0), 0.0)
    while True:  # terminates: k moves monotonically towards the quantile
        up = special.pdtr(k, rate) < u
        k[up] += 1.0
        down = ~up & (k > 0)
        down[down] = special.pdtr(k[down] - 1.0, rate[down]) >= u[down]
        k[down] -= 1.0
        if not (up.any() or down.any()):
            return k
