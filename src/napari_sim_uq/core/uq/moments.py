"""Running mean and variance over chunks of samples (NumPy or PyTorch, elementwise).

Used by every Monte Carlo prediction: samples are drawn in chunks, and each chunk's mean and
sum of squared deviations are merged into running statistics with the parallel Welford
update of Chan et al. (:func:`welford_merge`, :class:`RunningMoments`), so the memory does not
grow with the number of samples.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RunningMoments", "welford_merge"]


def welford_merge(
    count_a: int,
    mean_a: Any,
    m2_a: Any,
    count_b: int,
    mean_b: Any,
    m2_b: Any,
) -> tuple[int, Any, Any]:
    """Merge the statistics of two groups of samples (parallel Welford, Chan et al. 1979).

    ``mean_*`` are the group means and ``m2_*`` the sums of squared deviations from them
    (``m2 = n var`` with ``ddof=0``); arrays or tensors, merged elementwise. An empty group
    (count 0) is ignored. ``m2_a``/``m2_b`` may be ``None`` to track means only. Returns
    ``(count, mean, m2)``::

        delta = mean_b - mean_a
        mean  = mean_a + delta n_b / n
        m2    = m2_a + m2_b + delta^2 n_a n_b / n
    """
    if count_b == 0:
        return count_a, mean_a, m2_a
    if count_a == 0:
        return count_b, mean_b, m2_b
    n = count_a + count_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / n)
    m2 = None
    if m2_a is not None and m2_b is not None:
        m2 = m2_a + m2_b + delta * delta * (count_a * count_b / n)
    return n, mean, m2


class RunningMoments:
    """Running mean (and variance) of samples that arrive in chunks along dimension 0.

    Each chunk's mean and sum of squared deviations are computed in one vectorised pass
    and merged with :func:`welford_merge`. ``track_var=False`` keeps the mean only.
    Works with torch tensors (on any device) and NumPy arrays.
    """

    def __init__(self, track_var: bool = True):
        self.track_var = track_var
        self.count = 0
        self.mean: Any = None
        self.m2: Any = None

    def update(self, chunk: Any) -> None:
        """Add the samples ``chunk[0], chunk[1], ...``."""
        n = int(chunk.shape[0])
        if n == 0:
            return
        mean_b = chunk.mean(0)
        m2_b = ((chunk - mean_b) ** 2).sum(0) if self.track_var else None
        self.count, self.mean, self.m2 = welford_merge(
            self.count, self.mean, self.m2, n, mean_b, m2_b
        )

    def variance(self, ddof: int = 0) -> Any:
        """``m2 / (count - ddof)`` (population variance for ``ddof=0``)."""
        if not self.track_var:
            raise ValueError("variance not tracked (track_var=False)")
        if self.count - ddof <= 0:
            raise ValueError(f"need more than {ddof} samples, have {self.count}")
        return self.m2 / (self.count - ddof)
