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

__all__ = ["estimate_noise_sigma", "poisson_by_inversion"]


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


def estimate_noise_sigma(image: np.ndarray, observed: np.ndarray | None = None) -> float:
    """Std of additive white noise in a 2D image, robust to structures (NaN if too few
    pixels).

    The image is filtered with the 3x3 kernel ``[[1,-2,1],[-2,4,-2],[1,-2,1]]`` (the outer
    product of two second differences: it cancels locally linear intensity, and on white
    noise of std ``s`` its output has std ``6 s``, the kernel's L2 norm); ``s`` is the median
    absolute deviation of the outputs, ``1.4826 MAD / 6``, so edges and spots (a minority of
    the outputs) do not bias it as Immerkaer's mean absolute value does. Only outputs whose
    3 x 3 window lies in ``observed`` (default: every finite pixel) are used.
    """
    from scipy import ndimage

    img = np.asarray(image, dtype=np.float64)
    ok = np.isfinite(img) if observed is None else (np.asarray(observed, bool) & np.isfinite(img))
    kernel = np.outer([1.0, -2.0, 1.0], [1.0, -2.0, 1.0])
    filtered = ndimage.convolve(np.where(ok, img, 0.0), kernel, mode="constant")
    full = ndimage.binary_erosion(ok, np.ones((3, 3), bool), border_value=0)
    vals = filtered[full]
    if vals.size < 16:
        return float("nan")
    mad = np.median(np.abs(vals - np.median(vals)))
    return float(1.4826 * mad / 6.0)
