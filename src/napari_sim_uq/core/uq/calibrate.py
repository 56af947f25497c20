"""Conditional calibration tables and recalibration of predicted standard deviations
(DESIGN.md 5). Task-free, NumPy only.

Residual ``r = x - mu`` (reference minus prediction), predicted std ``sigma`` (> 0), and for
the tables the reference (clean) intensity of each pixel.

- :func:`conditional_calibration`: pooled metrics and the same metrics per decile of
  ``sigma`` and per intensity class. A single pooled ZMS of 1 can hide a std that is twice
  too wide on the background and too narrow on the structures; the tables show it.
- :func:`fit_sigma_scale`: the NLL-optimal single scale ``s = sqrt(mean(r^2 / sigma^2))``.
- :class:`SigmaMap`: a monotone map ``sigma -> c(sigma)`` fitted per quantile of ``sigma``
  (below), which fixes calibration conditional on ``sigma`` where one scale cannot.
- :class:`ClassSigmaMap`: one :class:`SigmaMap` per class of an observable covariate (e.g.
  the predicted intensity), for errors that differ at equal ``sigma`` between, say, the
  background and the structures.

Conventions (used by every table here):

- ``zms = mean(r^2 / sigma^2)`` (ideal 1; > 1: the std is too small);
- ``cov95``: fraction of pixels with ``|r| <= 1.96 sigma``, the central 95 % Gaussian
  interval (ideal 0.95) (:func:`~napari_sim_uq.core.uq.metrics.coverage`; note that
  :func:`~napari_sim_uq.core.uq.metrics.calibration_report` names ``cov95`` the +-2 sigma
  interval, ideal 0.9545);
- ``spearman``: Spearman's rho between ``sigma`` and ``|r|``;
- ``uce``: uncertainty calibration error over 20 equal-count bins of predicted variance
  (variance units);
- std deciles: equal-count bins of ``sigma`` by rank (ties broken by position), ``lo`` /
  ``hi`` the smallest / largest ``sigma`` in the bin;
- intensity classes: ``background`` (intensity <= the 1/3 quantile), ``mid``, ``bright``
  (intensity > the 2/3 quantile), quantiles of the reference intensity (``np.quantile``,
  linear). A pixel's class depends only on its intensity, so with many equal values (an
  exactly dark background) the classes hold unequal counts; an empty class has ``n = 0``
  and ``None`` metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sim_uq.core.errors import InputError

__all__ = [
    "CALIBRATION_METHODS",
    "INTENSITY_CLASSES",
    "RELATIVE_INTENSITY_CLASSES",
    "ClassSigmaMap",
    "SigmaMap",
    "conditional_calibration",
    "fit_sigma_map",
    "fit_sigma_scale",
    "relative_intensity",
    "sigma_map_from_dict",
    "sigma_map_ratio",
    "stored_sigma_map",
]

#: Recalibration methods of the 2D tasks' calibrate commands: one sigma scale; the scale
#: and a monotone :class:`SigmaMap`; the scale and one map per class of the predicted
#: intensity (:class:`ClassSigmaMap`).
CALIBRATION_METHODS = ("scale", "map", "map-intensity")

#: Names of the intensity tertiles, dark to bright.
INTENSITY_CLASSES = ("background", "mid", "bright")

#: Quantile of an image that defines its bright level (:func:`relative_intensity`).
BRIGHT_QUANTILE = 0.999
#: Fixed classes of the relative intensity (:func:`relative_intensity`) for sparse
#: fluorescence images (``intensity_classes`` of :func:`conditional_calibration`):
#: ``background`` below 1 % of the bright level, ``structure`` the rest, which splits into
#: ``dim`` (1-10 %), ``mid`` (10-30 %) and ``bright`` (above 30 %).
RELATIVE_INTENSITY_CLASSES = {
    "background": (-math.inf, 0.01),
    "structure": (0.01, math.inf),
    "dim": (0.01, 0.1),
    "mid": (0.1, 0.3),
    "bright": (0.3, math.inf),
}


def relative_intensity(image: Any) -> np.ndarray:
    """``image / q``, ``q`` the :data:`BRIGHT_QUANTILE` quantile of the image (float64;
    an image with ``q <= 0`` gives zeros)."""
    a = np.asarray(image, dtype=np.float64)
    q = float(np.quantile(a, BRIGHT_QUANTILE)) if a.size else 0.0
    return a / q if q > 0 and math.isfinite(q) else np.zeros_like(a)


#: Equal-count bins of predicted variance for the UCE in the tables.
UCE_BINS = 20

_Z95 = 1.959963984540054  # Phi^-1(0.975)


def _flat(a: Any, name: str, fn: str) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{fn}: {name} must hold real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False).ravel()


def _inputs(fn: str, mask: Any = None, **arrays: Any) -> list[np.ndarray]:
    """Flattened float64 copies of ``arrays`` (same shape, finite; ``sigma`` > 0)."""
    shapes = {k: np.shape(v) for k, v in arrays.items()}
    if len(set(shapes.values())) != 1:
        shown = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise InputError(f"{fn}: the arrays must have the same shape, got {shown}")
    out = [_flat(v, k, fn) for k, v in arrays.items()]
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != next(iter(shapes.values())):
            raise InputError(f"{fn}: mask must have the shape of the data, got {m.shape}")
        m = m.astype(bool).ravel()
        out = [a[m] for a in out]
    if out[0].size == 0:
        raise InputError(f"{fn}: no pixels to use (empty input or empty mask)")
    for (k, _), a in zip(arrays.items(), out, strict=True):
        if not np.all(np.isfinite(a)):
            raise InputError(f"{fn}: {k} contains NaN or infinite values")
    if "sigma" in arrays:
        s = out[list(arrays).index("sigma")]
        if np.any(s <= 0):
            raise InputError(
                f"{fn}: sigma must be > 0 everywhere ({int(np.count_nonzero(s <= 0))} "
                "values are not)"
            )
    return out


def _cell(r: np.ndarray, s: np.ndarray) -> dict:
    """``n, zms, cov95, mean_sigma, rmse`` of one group of pixels (``None`` when empty)."""
    n = int(r.size)
    if n == 0:
        return {"n": 0, "zms": None, "cov95": None, "mean_sigma": None, "rmse": None}
    z = r / s
    return {
        "n": n,
        "zms": float(np.mean(z * z)),
        "cov95": float(np.mean(np.abs(z) <= _Z95)),
        "mean_sigma": float(np.mean(s)),
        "rmse": float(np.sqrt(np.mean(r * r))),
    }


def _equal_count_bins(v: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index (0..n_bins-1) of each value: equal counts by rank (stable ties)."""
    order = np.argsort(v, kind="stable")
    idx = np.empty(v.size, dtype=np.intp)
    idx[order] = (np.arange(v.size, dtype=np.int64) * n_bins) // v.size
    return idx


def _n_bins(n_bins: Any, name: str, fn: str, n: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise InputError(f"{fn}: {name} must be an integer >= 1, got {n_bins!r}")
    if n < n_bins:
        raise InputError(f"{fn}: {name}={n_bins} needs at least as many pixels, got {n}")
    return int(n_bins)


def conditional_calibration(
    r: Any,
    sigma: Any,
    intensity: Any,
    n_deciles: int = 10,
    *,
    mask: Any = None,
    intensity_classes: dict[str, tuple[float, float]] | None = None,
) -> dict:
    """Calibration of ``sigma`` for the residuals ``r``: pooled, per std decile and per
    intensity tertile of ``intensity`` (the reference / clean image; conventions in the
    module docstring). All arrays have one shape; ``mask`` selects pixels.

    ``intensity_classes``: fixed classes instead of the tertiles, ``{name: (lo, hi)}``
    with a pixel in a class when ``lo < intensity <= hi`` (``-inf`` / ``inf`` for open
    ends; classes may overlap, e.g. ``"structure"`` as the union of brighter classes);
    ``intensity_thresholds`` is then ``None``.

    Returns ``{"pooled": {n, zms, cov95, spearman, uce, mean_sigma, rmse},
    "by_std_decile": [{decile, lo, hi, n, zms, cov95, mean_sigma, rmse}, ...],
    "by_intensity": {"background" | "mid" | "bright": {lo, hi, n, zms, cov95, mean_sigma,
    rmse}}, "intensity_thresholds": [t1, t2]}`` (plain Python numbers; ``lo`` / ``hi`` of
    an intensity class: its smallest / largest intensity).
    """
    from napari_sim_uq.core.uq.metrics import spearman, uce

    fn = "conditional_calibration"
    rr, ss, ii = _inputs(fn, mask, r=r, sigma=sigma, intensity=intensity)
    nd = _n_bins(n_deciles, "n_deciles", fn, rr.size)
    pooled = _cell(rr, ss)
    pooled["spearman"] = spearman(ss, np.abs(rr))
    if math.isnan(pooled["spearman"]):
        pooled["spearman"] = None
    pooled["uce"] = uce(rr, ss, n_bins=min(UCE_BINS, rr.size))
    idx = _equal_count_bins(ss, nd)
    deciles = []
    for k in range(nd):
        sel = idx == k
        row = {"decile": k + 1, "lo": float(ss[sel].min()), "hi": float(ss[sel].max())}
        row.update(_cell(rr[sel], ss[sel]))
        deciles.append(row)
    if intensity_classes is None:
        t1, t2 = (float(t) for t in np.quantile(ii, [1.0 / 3.0, 2.0 / 3.0]))
        classes = {
            "background": ii <= t1,
            "mid": (ii > t1) & (ii <= t2),
            "bright": ii > t2,
        }
        thresholds: list[float] | None = [t1, t2]
    else:
        classes = {}
        for name, bounds in intensity_classes.items():
            try:
                lo, hi = (float(b) for b in bounds)
            except (TypeError, ValueError):
                raise InputError(
                    f"{fn}: intensity class {name!r} must be a (lo, hi) pair, got {bounds!r}"
                ) from None
            if not lo < hi:
                raise InputError(f"{fn}: intensity class {name!r} needs lo < hi, got {bounds!r}")
            classes[str(name)] = (ii > lo) & (ii <= hi)
        thresholds = None
    by_int = {}
    for name in classes:
        sel = classes[name]
        row = {
            "lo": float(ii[sel].min()) if sel.any() else None,
            "hi": float(ii[sel].max()) if sel.any() else None,
        }
        row.update(_cell(rr[sel], ss[sel]))
        by_int[name] = row
    return {
        "pooled": pooled,
        "by_std_decile": deciles,
        "by_intensity": by_int,
        "intensity_thresholds": thresholds,
    }


def fit_sigma_scale(r: Any, sigma: Any, *, mask: Any = None) -> float:
    """The NLL-optimal single scale ``s = sqrt(mean(r^2 / sigma^2))`` (closed form; the
    recalibrated std is ``s * sigma``). :class:`InputError` if it is not finite and > 0."""
    rr, ss = _inputs("fit_sigma_scale", mask, r=r, sigma=sigma)
    s = math.sqrt(float(np.mean((rr / ss) ** 2)))
    if not (math.isfinite(s) and s > 0):
        raise InputError(
            f"fit_sigma_scale: the fitted scale is {s!r} (all residuals are 0, or the sigmas "
            "are degenerate)"
        )
    return s


def _pav(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted isotonic (non-decreasing) regression of ``y`` (pool adjacent violators)."""
    vals: list[float] = []
    wts: list[float] = []
    lens: list[int] = []
    for yi, wi in zip(y.tolist(), w.tolist(), strict=True):
        vals.append(yi)
        wts.append(wi)
        lens.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            wsum = wts[-2] + wts[-1]
            v = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / wsum
            n = lens[-2] + lens[-1]
            del vals[-1], wts[-1], lens[-1]
            vals[-1], wts[-1], lens[-1] = v, wsum, n
    return np.repeat(np.asarray(vals), lens)


@dataclass(frozen=True)
class SigmaMap:
    """A monotone recalibration map of predicted stds, ``sigma -> c(sigma)``.

    Fitted by :meth:`fit` on a calibration split: the pixels are cut into ``n_bins``
    equal-count bins of predicted ``sigma``; bin ``k`` has the representative std
    ``sigma_k`` (geometric mean of its sigmas) and the scale ``s_k = sqrt(mean(r^2 /
    sigma^2))`` over its pixels, i.e. the calibrated std ``c_k = s_k sigma_k``. The
    calibrated variances ``c_k^2`` are made non-decreasing in ``sigma_k`` by weighted
    isotonic regression (pool adjacent violators, weights = pixel counts), so a larger
    predicted std never gets a smaller calibrated one (the ranking of pixels by uncertainty
    is kept). Applied by linear interpolation of ``log c`` in ``log sigma`` between the
    knots; outside them the end knots' ratio ``c_k / sigma_k`` is kept (``c`` stays
    increasing). JSON round trip: :meth:`to_dict` / :meth:`from_dict`.
    """

    log_sigma: tuple[float, ...]  # knots: log sigma_k, strictly increasing
    log_calibrated: tuple[float, ...]  # log c_k, non-decreasing
    n_bins: int = 10
    n: int = 0  # pixels it was fitted on

    def __post_init__(self) -> None:
        ls = np.asarray(self.log_sigma, dtype=np.float64)
        lc = np.asarray(self.log_calibrated, dtype=np.float64)
        if ls.ndim != 1 or ls.size == 0 or ls.shape != lc.shape:
            raise InputError(
                "a sigma map needs equally long, non-empty lists log_sigma and log_calibrated"
            )
        if not (np.all(np.isfinite(ls)) and np.all(np.isfinite(lc))):
            raise InputError("a sigma map's knots must be finite numbers")
        if np.any(np.diff(ls) <= 0) or np.any(np.diff(lc) < -1e-12):
            raise InputError(
                "a sigma map must have increasing log_sigma and non-decreasing log_calibrated"
            )
        object.__setattr__(self, "log_sigma", tuple(float(v) for v in ls))
        object.__setattr__(self, "log_calibrated", tuple(float(v) for v in lc))

    # -- fitting
    @classmethod
    def fit(cls, r: Any, sigma: Any, n_bins: int = 10, *, mask: Any = None) -> SigmaMap:
        """Fit the map on residuals ``r`` and predicted stds ``sigma`` (class docstring)."""
        fn = "SigmaMap.fit"
        rr, ss = _inputs(fn, mask, r=r, sigma=sigma)
        nb = _n_bins(n_bins, "n_bins", fn, rr.size)
        idx = _equal_count_bins(ss, nb)
        count = np.bincount(idx, minlength=nb).astype(np.float64)
        log_s = np.log(ss)
        mean_log_s = np.bincount(idx, weights=log_s, minlength=nb) / count
        zms = np.bincount(idx, weights=(rr / ss) ** 2, minlength=nb) / count
        # tied sigmas can give bins with equal representatives: merge them (one knot each)
        knots: list[list[float]] = []  # [log sigma, weight, sum w*zms]
        for k in range(nb):
            if knots and mean_log_s[k] <= knots[-1][0] + 1e-12:
                w0, w1 = knots[-1][1], count[k]
                knots[-1] = [
                    (knots[-1][0] * w0 + mean_log_s[k] * w1) / (w0 + w1),
                    w0 + w1,
                    knots[-1][2] + w1 * zms[k],
                ]
            else:
                knots.append([float(mean_log_s[k]), float(count[k]), float(count[k] * zms[k])])
        ks = np.asarray(knots)
        ls, w, z = ks[:, 0], ks[:, 1], ks[:, 2] / ks[:, 1]
        cal_var = z * np.exp(2.0 * ls)  # c_k^2 = s_k^2 sigma_k^2
        if not np.all(cal_var > 0):
            raise InputError(
                f"{fn}: a bin of predicted sigma has all residuals 0; cannot fit a scale there"
            )
        cal_var = _pav(cal_var, w)
        return cls(tuple(ls), tuple(0.5 * np.log(cal_var)), n_bins=nb, n=int(rr.size))

    # -- applying
    def __call__(self, sigma: Any) -> np.ndarray:
        """The calibrated std ``c(sigma)`` (float64, shape of ``sigma``)."""
        s = np.asarray(sigma, dtype=np.float64)
        if np.any(~np.isfinite(s)) or np.any(s <= 0):
            raise InputError("SigmaMap: sigma must be finite and > 0")
        ls = np.asarray(self.log_sigma)
        lc = np.asarray(self.log_calibrated)
        x = np.log(s)
        # inside: log c interpolated (flat where the isotonic fit pooled bins); outside:
        # the end knots' ratio c_k / sigma_k
        y = np.interp(x, ls, lc)
        y = np.where(x < ls[0], x + (lc[0] - ls[0]), y)
        y = np.where(x > ls[-1], x + (lc[-1] - ls[-1]), y)
        return np.exp(y)

    def ratio(self, sigma: Any) -> np.ndarray:
        """``c(sigma) / sigma`` (the per-pixel factor; multiply any std part by it)."""
        s = np.asarray(sigma, dtype=np.float64)
        return self(s) / s

    # -- serialisation
    def to_dict(self) -> dict:
        """Plain JSON (lists of floats), e.g. for a checkpoint's ``extra``."""
        return {
            "kind": "per-quantile isotonic sigma map",
            "log_sigma": list(self.log_sigma),
            "log_calibrated": list(self.log_calibrated),
            "n_bins": int(self.n_bins),
            "n": int(self.n),
        }

    @classmethod
    def from_dict(cls, d: Any) -> SigmaMap:
        """Inverse of :meth:`to_dict`; :class:`InputError` for anything else."""
        if not isinstance(d, dict):
            raise InputError(f"a sigma map must be stored as a dict, got {type(d).__name__}")
        unknown = sorted(set(d) - {"kind", "log_sigma", "log_calibrated", "n_bins", "n"})
        if unknown:
            raise InputError(f"unknown sigma map entries: {unknown}")
        try:
            return cls(
                tuple(float(v) for v in d["log_sigma"]),
                tuple(float(v) for v in d["log_calibrated"]),
                n_bins=int(d.get("n_bins", len(d["log_sigma"]))),
                n=int(d.get("n", 0)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"invalid sigma map: {err}") from None


class ClassSigmaMap:
    """One :class:`SigmaMap` per class of a covariate known at prediction time (for the 2D
    task: the predicted intensity ``mu``).

    A sigma map alone cannot tell apart pixels with the same predicted ``sigma`` whose
    errors differ (a flat background reconstructed almost exactly, and a dim structure the
    model half sees). Conditioning on an observable covariate can: :meth:`fit` cuts the
    pixels into ``n_classes`` equal-count classes of ``covariate`` (thresholds: its
    quantiles ``k / n_classes`` on the calibration split; a pixel with ``covariate <= t_k``
    falls below threshold ``k``) and fits a :class:`SigmaMap` in each. Each class's map is
    monotone in ``sigma``; across a threshold the calibrated std may jump.
    """

    kind = "per-class sigma map"

    def __init__(self, edges: Any, maps: Any) -> None:
        e = np.asarray(edges, dtype=np.float64).ravel()
        maps = list(maps)
        if len(maps) != e.size + 1 or not all(isinstance(m, SigmaMap) for m in maps):
            raise InputError("a per-class sigma map needs len(edges) + 1 SigmaMaps")
        if not np.all(np.isfinite(e)) or np.any(np.diff(e) < 0):
            raise InputError("a per-class sigma map needs finite, non-decreasing edges")
        self.edges = tuple(float(v) for v in e)
        self.maps = tuple(maps)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ClassSigmaMap)
            and self.edges == other.edges
            and self.maps == other.maps
        )

    def classes(self, covariate: Any) -> np.ndarray:
        """The class index of each value of ``covariate``."""
        return np.searchsorted(np.asarray(self.edges), np.asarray(covariate), side="left")

    @classmethod
    def fit(
        cls,
        r: Any,
        sigma: Any,
        covariate: Any,
        n_classes: int = 3,
        n_bins: int = 10,
        *,
        mask: Any = None,
        edges: Any = None,
    ) -> ClassSigmaMap:
        """Fit (class docstring); ``covariate`` has the shape of ``r``. ``edges``: fixed,
        increasing class thresholds of the covariate instead of its quantiles
        (``n_classes`` is then ``len(edges) + 1``)."""
        fn = "ClassSigmaMap.fit"
        rr, ss, cc = _inputs(fn, mask, r=r, sigma=sigma, covariate=covariate)
        if edges is None:
            nc = _n_bins(n_classes, "n_classes", fn, rr.size)
            edges = np.quantile(cc, np.arange(1, nc) / nc)
        else:
            edges = np.asarray(edges, dtype=np.float64).ravel()
            if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
                raise InputError(f"{fn}: edges must be finite and increasing, got {edges}")
            nc = edges.size + 1
        idx = np.searchsorted(edges, cc, side="left")
        maps = []
        for k in range(nc):
            sel = idx == k
            if np.count_nonzero(sel) < n_bins:
                raise InputError(
                    f"{fn}: covariate class {k + 1} of {nc} holds {int(sel.sum())} pixels, "
                    f"fewer than n_bins={n_bins} (the covariate has too few distinct values)"
                )
            maps.append(SigmaMap.fit(rr[sel], ss[sel], n_bins))
        return cls(edges, maps)

    def __call__(self, sigma: Any, covariate: Any) -> np.ndarray:
        """The calibrated std (float64, shape of ``sigma``)."""
        s = np.asarray(sigma, dtype=np.float64)
        c = np.asarray(covariate)
        if c.shape != s.shape:
            raise InputError(
                f"ClassSigmaMap: sigma and covariate must have one shape, got {s.shape} "
                f"and {c.shape}"
            )
        idx = self.classes(c)
        out = np.empty_like(s)
        for k, m in enumerate(self.maps):
            sel = idx == k
            if sel.any():
                out[sel] = m(s[sel])
        return out

    def ratio(self, sigma: Any, covariate: Any) -> np.ndarray:
        """``c(sigma, covariate) / sigma``."""
        s = np.asarray(sigma, dtype=np.float64)
        return self(s, covariate) / s

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "edges": list(self.edges),
            "maps": [m.to_dict() for m in self.maps],
        }

    @classmethod
    def from_dict(cls, d: Any) -> ClassSigmaMap:
        if not isinstance(d, dict) or d.get("kind") != cls.kind:
            raise InputError(f"not a stored per-class sigma map: {d!r:.80}")
        unknown = sorted(set(d) - {"kind", "edges", "maps"})
        if unknown:
            raise InputError(f"unknown per-class sigma map entries: {unknown}")
        try:
            return cls(d["edges"], [SigmaMap.from_dict(dict(m)) for m in d["maps"]])
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"invalid per-class sigma map: {err}") from None


def sigma_map_from_dict(d: Any) -> SigmaMap | ClassSigmaMap:
    """A stored :class:`SigmaMap` or :class:`ClassSigmaMap` (by its ``"kind"``)."""
    if isinstance(d, dict) and d.get("kind") == ClassSigmaMap.kind:
        return ClassSigmaMap.from_dict(d)
    return SigmaMap.from_dict(d)


def fit_sigma_map(
    method: str,
    r: Any,
    sigma: Any,
    covariate: Any = None,
    *,
    n_bins: int = 10,
    n_classes: int = 5,
) -> SigmaMap | ClassSigmaMap | None:
    """The map of :data:`CALIBRATION_METHODS` ``method`` fitted on residuals ``r`` and (already
    scaled) stds ``sigma``: ``None`` for ``"scale"``, a :class:`SigmaMap` for ``"map"``, a
    :class:`ClassSigmaMap` over ``n_classes`` equal-count classes of ``covariate`` (the
    predicted intensity) for ``"map-intensity"``."""
    if method not in CALIBRATION_METHODS:
        raise InputError(f"method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    if method == "scale":
        return None
    if method == "map":
        return SigmaMap.fit(r, sigma, n_bins=n_bins)
    if covariate is None:
        raise InputError("fit_sigma_map: method 'map-intensity' needs the predicted intensity")
    return ClassSigmaMap.fit(r, sigma, covariate, n_classes=n_classes, n_bins=n_bins)


def sigma_map_ratio(smap: SigmaMap | ClassSigmaMap, sigma: Any, covariate: Any) -> np.ndarray:
    """The per-pixel factor ``c(sigma) / sigma`` of a stored map (float32, the shape of
    ``sigma``); ``covariate`` (the predicted intensity, same units as at fitting) is used
    by a per-class map only. Non-finite ``sigma`` gives NaN."""
    s = np.asarray(sigma, dtype=np.float64)
    ok = np.isfinite(s)
    out = np.full(s.shape, np.nan)
    sd = np.maximum(s[ok], 1e-30)
    if isinstance(smap, ClassSigmaMap):
        out[ok] = smap.ratio(sd, np.asarray(covariate, dtype=np.float64)[ok])
    else:
        out[ok] = smap.ratio(sd)
    return out.astype(np.float32)


def stored_sigma_map(ck: Any, quantity: str = "mean") -> SigmaMap | ClassSigmaMap | None:
    """The checkpoint's sigma map of ``quantity`` (``extra["sigma_map"][quantity]``, written
    by a calibrate command with a map method), or ``None``."""
    stored = (getattr(ck, "extra", None) or {}).get("sigma_map")
    if not stored:
        return None
    if not isinstance(stored, dict):
        raise InputError(f"checkpoint '{getattr(ck, 'path', '?')}': invalid stored sigma map")
    d = stored.get(quantity)
    return None if d is None else sigma_map_from_dict(dict(d))
