"""Exploring a mean/std pair: pairing, thresholds, histograms, calibration, sigma scaling.

The computations behind the "Uncertainty explorer" dock widget, written without napari
or Qt so that the console and scripts can use them and tests need no display.

- **Pairing.** :func:`find_std_layer` finds the std map of a mean layer by the
  reconstruction naming convention (``"<source> emitter"`` -> ``"<source> emitter std"``)
  or by the ``sim_uq`` metadata (``output`` ``"emitter"`` -> ``"emitter_std"``, same
  ``source``); :func:`find_gt_layer` finds a ground truth named like ``"<source> GT
  emitter"``. Layers are given as napari layers (anything with ``name`` and ``metadata``)
  or as a mapping ``name -> metadata``.
- **Thresholds.** :func:`unreliable_mask` flags (1) the pixels whose std, or relative std
  ``std / max(|mean|, eps)``, exceeds a threshold; non-finite values are flagged too.
  The default ``eps`` is :data:`REL_EPS` times the largest finite ``|mean|``, so that the
  relative std stays finite (and large) where the mean is (close to) zero.
- **Subsampling.** Histograms, quantiles and calibration statistics of images larger than
  :data:`MAX_SAMPLE_PIXELS` use every ``k``-th pixel of the flattened image,
  ``k = ceil(N / MAX_SAMPLE_PIXELS)`` (:func:`sample_pixels`): deterministic, the same
  pixels for the mean, the std and the reference, and cheap (no random permutation).
- **Calibration.** :func:`calibration_summary` evaluates ZMS, the NLL-optimal sigma scale
  ``s = sqrt(ZMS)``, Spearman's rho(sigma, |r|), the coverage of the central +-1 sigma and
  +-2 sigma Gaussian intervals and the calibration curve with
  :mod:`napari_sim_uq.core.uq.metrics` (definitions in ``docs/metrics.md``).
- **Sigma scaling.** :func:`apply_sigma_scale` multiplies a std map and records the
  cumulative factor in the layer metadata (``metadata["sim_uq"]["applied_sigma_scale"]``
  and the list of single factors ``"applied_sigma_scale_history"``).

Bad input raises :class:`napari_sim_uq.core.errors.InputError`.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.uq import metrics as M

__all__ = [
    "MAX_SAMPLE_PIXELS",
    "MEAN_SUFFIX",
    "MODES",
    "REL_EPS",
    "STD_SUFFIX",
    "applied_sigma_scale",
    "apply_sigma_scale",
    "calibration_summary",
    "check_same_shape",
    "data_index",
    "default_threshold",
    "explore_stats",
    "find_gt_layer",
    "find_std_layer",
    "format_mean_std",
    "mean_std_pairs",
    "relative_std",
    "sample_pixels",
    "std_histogram",
    "uncertainty_values",
    "unreliable_layer_name",
    "unreliable_mask",
]

#: Name suffix of a std map (DESIGN.md 3): ``"<mean name> std"``.
STD_SUFFIX = " std"
#: Name suffix of a mean whose std map is ``"<prefix> std"`` (2D tasks: ``"<source> mean"``).
MEAN_SUFFIX = " mean"
#: Threshold modes: the std itself or the relative std ``std / max(|mean|, eps)``.
MODES = ("absolute", "relative")
#: Default ``eps`` of the relative std, as a fraction of the largest finite ``|mean|``.
REL_EPS = 1e-3
#: Histograms, quantiles and calibration statistics use at most this many pixels.
MAX_SAMPLE_PIXELS = 1_000_000
#: Metadata keys (under ``"sim_uq"``) of the sigma scale applied to a std map.
SCALE_KEY = "applied_sigma_scale"
SCALE_HISTORY_KEY = "applied_sigma_scale_history"

_GT_WORDS = re.compile(r"\b(gt|ground[ _-]?truth)\b", re.IGNORECASE)


# --------------------------------------------------------------------------- pairing


def _catalogue(layers: Any) -> dict[str, Mapping]:
    """``name -> metadata`` from a mapping or an iterable of layer-like objects."""
    if isinstance(layers, Mapping):
        return {str(k): (v or {}) for k, v in layers.items()}
    out = {}
    for lay in layers:
        out[str(lay.name)] = getattr(lay, "metadata", None) or {}
    return out


def _sim_md(md: Mapping) -> Mapping:
    sim = md.get("sim_uq") if isinstance(md, Mapping) else None
    return sim if isinstance(sim, Mapping) else {}


def find_std_layer(mean_name: str, layers: Any) -> str | None:
    """Name of the std map that belongs to the mean layer ``mean_name``, or ``None``.

    First ``"<mean_name> std"``; for a name ending in ``" mean"`` (the 2D tasks:
    ``"<source> mean"`` -> ``"<source> std"``, ``"<source> posterior mean"`` ->
    ``"<source> posterior std"``) the name with ``mean`` replaced by ``std``; else a layer
    whose ``metadata["sim_uq"]`` has ``output`` ``"<key>_std"`` (for a key ending in
    ``mean``: that ending replaced by ``std``) and the same ``source`` as the mean layer's
    ``output`` ``"<key>"``.
    """
    cat = _catalogue(layers)
    names = [mean_name + STD_SUFFIX]
    if mean_name.endswith(MEAN_SUFFIX):
        names.append(mean_name[: -len(MEAN_SUFFIX)] + STD_SUFFIX)
    for candidate in names:
        if candidate in cat:
            return candidate
    md = _sim_md(cat.get(mean_name, {}))
    key, source = md.get("output"), md.get("source")
    if not key or str(key).endswith("_std"):
        return None
    key = str(key)
    std_keys = {f"{key}_std"} | ({key[: -len("mean")] + "std"} if key.endswith("mean") else set())
    for name, other in cat.items():
        o = _sim_md(other)
        if name != mean_name and o.get("output") in std_keys and o.get("source") == source:
            return name
    return None


def find_gt_layer(mean_name: str, layers: Any) -> str | None:
    """Name of a ground-truth layer for ``mean_name``, or ``None``.

    A layer matches when removing the word ``GT`` (or ``ground truth``) from its name
    gives ``mean_name``, e.g. ``"SIM sample GT emitter"`` for ``"SIM sample emitter"``.
    """
    target = " ".join(mean_name.split())
    for name in _catalogue(layers):
        if name == mean_name or not _GT_WORDS.search(name):
            continue
        if " ".join(_GT_WORDS.sub(" ", name).split()) == target:
            return name
    return None


def mean_std_pairs(layers: Any) -> list[tuple[str, str]]:
    """All ``(mean name, std name)`` pairs among ``layers``, in layer order."""
    cat = _catalogue(layers)
    pairs = []
    for name in cat:
        if name.endswith(STD_SUFFIX) or str(_sim_md(cat[name]).get("output", "")).endswith("_std"):
            continue
        std = find_std_layer(name, cat)
        if std is not None:
            pairs.append((name, std))
    return pairs


def unreliable_layer_name(mean_name: str) -> str:
    """Name of the Labels layer that marks the unreliable pixels of ``mean_name``."""
    return f"{mean_name} unreliable"


def check_same_shape(**arrays: Any) -> None:
    """Raise :class:`InputError` unless all named arrays have the same shape."""
    shapes = {k: tuple(np.shape(v)) for k, v in arrays.items()}
    if len(set(shapes.values())) > 1:
        got = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise InputError(
            f"the layers must have the same shape, got {got}: choose layers on the same grid"
        )


# --------------------------------------------------------------------------- thresholds


def _float(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise InputError(f"{name} is empty (shape {arr.shape})")
    return arr if arr.dtype.kind == "f" else arr.astype(np.float32)


def _mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def relative_std(mean: Any, std: Any, eps: float | None = None) -> np.ndarray:
    """``std / max(|mean|, eps)``; ``eps=None``: :data:`REL_EPS` x the largest ``|mean|``."""
    m, s = _float(mean, "mean"), _float(std, "std")
    check_same_shape(mean=m, std=s)
    a = np.abs(m)
    if eps is None:
        finite = a[np.isfinite(a)]
        top = float(finite.max()) if finite.size else 0.0
        if not top > 0:
            raise InputError(
                "the mean is zero (or not finite) everywhere, so the relative std "
                "std/|mean| is undefined: use the absolute std"
            )
        eps = REL_EPS * top
    elif not (math.isfinite(eps) and eps > 0):
        raise InputError(f"eps must be a finite number > 0, got {eps!r}")
    with np.errstate(invalid="ignore"):
        return s / np.maximum(a, np.asarray(eps, dtype=a.dtype))


def uncertainty_values(mean: Any, std: Any, mode: str = "absolute", eps: float | None = None):
    """The thresholded quantity: ``std`` (``"absolute"``) or :func:`relative_std`."""
    if _mode(mode) == "relative":
        return relative_std(mean, std, eps)
    s = _float(std, "std")
    if mean is not None:
        check_same_shape(mean=mean, std=s)
    return s


def unreliable_mask(
    mean: Any, std: Any, threshold: float, mode: str = "absolute", eps: float | None = None
) -> np.ndarray:
    """``uint8`` mask, 1 where the std (or relative std) is ``> threshold`` or not finite."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise InputError(f"threshold must be a number, got {threshold!r}") from None
    if math.isnan(t):
        raise InputError("threshold is NaN")
    v = uncertainty_values(mean, std, mode, eps)
    with np.errstate(invalid="ignore"):
        return ((v > t) | ~np.isfinite(v)).astype(np.uint8)


def default_threshold(values: Any, percentile: float = 95.0) -> float:
    """The ``percentile`` (linear interpolation) of the finite ``values`` (subsampled)."""
    (v,) = sample_pixels(values)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise InputError("no finite values to choose a threshold from")
    return float(np.percentile(v, percentile))


# --------------------------------------------------------------------------- sampling, histograms


def sample_pixels(*arrays: Any, max_pixels: int = MAX_SAMPLE_PIXELS) -> list[np.ndarray]:
    """Flattened arrays, every ``ceil(N / max_pixels)``-th pixel when ``N > max_pixels``.

    The same pixels are taken from every array (they must have the same size).
    """
    if max_pixels < 1:
        raise InputError(f"max_pixels must be >= 1, got {max_pixels}")
    flat = [np.asarray(a).reshape(-1) for a in arrays]
    if len({f.size for f in flat}) > 1:
        raise InputError(f"arrays of different sizes: {[f.size for f in flat]}")
    n = flat[0].size if flat else 0
    step = max(1, -(-n // max_pixels))
    return [f[::step] for f in flat]


def std_histogram(values: Any, bins: int = 64, log: bool = False) -> dict:
    """Histogram of the finite ``values`` (subsampled by :func:`sample_pixels`).

    ``log=True``: logarithmically spaced bins over the positive values (non-positive ones
    are left out and counted in ``n_excluded``, as are non-finite values).
    Returns ``{"counts", "edges", "log", "n", "n_excluded"}``.
    """
    (v,) = sample_pixels(values)
    total = v.size
    v = v[np.isfinite(v)]
    if log:
        v = v[v > 0]
    if v.size == 0:
        raise InputError(
            "no finite" + (" positive" if log else "") + " values to draw a histogram of"
        )
    lo, hi = float(v.min()), float(v.max())
    if log:
        if hi <= lo:
            lo, hi = lo / 1.5, hi * 1.5
        edges = np.geomspace(lo, hi, bins + 1)
    else:
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
    counts, edges = np.histogram(v, bins=edges)
    return {
        "counts": counts,
        "edges": edges,
        "log": bool(log),
        "n": int(v.size),
        "n_excluded": int(total - v.size),
    }


# --------------------------------------------------------------------------- calibration


def calibration_summary(
    mean: Any,
    std: Any,
    gt: Any = None,
    *,
    error: Any = None,
    n_bins: int = 12,
    max_pixels: int = MAX_SAMPLE_PIXELS,
) -> dict:
    """Calibration of ``std`` against a ground truth ``gt`` (residual ``gt - mean``) or a
    given ``error`` map (used as the residual; its sign does not matter).

    Pixels with a non-finite value or ``std <= 0`` are left out (``n_excluded``); images
    above ``max_pixels`` are subsampled (:func:`sample_pixels`). Returns ``n``,
    ``n_excluded``, ``zms``, ``sigma_scale`` (``sqrt(zms)``), ``spearman``, ``cov68`` and
    ``cov95`` (fractions within +-1 and +-2 sigma; ideal 0.6827 and 0.9545), ``mse``,
    ``mean_variance``, ``curve`` (:func:`~napari_sim_uq.core.uq.metrics.calibration_curve`,
    equal-count bins) and, with ``gt``, ``conditional``: ZMS and coverage per std decile and
    per class of the ground truth's relative intensity
    (:func:`~napari_sim_uq.core.uq.calibrate.conditional_calibration` with
    :data:`~napari_sim_uq.core.uq.calibrate.RELATIVE_INTENSITY_CLASSES`: a pooled ZMS of 1
    can hide a std too wide on the background and too narrow on the structures).
    """
    if (gt is None) == (error is None):
        raise InputError("calibration_summary needs exactly one of gt= and error=")
    s_full = _float(std, "std")
    inten = None
    if error is None:
        from napari_sim_uq.core.uq.calibrate import relative_intensity

        check_same_shape(mean=mean, std=s_full, gt=gt)
        g_full = _float(gt, "gt")
        finite = np.where(np.isfinite(g_full), g_full, 0.0)
        m, s, g, inten = sample_pixels(
            _float(mean, "mean"),
            s_full,
            g_full,
            relative_intensity(finite),
            max_pixels=max_pixels,
        )
        r = g.astype(np.float64) - m
    else:
        shapes = {"std": s_full, "error": error}
        if mean is not None:
            shapes["mean"] = mean
        check_same_shape(**shapes)
        s, r = sample_pixels(s_full, _float(error, "error"), max_pixels=max_pixels)
        r = r.astype(np.float64)
    s = s.astype(np.float64)
    ok = np.isfinite(r) & np.isfinite(s) & (s > 0)
    n = int(np.count_nonzero(ok))
    if n < 2:
        raise InputError(
            f"only {n} pixel(s) have a finite residual and a std > 0: cannot assess calibration"
        )
    r, s = r[ok], s[ok]
    zms = M.zms(r, s)
    conditional = None
    if inten is not None and n >= 10:
        from napari_sim_uq.core.uq.calibrate import (
            RELATIVE_INTENSITY_CLASSES,
            conditional_calibration,
        )

        c = conditional_calibration(r, s, inten[ok], intensity_classes=RELATIVE_INTENSITY_CLASSES)
        conditional = {"by_std_decile": c["by_std_decile"], "by_intensity": c["by_intensity"]}
    return {
        "conditional": conditional,
        "n": n,
        "n_excluded": int(ok.size - n),
        "zms": zms,
        "sigma_scale": math.sqrt(zms),
        "spearman": M.spearman(s, np.abs(r)),
        "cov68": M.coverage(r, s, M.LEVEL_1SIGMA),
        "cov95": M.coverage(r, s, M.LEVEL_2SIGMA),
        "mse": float(np.mean(r * r)),
        "mean_variance": float(np.mean(s * s)),
        "curve": M.calibration_curve(r, s, n_bins=min(n_bins, n)),
    }


def explore_stats(
    mean: Any,
    std: Any,
    mode: str = "absolute",
    *,
    reference: Any = None,
    reference_kind: str = "gt",
    log: bool = False,
    bins: int = 64,
    n_quantiles: int = 1001,
) -> dict:
    """Everything the explorer draws, in one call (run in a worker thread for big images).

    Returns ``{"hist", "quantiles", "p95", "calibration"}``: the histogram of the
    thresholded quantity (:func:`std_histogram`), its quantiles at
    ``linspace(0, 1, n_quantiles)`` and 95th percentile (of the sampled finite values),
    and :func:`calibration_summary` when a ``reference`` (``reference_kind`` ``"gt"`` or
    ``"error"``) is given, else ``None``.
    """
    if reference_kind not in ("gt", "error"):
        raise InputError(f"reference_kind must be 'gt' or 'error', got {reference_kind!r}")
    v = uncertainty_values(mean, std, mode)
    (vs,) = sample_pixels(v)
    vs = vs[np.isfinite(vs)]
    if vs.size == 0:
        raise InputError("the std map has no finite values")
    quantiles = np.quantile(vs, np.linspace(0.0, 1.0, n_quantiles))
    cal = None
    if reference is not None:
        kw = {"gt": reference} if reference_kind == "gt" else {"error": reference}
        cal = calibration_summary(mean, std, **kw)
    return {
        "hist": std_histogram(vs, bins=bins, log=log),
        "quantiles": quantiles,
        "p95": float(np.percentile(vs, 95.0)),
        "calibration": cal,
    }


# --------------------------------------------------------------------------- sigma scaling


def applied_sigma_scale(metadata: Mapping | None) -> float:
    """The cumulative sigma scale recorded in a std layer's metadata (1.0 if none)."""
    return float(_sim_md(metadata or {}).get(SCALE_KEY, 1.0))


def apply_sigma_scale(std: Any, factor: float, metadata: Mapping | None = None):
    """``(std * factor, metadata')``: the scaled map and a copy of ``metadata`` recording
    the cumulative scale (``sim_uq.applied_sigma_scale``) and each factor
    (``sim_uq.applied_sigma_scale_history``). Floating dtypes are kept."""
    try:
        f = float(factor)
    except (TypeError, ValueError):
        raise InputError(f"sigma scale must be a number, got {factor!r}") from None
    if not (math.isfinite(f) and f > 0):
        raise InputError(f"sigma scale must be a finite number > 0, got {factor!r}")
    s = _float(std, "std")
    out = (s * s.dtype.type(f)).astype(s.dtype, copy=False)
    md = copy.deepcopy(dict(metadata or {}))
    sim = dict(_sim_md(md))
    sim[SCALE_KEY] = float(sim.get(SCALE_KEY, 1.0)) * f
    sim[SCALE_HISTORY_KEY] = [*sim.get(SCALE_HISTORY_KEY, []), f]
    md["sim_uq"] = sim
    return out, md


# --------------------------------------------------------------------------- cursor readout


def data_index(coords: Iterable[float], shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Integer index of the pixel containing the data coordinates ``coords`` (pixel ``i``
    covers ``[i - 0.5, i + 0.5)``, napari's convention), or ``None`` outside ``shape``."""
    c = np.asarray(list(coords), dtype=float)
    if c.size != len(shape) or not np.all(np.isfinite(c)):
        return None
    idx = np.floor(c + 0.5).astype(int)
    if np.any(idx < 0) or np.any(idx >= np.asarray(shape)):
        return None
    return tuple(int(i) for i in idx)


def format_mean_std(mean: float, std: float) -> str:
    """``"1.234 ± 0.05678"`` (4 significant digits each)."""
    return f"{float(mean):.4g} ± {float(std):.4g}"
