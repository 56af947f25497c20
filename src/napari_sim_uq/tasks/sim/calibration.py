"""Conditional recalibration of the SIM emitter std, and the raw-domain self-check.

Conditional recalibration (issue 15)
------------------------------------
One sigma scale per output fixes the average calibration only: the emitter std of the
trained models is about twice too wide on the dark background and several times too narrow
on dim structures (docs/index.md), and which of the two wins in the pooled ZMS depends on
how sparse a field is. ``sim-uq calibrate`` therefore (by default, ``method="map-intensity"``)
fits, after the global scale ``s``, one monotone per-quantile map of ``s * sigma``
(:class:`~napari_sim_uq.core.uq.calibrate.SigmaMap`) per class of the *predicted* emitter's
relative intensity (:func:`relative_intensity`, classes cut at :data:`EMITTER_CLASS_EDGES`;
:class:`~napari_sim_uq.core.uq.calibrate.ClassSigmaMap`). Only what is known at prediction
time enters the map (the std and the predicted emitter), so it applies to a user's stack.
It is stored in the checkpoint as ``extra["sigma_map"]["emitter"]`` and applied by
:func:`apply_sigma_maps` after the scale, to the total, aleatoric and epistemic std alike
(so the parts still add up in quadrature).

Conditional tables
------------------
Evaluation reports the emitter calibration per std decile and per class of the *true*
emitter's relative intensity, :data:`SIM_INTENSITY_CLASSES`: ``background`` (below 1 % of
the stack's bright level), ``structure`` (the rest), and ``dim`` / ``mid`` / ``bright``
(1-10 %, 10-30 %, above 30 %), the table of docs/index.md.

Raw-domain self-check
---------------------
The model predicts the raw frames (``rec``, the forward model of its outputs) and their
predictive variance ``V = s_raw^2 (rec_std^2 + alpha max(rec, 0) + beta + var_floor)``
(the training NLL's variance with the learnt camera noise). On the user's own stack, with no
ground truth, ``z = (x - rec) / sqrt(V)`` must then have mean square near 1 and ~95 % of
``|z| <= 1.96``, and ``z`` should be nearly white. :func:`raw_self_check` reports the ZMS,
the coverage and the lag-1 correlation of ``z``; a ZMS or a correlation outside what the
calibration split showed (:func:`self_check_reference`, stored in the checkpoint) means the
model does not explain these data (other optics, other noise, other structures) and its
emitter and std should not be trusted. The learnt camera noise is one model for the whole
training set, while every stack has its own read-noise map: the per-stack raw ZMS of data
like the training data already spans about 0.6-1.8, which is why the bounds come from the
calibration split rather than a fixed range.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.uq.calibrate import RELATIVE_INTENSITY_CLASSES, relative_intensity

__all__ = [
    "EMITTER_CLASS_EDGES",
    "SELF_CHECK_RANGE",
    "SIM_INTENSITY_CLASSES",
    "apply_sigma_maps",
    "camera_noise",
    "fit_emitter_map",
    "raw_predictive_std",
    "raw_self_check",
    "relative_intensity",
    "self_check_reference",
    "stored_self_check_reference",
    "stored_sigma_maps",
]

#: Class edges of the predicted emitter's relative intensity for the emitter sigma map.
EMITTER_CLASS_EDGES = (0.01, 0.1, 0.3)
#: A class of the map needs this many pixels per sigma bin, else it is merged downwards.
MIN_PIXELS_PER_BIN = 50
#: Classes of the true emitter's relative intensity in the evaluation tables.
SIM_INTENSITY_CLASSES = RELATIVE_INTENSITY_CLASSES
#: Classes of the true light-pattern value for the conditional calibration of the pattern
#: std (a pattern ``1 + m cos`` lies in ``[1 - m, 1 + m]``).
PATTERN_FRINGE_CLASSES = {
    "dark fringe": (-math.inf, 0.7),
    "slope": (0.7, 1.3),
    "bright fringe": (1.3, math.inf),
}
#: Default self-check (a checkpoint calibrated by ``sim-uq calibrate`` stores its own):
#: raw-domain ZMS outside this range, or a residual correlation above ``SELF_CHECK_RHO_MAX``,
#: means the model does not explain the stack.
SELF_CHECK_RANGE = (0.7, 1.5)
SELF_CHECK_RHO_MAX = 0.3
#: The self-check bounds lie this many standard deviations from the calibration split's
#: mean of log(raw ZMS) and of the residual correlation (about 0.3 % false alarms for
#: normally distributed statistics; extreme empirical quantiles of a few dozen stacks were
#: too narrow: 17 % of a second split's stacks fell outside its 1st-99th percentiles).
REFERENCE_SIGMAS = 3.0
#: Fewest calibration stacks for a stored self-check reference.
MIN_REFERENCE_STACKS = 8
_Z95 = 1.959963984540054


# --------------------------------------------------------------------------- sigma maps


def fit_emitter_map(r: Any, sigma: Any, covariate: Any, n_bins: int = 10):
    """The emitter's :class:`~napari_sim_uq.core.uq.calibrate.ClassSigmaMap` (module
    docstring): classes of the relative predicted intensity ``covariate`` cut at
    :data:`EMITTER_CLASS_EDGES`; while a class holds fewer than ``MIN_PIXELS_PER_BIN *
    n_bins`` pixels, the smallest is merged into the next brighter class (the brightest
    into the one below it; sparse calibration data). With one class left it is a single
    map."""
    from napari_sim_uq.core.uq.calibrate import ClassSigmaMap

    c = np.asarray(covariate, dtype=np.float64).ravel()
    edges = list(EMITTER_CLASS_EDGES)
    need = MIN_PIXELS_PER_BIN * int(n_bins)
    while edges:
        counts = np.bincount(np.searchsorted(edges, c, side="left"), minlength=len(edges) + 1)
        k = int(np.argmin(counts))
        if counts[k] >= need:
            break
        # merge the smallest class into the next brighter one (the brightest: into the one
        # below), so dim structures are not merged into the background
        del edges[min(k, len(edges) - 1)]
    if not edges:
        from napari_sim_uq.core.uq.calibrate import SigmaMap

        return ClassSigmaMap([], [SigmaMap.fit(r, sigma, n_bins)])
    return ClassSigmaMap.fit(r, sigma, covariate, n_bins=n_bins, edges=edges)


def stored_sigma_maps(ck: Any) -> dict:
    """The checkpoint's sigma maps ``{quantity: map}`` (``extra["sigma_map"]``)."""
    from napari_sim_uq.core.uq.calibrate import sigma_map_from_dict

    stored = (getattr(ck, "extra", None) or {}).get("sigma_map") or {}
    if not isinstance(stored, dict):
        raise InputError(f"checkpoint '{getattr(ck, 'path', '?')}': invalid stored sigma map")
    return {q: sigma_map_from_dict(dict(d)) for q, d in stored.items() if d}


def emitter_ratio(smap: Any, emitter_std: np.ndarray, emitter: np.ndarray) -> np.ndarray:
    """The per-pixel factor ``c(sigma) / sigma`` of the emitter map (float32)."""
    from napari_sim_uq.core.uq.calibrate import ClassSigmaMap

    s = np.maximum(np.asarray(emitter_std, np.float64), 1e-30)
    if isinstance(smap, ClassSigmaMap):
        ratio = smap.ratio(s, relative_intensity(emitter))
    else:
        ratio = smap.ratio(s)
    return ratio.astype(np.float32)


def apply_sigma_maps(pred: Any, maps: dict) -> Any:
    """Apply the stored maps to a :class:`~napari_sim_uq.tasks.sim.predict.SimPrediction`
    in place (emitter: total, aleatoric and epistemic std times the same per-pixel factor);
    returns ``pred``. Quantities other than ``"emitter"`` have no map (a scale only)."""
    smap = maps.get("emitter")
    if smap is None or pred.emitter_std is None:
        return pred
    ratio = emitter_ratio(smap, pred.emitter_std, pred.emitter)
    for name in ("emitter_std", "emitter_aleatoric_std", "emitter_epistemic_std"):
        v = getattr(pred, name)
        if v is not None:
            setattr(pred, name, (v * ratio).astype(np.float32))
    pred.meta["sigma_map"] = {"emitter": smap.to_dict()["kind"]}
    return pred


# --------------------------------------------------------------------------- raw domain


def camera_noise(ck: Any, hr_factor: int) -> tuple[float, float, float, dict]:
    """``(alpha, beta, var_floor, description)`` of the raw predictive variance: the learnt
    Poisson-Gaussian camera noise ``alpha max(y, 0) + beta`` stored in the checkpoint as the
    loss state, and the loss's variance floor."""
    import torch

    from napari_sim_uq.tasks.sim.loss import SimLoss, SimLossConfig

    loss_cfg = ck.config.get("loss") or {}
    cfg = SimLossConfig.from_dict(dict(loss_cfg))
    floor = float(cfg.var_floor)
    state = (ck.extra or {}).get("loss_state")
    desc: dict[str, Any] = {"var_floor": floor, "model": cfg.camera_noise}
    if cfg.camera_noise == "none":
        desc["note"] = "the checkpoint was trained without a camera-noise term"
        return 0.0, 0.0, floor, desc
    if not isinstance(state, dict) or not state:
        desc["model"] = "absent"
        desc["note"] = "no loss state (camera noise) in the checkpoint: camera term left out"
        return 0.0, 0.0, floor, desc
    loss = SimLoss(cfg, hr_factor)
    try:
        loss.load_state_dict(state)
    except RuntimeError as err:
        raise InputError(
            f"checkpoint '{ck.path}': its stored loss state does not fit its loss "
            f"configuration ({str(err).splitlines()[0]})"
        ) from None
    with torch.no_grad():
        alpha, beta = float(loss.camera.alpha), float(loss.camera.beta)
    desc.update(alpha=alpha, beta=beta)
    return alpha, beta, floor, desc


def raw_predictive_std(
    rec: np.ndarray, rec_std: np.ndarray | None, camera: tuple[float, float, float]
) -> np.ndarray:
    """``sqrt(rec_std^2 + alpha max(rec, 0) + beta + var_floor)`` (float64, unscaled)."""
    alpha, beta, floor = camera
    r = np.asarray(rec, np.float64)
    v = 0.0 if rec_std is None else np.asarray(rec_std, np.float64) ** 2
    return np.sqrt(v + alpha * np.maximum(r, 0.0) + beta + floor)


def raw_self_check(x: Any, rec: Any, raw_std: Any, reference: dict | None = None) -> dict:
    """The raw-domain self-check of one stack (module docstring): ``x`` the normalised
    input frames ``(F, H, W)``, ``rec`` the predicted frames, ``raw_std`` the (scaled)
    predictive std.

    Two statistics of ``z = (x - rec) / raw_std``: ``raw_zms = mean(z^2)`` (the level of the
    residuals against the predicted noise) and ``raw_rho``, the lag-1 correlation of ``z``
    between neighbouring pixels (mean over both axes, ``mean(z_i z_j) / mean(z^2)``; near 0
    when the residual is noise, large when the model leaves structure unexplained, whatever
    the noise level). A stack passes when ``raw_zms`` lies in ``reference["raw_zms"]`` and
    ``raw_rho <= reference["raw_rho_max"]``: the ranges found on the calibration split
    (:func:`self_check_reference`, stored in the checkpoint); without a reference,
    :data:`SELF_CHECK_RANGE` and :data:`SELF_CHECK_RHO_MAX`.

    Returns ``{"raw_zms", "raw_cov95", "raw_rho", "n", "ok", "range", "rho_max",
    "reference", "message"}``."""
    xx = np.asarray(x, np.float64)
    rr = np.asarray(rec, np.float64)
    ss = np.asarray(raw_std, np.float64)
    if not (xx.shape == rr.shape == ss.shape) or xx.ndim < 2:
        raise InputError(
            f"raw_self_check: x, rec and raw_std must have one shape (F, H, W), got "
            f"{xx.shape}, {rr.shape}, {ss.shape}"
        )
    ok_px = np.isfinite(xx) & np.isfinite(rr) & np.isfinite(ss) & (ss > 0)
    n = int(ok_px.sum())
    if reference:
        lo, hi = (float(v) for v in reference["raw_zms"])
        rho_max = float(reference["raw_rho_max"])
        source = f"the calibration split's range ({reference.get('n_stacks', '?')} stacks)"
    else:
        (lo, hi), rho_max = SELF_CHECK_RANGE, SELF_CHECK_RHO_MAX
        source = "the default range (the checkpoint stores none: run sim-uq calibrate)"
    out = {"n": n, "range": [lo, hi], "rho_max": rho_max, "reference": source}
    if n == 0:
        return {
            **out,
            "raw_zms": None,
            "raw_cov95": None,
            "raw_rho": None,
            "ok": False,
            "message": "self-check impossible: no valid raw pixel",
        }
    z = np.where(ok_px, (xx - rr) / np.where(ok_px, ss, 1.0), 0.0)
    zms = float(np.sum(z * z) / n)
    cov = float(np.sum((np.abs(z) <= _Z95) & ok_px) / n)
    pairs = [
        (z[..., 1:, :] * z[..., :-1, :], ok_px[..., 1:, :] & ok_px[..., :-1, :]),
        (z[..., :, 1:] * z[..., :, :-1], ok_px[..., :, 1:] & ok_px[..., :, :-1]),
    ]
    lag = [float(np.sum(prod[m]) / max(int(m.sum()), 1)) for prod, m in pairs]
    rho = float(np.mean(lag) / zms) if zms > 0 else 0.0
    problems = []
    if not lo <= zms <= hi:
        side = "larger" if zms > hi else "smaller"
        problems.append(
            f"raw ZMS {zms:.2f} outside [{lo:.2f}, {hi:.2f}]: the raw residuals are {side} "
            "than the model expects"
        )
    if rho > rho_max:
        problems.append(
            f"the raw residuals are spatially correlated ({rho:.2f} > {rho_max:.2f}): the "
            "model leaves structure in the frames unexplained"
        )
    if problems:
        msg = (
            "WARNING: this model does not fit these data (" + "; ".join(problems) + "): its "
            "emitter and std are not trustworthy here; train on data like them"
        )
    else:
        msg = (
            f"self-check passed: the model explains the raw frames (raw ZMS {zms:.2f}, "
            f"95 % coverage {cov:.3f}, residual correlation {rho:.2f})"
        )
    return {
        **out,
        "raw_zms": zms,
        "raw_cov95": cov,
        "raw_rho": rho,
        "ok": not problems,
        "message": msg,
    }


def self_check_reference(checks: list[dict], raw_scale: float = 1.0) -> dict | None:
    """The self-check bounds of a calibration split: ``exp(m +- k s)`` for the raw ZMS, with
    ``m`` and ``s`` the mean and standard deviation of the per-stack ``log(raw_zms)``
    (``checks`` computed with raw scale 1, rescaled by the fitted ``raw_scale``), and
    ``mean + k std`` of the residual correlation, ``k`` = :data:`REFERENCE_SIGMAS`. ``None``
    with fewer than :data:`MIN_REFERENCE_STACKS` stacks."""
    zms = [c["raw_zms"] / raw_scale**2 for c in checks if c.get("raw_zms")]
    rho = [c["raw_rho"] for c in checks if c.get("raw_rho") is not None]
    if len(zms) < MIN_REFERENCE_STACKS or len(rho) < MIN_REFERENCE_STACKS:
        return None
    k = REFERENCE_SIGMAS
    lz = np.log(np.asarray(zms, np.float64))
    m, sd = float(lz.mean()), float(lz.std(ddof=1))
    r = np.asarray(rho, np.float64)
    return {
        "raw_zms": [math.exp(m - k * sd), math.exp(m + k * sd)],
        "raw_rho_max": float(r.mean() + k * r.std(ddof=1)),
        "sigmas": k,
        "n_stacks": len(zms),
    }


def stored_self_check_reference(ck: Any) -> dict | None:
    """The self-check reference stored by ``sim-uq calibrate`` (``extra["self_check"]``)."""
    ref = (getattr(ck, "extra", None) or {}).get("self_check")
    if not ref:
        return None
    try:
        lo, hi = (float(v) for v in ref["raw_zms"])
        rho_max = float(ref["raw_rho_max"])
    except (KeyError, TypeError, ValueError):
        raise InputError(
            f"checkpoint '{getattr(ck, 'path', '?')}': invalid stored self-check reference"
        ) from None
    if not (0 <= lo <= hi and math.isfinite(hi) and math.isfinite(rho_max)):
        raise InputError(
            f"checkpoint '{getattr(ck, 'path', '?')}': invalid stored self-check reference"
        )
    return dict(ref)


#: checkpoint ``extra`` key of the sigma scale of the parametric light patterns that the
#: classical pattern estimate gives (fitted by ``sim-uq calibrate`` on its split)
PATTERN_ESTIMATE_SCALE_KEY = "pattern_estimate_sigma_scale"


def stored_pattern_estimate_scale(ck: Any) -> float | None:
    """The sigma scale of the estimated parametric light patterns stored by ``sim-uq
    calibrate`` (``None``: not calibrated)."""
    v = (getattr(ck, "extra", None) or {}).get(PATTERN_ESTIMATE_SCALE_KEY)
    if v is None:
        return None
    try:
        s = float(v["sigma_scale"])
    except (KeyError, TypeError, ValueError):
        raise InputError(
            f"checkpoint '{getattr(ck, 'path', '?')}': invalid stored pattern-estimate scale"
        ) from None
    if not (math.isfinite(s) and s > 0):
        raise InputError(
            f"checkpoint '{getattr(ck, 'path', '?')}': invalid stored pattern-estimate scale"
        )
    return s
