"""Affine intensity normalisation of images and stacks, with its inverse (NumPy/PyTorch).

Every raw SIM stack ``(A*P, H, W)`` (one time point) is mapped to float32 by an affine rule
fitted on that stack, :class:`Normalization`::

    x' = (x - offset) / scale          (apply)
    x  = x' * scale + offset           (invert)
    s  = s' * scale                    (invert_std: a standard deviation maps by scale only)

with ``mode="percentile"`` (default): ``offset`` = the ``low_pct`` (0.1) percentile and
``scale`` = ``high_pct`` (99.9) percentile - ``offset`` (numpy's linear interpolation);
``mode="minmax"``: ``offset = min``, ``scale = max - min``; ``mode="none"``: ``offset = 0``,
``scale = 1``. The rule and its fitted numbers serialise to JSON (:meth:`Normalization.to_dict`)
so results and checkpoints can map outputs back to the input's units. A stack of a single
value cannot be normalised (:class:`~napari_sim_uq.core.errors.InputError`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from napari_sim_uq.core.errors import InputError

__all__ = ["NORM_MODES", "Normalization"]

NORM_MODES = ("percentile", "minmax", "none")


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _finite_float(v: Any, name: str) -> float:
    try:
        out = float(v)
    except (TypeError, ValueError):
        raise InputError(f"normalisation {name} must be a number, got {v!r}") from None
    if not math.isfinite(out):
        raise InputError(f"normalisation {name} must be finite, got {v!r}")
    return out


def _check_numeric(a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype.kind not in "uif":
        raise InputError(f"{what}: unsupported data type {a.dtype} (need real numbers)")
    if a.size == 0:
        raise InputError(f"{what}: is empty (shape {a.shape})")
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        if not finite.all():
            n_nan = int(np.isnan(a).sum())
            n_inf = int(a.size - finite.sum()) - n_nan
            raise InputError(
                f"{what}: contains {n_nan} NaN and {n_inf} infinite values; replace them "
                "(e.g. with the background level) first"
            )
    return a


@dataclass(frozen=True)
class Normalization:
    """Affine intensity normalisation ``x' = (x - offset) / scale`` (see module docstring).

    ``Normalization(mode).fit(stack)`` returns a copy with ``offset`` and ``scale`` fitted
    on ``stack``; the defaults (``offset=0, scale=1``) are the identity.
    """

    mode: str = "percentile"
    low_pct: float = 0.1
    high_pct: float = 99.9
    offset: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in NORM_MODES:
            raise InputError(f"normalisation mode must be one of {NORM_MODES}, got {self.mode!r}")
        lo = _finite_float(self.low_pct, "low_pct")
        hi = _finite_float(self.high_pct, "high_pct")
        if not 0.0 <= lo < hi <= 100.0:
            raise InputError(
                f"normalisation percentiles must satisfy 0 <= low_pct < high_pct <= 100, "
                f"got low_pct={self.low_pct!r}, high_pct={self.high_pct!r}"
            )
        offset = _finite_float(self.offset, "offset")
        scale = _finite_float(self.scale, "scale")
        if scale <= 0:
            raise InputError(f"normalisation scale must be > 0, got {self.scale!r}")
        for name, v in (("low_pct", lo), ("high_pct", hi), ("offset", offset), ("scale", scale)):
            object.__setattr__(self, name, v)

    @classmethod
    def with_percentiles(cls, mode: str, percentiles: Any) -> Normalization:
        """An unfitted rule of ``mode`` with ``percentiles = (low, high)``."""
        try:
            low, high = percentiles
        except (TypeError, ValueError):
            raise InputError(
                f"norm_percentiles must be a (low, high) pair, got {percentiles!r}"
            ) from None
        return cls(mode, low, high)

    # -- fitting
    def fit(self, stack: Any, what: str = "stack") -> Normalization:
        """A copy with ``offset``/``scale`` fitted on ``stack`` (any real dtype).

        ``what`` names the data (a file) in error messages.
        """
        a = _check_numeric(_as_numpy(stack), what)
        if self.mode == "none":
            return replace(self, offset=0.0, scale=1.0)
        a = a.astype(np.float64, copy=False)
        vmin, vmax = float(a.min()), float(a.max())
        if vmax <= vmin:
            raise InputError(
                f"{what}: stack is constant (every value is {vmin:g}); it cannot be "
                "normalised and holds no structure to learn or reconstruct"
            )
        if self.mode == "minmax":
            return replace(self, offset=vmin, scale=vmax - vmin)
        lo, hi = (float(v) for v in np.percentile(a, [self.low_pct, self.high_pct]))
        if hi <= lo:
            raise InputError(
                f"{what}: stack is nearly constant: its {self.low_pct:g} and "
                f"{self.high_pct:g} percentiles are both {lo:g} (values range from {vmin:g} "
                f"to {vmax:g}); use normalisation mode 'minmax' or a wider percentile range"
            )
        return replace(self, offset=lo, scale=hi - lo)

    # -- mapping
    @staticmethod
    def _affine(x: Any, mul: float, add: float) -> Any:
        """``x * mul + add``: float32 result (float64 input stays float64)."""
        if isinstance(x, torch.Tensor):
            t = x if x.is_floating_point() else x.to(torch.float32)
            return t * mul + add
        if isinstance(x, (int, float, np.number)) and np.ndim(x) == 0:
            return float(x) * mul + add
        a = np.asarray(x)
        out_dtype = np.float64 if a.dtype == np.float64 else np.float32
        return (a.astype(np.float64) * mul + add).astype(out_dtype)

    def apply(self, x: Any) -> Any:
        """``(x - offset) / scale`` for arrays, tensors and numbers."""
        return self._affine(x, 1.0 / self.scale, -self.offset / self.scale)

    def invert(self, x: Any) -> Any:
        """``x * scale + offset``: back to the input's units."""
        return self._affine(x, self.scale, self.offset)

    def apply_std(self, s: Any) -> Any:
        """A standard deviation in input units -> normalised units (``s / scale``)."""
        return self._affine(s, 1.0 / self.scale, 0.0)

    def invert_std(self, s: Any) -> Any:
        """A standard deviation in normalised units -> input units (``s * scale``)."""
        return self._affine(s, self.scale, 0.0)

    def invert_var(self, v: Any) -> Any:
        """A variance in normalised units -> input units (``v * scale**2``)."""
        return self._affine(v, self.scale**2, 0.0)

    # -- serialisation
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        if not isinstance(d, dict):
            raise InputError(f"a normalisation must be stored as a dict, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"unknown normalisation entries: {sorted(unknown)}")
        return cls(**d)
