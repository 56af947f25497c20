"""Evaluate a trained SIM checkpoint on a dataset split, and recalibrate its sigmas (jobs).

``evaluate_sim_job`` runs the model over every raw stack of ``D/{split}/`` and reports
image quality against the generator's ground truth (``D/{split}_gt/``) and the
calibration of the predicted uncertainties; ``calibrate_sim_job`` fits the closed-form
sigma scale ``s = sqrt(mean(r^2 / sigma^2))`` per quantity on held-out data and stores it
in the checkpoint. Both are jobs (DESIGN.md section 2): generators that yield
:class:`~napari_sim_uq.core.events.Event` progress reports and return a result dict.
No Qt, no napari. The conventions are written out in ``docs/metrics.md``
("Evaluation of a SIM checkpoint"); in short:

Quantities and units
--------------------
Calibration is measured for three quantities, pooled over all pixels of all stacks, in the
units the network works in (normalised raw intensity, ``sim_dataset`` module docstring):

- ``emitter``: ``r = e'_gt - e'`` on the HR grid, ``sigma`` the predicted emitter std;
- ``lp``: the light patterns, ``r = l_gt - l`` for every frame, ``sigma`` their std;
- ``raw``: the raw frames, ``r = x' - y`` with ``y`` the forward model of the prediction
  (``rec``), ``sigma = sqrt(rec_std^2 + Var_cam(y) + var_floor)``: the model part, the
  learnt Poisson-Gaussian camera noise ``alpha max(y, 0) + beta`` (stored in the checkpoint
  as the loss state) and the loss's variance floor, i.e. exactly the predictive variance
  ``V`` the training NLL uses. Without a stored loss state the camera term is left out
  (and the JSON says so).

The model runs with every sigma scale 1; the checkpoint's scales are then applied here
(``sigma' = s sigma``, the same product :func:`~napari_sim_uq.tasks.sim.predict.predict_sim`
forms; for ``raw`` the scale multiplies the whole predictive std). Pixels with a
non-finite value or ``sigma <= 0`` are left out and counted (``n_excluded``).

Moment metrics (MSE, ZMS, calib ratio, sigma scale, NLL, coverage) use every pixel,
accumulated in float64. Rank and bin metrics (Spearman, UCE, MACE, miscalibration area,
AUSE, the calibration curve) use at most :data:`MAX_POOLED_PIXELS` pixels per quantity:
all of them when there are fewer, else the same number from every stack, a uniform random
subset drawn with ``numpy.random.default_rng([quantity index, stack index])``.

Image quality (only with ground truth) is measured per stack in the ground truth's own
units (photons): the predicted emitter is mapped back with the stack's emitter
normalisation. PSNR and SSIM use ``data_range = max(gt) - min(gt)`` of that stack's ground
truth; NRMSE is the percentile-normalised RMSE of :func:`~napari_sim_uq.core.uq.metrics.nrmse`;
the reported numbers are means over stacks (PSNR averaged in dB). Light patterns: the
whole ``(A*P, fH, fW)`` stack for PSNR/NRMSE, SSIM per frame then averaged.

Widefield baseline: the mean of the ``A*P`` raw frames (in counts), upsampled to the HR
grid by cubic-spline interpolation (``scipy.ndimage.zoom(order=3, grid_mode=True,
mode="nearest")``: pixel areas aligned as in the forward model, edge pixels replicated),
then mapped into the emitter's units by the least-squares affine fit ``a * wf + b``
against the ground truth of that stack (an oracle mapping that favours the baseline).
For a like-for-like comparison the same affine fit is also applied to the predicted
emitter (``psnr_affine``, ``ssim_affine``).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import Event, relay
from napari_sim_uq.core.io.results import jsonable
from napari_sim_uq.tasks.sim.calibration import PATTERN_ESTIMATE_SCALE_KEY

__all__ = [
    "CALIBRATION_METHODS",
    "MAX_POOLED_PIXELS",
    "QUANTITIES",
    "calibrate_sim_job",
    "evaluate_sim_job",
    "widefield_baseline",
]

#: Quantities whose calibration is evaluated and whose sigma scale can be fitted.
QUANTITIES = ("emitter", "lp", "raw")
#: ``calibrate_sim_job`` methods: one scale per quantity; plus a per-quantile emitter
#: sigma map; plus one such map per class of the predicted emitter intensity.
CALIBRATION_METHODS = ("scale", "map", "map-intensity")
#: Pixels per quantity kept for the rank/bin-based calibration metrics (see module doc).
MAX_POOLED_PIXELS = 2_000_000
METRICS_FILE = "metrics.json"
CURVES_FILE = "calibration_curves.png"
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- helpers


def _opt_int(v: Any, name: str, minimum: int) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def widefield_baseline(raw_frames: np.ndarray, hr_factor: int) -> np.ndarray:
    """Mean of the raw frames ``(F, H, W)``, upsampled ``hr_factor`` times to ``(fH, fW)``
    by cubic-spline interpolation with pixel areas aligned (float64)."""
    from scipy import ndimage

    wf = np.asarray(raw_frames, dtype=np.float64).mean(axis=0)
    if hr_factor == 1:
        return wf
    return ndimage.zoom(wf, hr_factor, order=3, grid_mode=True, mode="nearest")


def _affine_fit(x: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Least-squares ``(a, b)`` minimising ``||a x + b - ref||^2``."""
    A = np.stack([x.ravel(), np.ones(x.size)], axis=1)
    (a, b), *_ = np.linalg.lstsq(A, ref.ravel(), rcond=None)
    return float(a), float(b)


def _image_quality(pred: np.ndarray, gt: np.ndarray, *, per_frame_ssim: bool) -> dict:
    """PSNR / SSIM / NRMSE of ``pred`` against ``gt`` with ``data_range = max - min`` of gt."""
    from napari_sim_uq.core.uq import metrics as M

    dr = float(gt.max() - gt.min())
    out: dict[str, Any] = {"data_range": dr, "psnr": None, "ssim": None, "nrmse": None}
    if dr <= 0:
        return out  # a constant ground truth has no range to measure against
    out["psnr"] = M.psnr(pred, gt, dr)
    if min(gt.shape[-2:]) >= 7:
        if per_frame_ssim:
            out["ssim"] = float(np.mean([M.ssim(p, g, dr) for p, g in zip(pred, gt, strict=True)]))
        else:
            out["ssim"] = M.ssim(pred, gt, dr)
    try:
        out["nrmse"] = M.nrmse(pred, gt)
    except InputError:  # an image constant between its percentiles
        out["nrmse"] = None
    return out


def _wiener_row(
    raw: np.ndarray,
    model: Any,
    gt: np.ndarray,
    lp_gt: np.ndarray | None = None,
    lp_scale: float | None = None,
) -> dict:
    """Wiener SIM of one stack scored like the widefield baseline (affine fit to the
    ground truth), and the parametric light patterns of the estimate against ``lp_gt``
    (PSNR, SSIM and the ZMS / cov95 of their delta-method std); ``{"failed": why}`` when
    the estimate fails. The illumination is estimated from the stack alone, or, for a
    model with an instrument (``patterns="estimated"``), with the instrument's wave
    vectors and PSF width (the information the model has)."""
    from napari_sim_uq.tasks.sim.classical.estimate import estimate_patterns
    from napari_sim_uq.tasks.sim.classical.patterns import parametric_patterns
    from napari_sim_uq.tasks.sim.classical.wiener import wiener_sim_array
    from napari_sim_uq.tasks.sim.pattern_model import stack_patterns

    a_n, p_n = int(model.cfg.n_angles), int(model.cfg.n_phases)
    instrument = getattr(model, "instrument", None)
    try:
        if instrument is not None:
            est = stack_patterns(instrument, raw)
        else:
            est = estimate_patterns(raw, a_n, p_n)
    except InputError as err:
        return {"failed": str(err)}
    if instrument is None and not est.all_ok:
        return {"failed": "; ".join(est.messages)}
    try:
        img = wiener_sim_array(
            raw, est, hr_factor=int(model.hr_factor), n_angles=a_n, n_phases=p_n
        ).image.astype(np.float64)
    except InputError as err:  # a flagged angle (the filter refuses it)
        return {"failed": str(err)}
    a, b = _affine_fit(img, gt)
    out = _image_quality(a * img + b, gt, per_frame_ssim=False)
    out["affine_fit"] = [a, b]
    out["periods_raw_px"] = est.periods.tolist()
    out["flagged_angles"] = int(np.sum(~np.asarray(est.ok)))
    if lp_gt is not None:
        mu, sd = parametric_patterns(est, int(model.hr_factor), tuple(raw.shape[-2:]))
        if mu.shape == lp_gt.shape:
            lp = _image_quality(mu.astype(np.float64), lp_gt, per_frame_ssim=True)
            ok = sd > 0
            z2 = ((lp_gt - mu)[ok] / sd[ok]) ** 2
            lp["zms"] = float(np.mean(z2)) if z2.size else None
            lp["cov95"] = float(np.mean(z2 <= 1.96**2)) if z2.size else None
            if lp_scale is not None and z2.size:  # the scale stored by `sim-uq calibrate`
                lp["zms_calibrated"] = float(np.mean(z2)) / lp_scale**2
                lp["cov95_calibrated"] = float(np.mean(z2 <= (1.96 * lp_scale) ** 2))
            out["lp_parametric"] = lp
    return out


def _wiener_summary(rows: list[dict]) -> dict:
    """Means of the Wiener SIM row over the stacks where it ran, and the emitter and
    widefield PSNR over the same stacks (a like-for-like comparison)."""
    done = [r for r in rows if "wiener" in r and "failed" not in r["wiener"]]
    failed = [r["name"] for r in rows if "failed" in (r.get("wiener") or {})]
    lp_rows = [r["wiener"]["lp_parametric"] for r in done if "lp_parametric" in r["wiener"]]
    out: dict[str, Any] = {
        "wiener": {k: _mean_of([r["wiener"] for r in done], k) for k in ("psnr", "ssim", "nrmse")},
        "lp_parametric": {
            k: _mean_of(lp_rows, k)
            for k in ("psnr", "ssim", "nrmse", "zms", "cov95", "zms_calibrated", "cov95_calibrated")
        },
        "wiener_n": len(done),
        "wiener_failed": len(failed),
        "wiener_failed_stacks": failed,
    }
    same = {key: _mean_of([r[key] for r in done], "psnr") for key in ("emitter", "widefield")}
    pw, pn = same["widefield"], out["wiener"]["psnr"]
    out["wiener_same_stacks"] = {
        "emitter_psnr": same["emitter"],
        "widefield_psnr": pw,
        "wiener_psnr_gain_over_widefield_db": None if pw is None or pn is None else pn - pw,
    }
    return out


def _mean_of(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
    return float(np.mean(vals)) if vals else None


# --------------------------------------------------------------------------- pooled pixels


class _Pool:
    """The pixels of one quantity over all stacks: exact float64 running moments for the
    unscaled sigma, coverage counts for a few named scales, and a bounded subset of
    ``(r, sigma)`` for the rank/bin metrics."""

    def __init__(
        self,
        index: int,
        scales: dict[str, float],
        cap_per_stack: int,
        classes: dict[str, tuple[float, float]] | None = None,
    ):
        self.index = index
        # classes of the "intensity" extra for the conditional tables (default: the
        # emitter's relative-intensity classes)
        self.classes = classes
        self.scales = dict(scales)
        self.cap = int(cap_per_stack)
        self.n = 0
        self.n_excluded = 0
        self.sum_r2 = 0.0
        self.sum_v = 0.0
        self.sum_z2 = 0.0
        self.sum_log_s = 0.0
        self.cov = {k: [0, 0] for k in self.scales}
        self._r: list[np.ndarray] = []
        self._s: list[np.ndarray] = []
        self._extra: dict[str, list[np.ndarray]] = {}

    def add(
        self,
        target: Any,
        pred: Any,
        sigma: Any,
        stack_index: int,
        extra: dict[str, Any] | None = None,
    ) -> float | None:
        """Add one stack; returns its unscaled ZMS (None if no valid pixel). ``extra``:
        per-pixel arrays (the shape of ``target``) kept in the subset next to ``(r, sigma)``
        (e.g. the true relative intensity for the conditional tables)."""
        t = np.asarray(target, dtype=np.float64).ravel()
        m = np.asarray(pred, dtype=np.float64).ravel()
        s = np.asarray(sigma, dtype=np.float64).ravel()
        ex = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in (extra or {}).items()}
        ok = np.isfinite(t) & np.isfinite(m) & np.isfinite(s) & (s > 0)
        n_ok = int(ok.sum())
        self.n_excluded += t.size - n_ok
        if n_ok == 0:
            return None
        if n_ok < t.size:
            t, m, s = t[ok], m[ok], s[ok]
            ex = {k: v[ok] for k, v in ex.items()}
        r = t - m
        r2 = r * r
        z2 = r2 / (s * s)
        self.n += n_ok
        self.sum_r2 += float(r2.sum())
        self.sum_v += float((s * s).sum())
        self.sum_z2 += float(z2.sum())
        self.sum_log_s += float(np.log(s).sum())
        absr = np.abs(r)
        for k, sc in self.scales.items():
            self.cov[k][0] += int(np.count_nonzero(absr <= sc * s))
            self.cov[k][1] += int(np.count_nonzero(absr <= 2.0 * sc * s))
        if n_ok > self.cap:
            rng = np.random.default_rng([self.index, int(stack_index)])
            idx = np.sort(rng.choice(n_ok, size=self.cap, replace=False))
            r, s = r[idx], s[idx]
            ex = {k: v[idx] for k, v in ex.items()}
        self._r.append(r)
        self._s.append(s)
        for k, v in ex.items():
            self._extra.setdefault(k, []).append(v)
        return float(z2.mean())

    def extra(self, key: str) -> np.ndarray | None:
        """The subset's values of one ``extra`` array (aligned with :meth:`subset`)."""
        parts = self._extra.get(key)
        if not parts or len(parts) != len(self._r):
            return None
        return np.concatenate(parts)

    @property
    def zms_unscaled(self) -> float:
        return self.sum_z2 / self.n

    def subset(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self._r), np.concatenate(self._s)

    def report(self, scale: float = 1.0, scale_name: str | None = None, *, full: bool = True):
        """Calibration metrics for ``sigma' = scale * sigma`` (plain numbers)."""
        from napari_sim_uq.core.uq import metrics as M

        n, s2 = self.n, scale * scale
        zms = self.sum_z2 / n / s2
        mse = self.sum_r2 / n
        mean_var = s2 * self.sum_v / n
        r_sub, s_sub = self.subset()
        if scale_name is not None and scale_name in self.cov:
            c1, c2 = self.cov[scale_name]
            cov68, cov95, cov_src = c1 / n, c2 / n, "all pixels"
        else:
            absr = np.abs(r_sub)
            cov68 = float(np.mean(absr <= scale * s_sub))
            cov95 = float(np.mean(absr <= 2.0 * scale * s_sub))
            cov_src = "subset"
        out: dict[str, Any] = {
            "n": n,
            "n_excluded": self.n_excluded,
            "sigma_scale_applied": scale,
            "mse": mse,
            "mean_variance": mean_var,
            "zms": zms,
            "calib_ratio": mse / mean_var if mean_var > 0 else None,
            "sigma_scale": math.sqrt(zms),
            "nll": _HALF_LOG_2PI + self.sum_log_s / n + math.log(scale) + 0.5 * zms,
            "cov68": cov68,
            "cov95": cov95,
        }
        if not full:
            out["coverage_pixels"] = cov_src
            return out
        sig = scale * s_sub
        out["spearman"] = M.spearman(s_sub, np.abs(r_sub))
        n_bins = min(20, r_sub.size)
        curve = M.calibration_curve(r_sub, sig, n_bins=n_bins)
        out["uce"] = M.uce(r_sub, sig, n_bins=n_bins)
        inter = M.interval_calibration(r_sub, sig)
        out["mace"] = inter["mace"]
        out["miscalibration_area"] = inter["miscalibration_area"]
        out["ause"] = M.ause(r_sub, sig)["ause"]
        out["subset_pixels"] = int(r_sub.size)
        inten = self.extra("intensity")
        if inten is not None:
            from napari_sim_uq.core.uq.calibrate import conditional_calibration
            from napari_sim_uq.tasks.sim.calibration import SIM_INTENSITY_CLASSES

            classes = self.classes or SIM_INTENSITY_CLASSES
            cond = conditional_calibration(r_sub, sig, inten, intensity_classes=classes)
            out["by_std_decile"] = cond["by_std_decile"]
            out["by_intensity"] = cond["by_intensity"]
        out["curve"] = {
            "mean_variance": curve["mean_variance"],
            "mse": curve["mse"],
            "count": curve["count"],
            "binning": curve["binning"],
        }
        return out


# --------------------------------------------------------------------------- the shared core


@dataclass
class _SplitResult:
    pools: dict[str, _Pool]
    unavailable: dict[str, str]
    per_sample: list[dict]
    names: list[str]
    has_gt: bool
    camera: dict
    meta: dict = field(default_factory=dict)


def _split_files(data_dir: Any, split: str) -> tuple[Path, bool]:
    """The raw folder of ``split`` and whether its ground-truth folder exists."""
    from napari_sim_uq.core.io.tiff_io import READ_SUFFIXES

    if not isinstance(split, str) or not split or any(c in split for c in "/\\"):
        raise InputError(f"split must be a folder name such as 'test' or 'val', got {split!r}")
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"data folder '{root}' does not exist (or is not a folder)")
    folder = root / split
    if not folder.is_dir():
        found = sorted(
            p.name
            for p in root.iterdir()
            if p.is_dir() and not p.name.endswith(("_gt", "_meta")) and not p.name.startswith(".")
        )
        hint = f"; splits found: {', '.join(found)}" if found else ""
        raise InputError(f"no split '{split}' in '{root}': '{folder}' is not a folder{hint}")
    stacks = [
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in READ_SUFFIXES and not p.name.startswith(".")
    ]
    if not stacks:
        raise InputError(f"no raw stacks ({', '.join(READ_SUFFIXES)}) in '{folder}'")
    return folder, (root / f"{split}_gt").is_dir()


def _collect(
    model: Any,
    ck: Any,
    data_dir: Any,
    split: str,
    *,
    stage: str,
    mc_samples: int,
    tile: int | None,
    device: Any,
    max_samples: int | None,
    quantities: Sequence[str],
    scale_sets: dict[str, dict[str, float]],
    image_quality: bool,
    sigma_maps: dict | None = None,
    raw_scale: float = 1.0,
    self_check_reference: dict | None = None,
    wiener: bool = False,
    lp_scale: float | None = None,
) -> Generator[Event, None, _SplitResult]:
    """Run the model (all sigma scales 1) over the stacks of ``split``; pool residuals and
    sigmas per quantity, and per-stack image-quality metrics when asked and possible.

    With ``sigma_maps`` (the checkpoint's, :mod:`.calibration`) and an emitter pool, a
    second pool ``"emitter_calibrated"`` holds the emitter residuals with the std the user
    gets (the scale of ``scale_sets["checkpoint"]``, then the map). Every stack gets the
    raw-domain self-check with the raw std times ``raw_scale``."""
    from collections import Counter

    from napari_sim_uq.tasks.sim.calibration import (
        PATTERN_FRINGE_CLASSES,
        apply_sigma_maps,
        camera_noise,
        raw_self_check,
        relative_intensity,
    )
    from napari_sim_uq.tasks.sim.dataset import SimStackDataset
    from napari_sim_uq.tasks.sim.predict import predict_sim

    folder, has_gt = _split_files(data_dir, split)
    want_gt = has_gt and (image_quality or any(q in ("emitter", "lp") for q in quantities))
    norm_cfg = dict(ck.config.get("data") or {})
    norm_cfg.update(ck.normalization or {})
    f = int(model.hr_factor)
    ds = SimStackDataset(
        str(folder),
        supervised=want_gt,
        gt_norm=norm_cfg.get("gt_norm", "raw"),
        norm_mode=norm_cfg.get("mode", norm_cfg.get("norm_mode", "percentile")),
        expected_frames=int(model.expected_frames),
        hr_factor=f if want_gt else None,
        cache=False,
    )
    n_items = len(ds) if max_samples is None else min(len(ds), max_samples)
    alpha, beta, floor, camera = camera_noise(ck, f)
    cap = max(1, -(-MAX_POOLED_PIXELS // n_items))
    pools: dict[str, _Pool] = {}
    unavailable: dict[str, str] = {}
    for q in quantities:
        if q in ("emitter", "lp") and not want_gt:
            unavailable[q] = f"no ground truth ('{Path(data_dir) / (split + '_gt')}' is missing)"
        else:
            scales = {name: float(s.get(q, 1.0)) for name, s in scale_sets.items()}
            classes = PATTERN_FRINGE_CLASSES if q == "lp" else None
            pools[q] = _Pool(QUANTITIES.index(q), scales, cap, classes)
    emitter_scale = float(scale_sets.get("checkpoint", {}).get("emitter", 1.0))
    calibrated = bool(sigma_maps) and "emitter" in pools and "emitter" in (sigma_maps or {})
    if calibrated:
        pools["emitter_calibrated"] = _Pool(QUANTITIES.index("emitter"), {"checkpoint": 1.0}, cap)
    per_sample: list[dict] = []
    names: list[str] = []
    items_per_file = Counter(ds.item_source(j)[0] for j in range(len(ds)))
    for i in range(n_items):
        path, t = ds.item_source(i)
        name = path.stem + (f"[t={t}]" if items_per_file[path] > 1 else "")
        names.append(name)
        item = ds[i]
        x = item["x"].numpy()
        job = predict_sim(
            model, x, mc_samples=mc_samples, tile=tile, device=str(device), sigma_scale=None
        )
        pred = yield from relay(job, f"stack {i + 1}/{n_items} ({name}): ")

        row: dict[str, Any] = {"name": name}
        # ---- calibration (normalised model units, unit sigma scale)
        sigmas = {"emitter": pred.emitter_std, "lp": pred.lp_std}
        rec = pred.rec.astype(np.float64)
        rec_var = 0.0 if pred.rec_std is None else pred.rec_std.astype(np.float64) ** 2
        sigmas["raw"] = np.sqrt(rec_var + alpha * np.maximum(rec, 0.0) + beta + floor)
        row["self_check"] = raw_self_check(x, rec, raw_scale * sigmas["raw"], self_check_reference)
        if pred.emitter_std is not None:  # the model's own std (no calibration)
            row["emitter_std_mean"] = {
                part: None if v is None else float(np.mean(v))
                for part, v in (
                    ("total", sigmas["emitter"]),
                    ("aleatoric", pred.emitter_aleatoric_std),
                    ("epistemic", pred.emitter_epistemic_std),
                )
            }
        extras: dict[str, dict] = {}
        targets = {"raw": (x, rec)}
        if want_gt:
            e_gt = item["emitter_gt"].numpy()[0]
            targets["emitter"] = (e_gt, pred.emitter)
            targets["lp"] = (item["lp_gt"].numpy(), pred.lp)
            # the pattern std per std decile and per fringe class of the true pattern
            extras["lp"] = {"intensity": item["lp_gt"].numpy()}
            extras["emitter"] = {
                "intensity": relative_intensity(e_gt),
                "covariate": relative_intensity(pred.emitter),
            }
            if calibrated and pred.emitter_std is not None:
                pred.emitter_std = pred.emitter_std * np.float32(emitter_scale)
                apply_sigma_maps(pred, sigma_maps)
                sigmas["emitter_calibrated"] = pred.emitter_std
                targets["emitter_calibrated"] = targets["emitter"]
                extras["emitter_calibrated"] = extras["emitter"]
        zms_row = {}
        for q, pool in list(pools.items()):
            if sigmas.get(q) is None:
                if q in QUANTITIES:  # the calibrated twin goes with its quantity
                    unavailable[q] = (
                        f"the model predicts no {q} uncertainty (not in uq_targets and "
                        "mc_samples=0)"
                    )
                del pools[q]
                continue
            tgt, mu = targets[q]
            zms_row[q] = pool.add(tgt, mu, sigmas[q], i, extras.get(q))
        row["zms_unscaled"] = zms_row
        # ---- image quality (ground-truth units)
        if want_gt and image_quality:
            e_off = float(item["emitter_norm"]["offset"])
            e_scale = float(item["emitter_norm"]["scale"])
            gt = item["emitter_gt"].numpy()[0].astype(np.float64) * e_scale + e_off
            em = pred.emitter.astype(np.float64) * e_scale + e_off
            raw = ds.normalization(i).invert(x.astype(np.float64))
            wf = widefield_baseline(raw, f)
            a_wf, b_wf = _affine_fit(wf, gt)
            a_em, b_em = _affine_fit(em, gt)
            row["emitter"] = _image_quality(em, gt, per_frame_ssim=False)
            aff = _image_quality(a_em * em + b_em, gt, per_frame_ssim=False)
            row["emitter"].update(psnr_affine=aff["psnr"], ssim_affine=aff["ssim"])
            row["emitter"]["affine_fit"] = [a_em, b_em]
            row["widefield"] = _image_quality(a_wf * wf + b_wf, gt, per_frame_ssim=False)
            row["widefield"]["affine_fit"] = [a_wf, b_wf]
            if wiener:
                lp_gt = item["lp_gt"].numpy().astype(np.float64)
                row["wiener"] = _wiener_row(raw, model, gt, lp_gt, lp_scale)
            lp_gt = item["lp_gt"].numpy().astype(np.float64)
            row["lp"] = _image_quality(pred.lp.astype(np.float64), lp_gt, per_frame_ssim=True)
        per_sample.append(row)
        shown = {f"{q}_zms": v for q, v in zms_row.items() if v is not None}
        yield Event(stage, i + 1, n_items, shown, f"stack {i + 1}/{n_items} ({name}) done")
    for q, pool in list(pools.items()):
        if pool.n == 0:
            unavailable[q] = "no valid pixel (every sigma was 0 or not finite)"
            del pools[q]
    return _SplitResult(
        pools=pools,
        unavailable=unavailable,
        per_sample=per_sample,
        names=names,
        has_gt=want_gt,
        camera=camera,
        meta={
            "n_stacks_in_split": len(ds),
            "norm_mode": ds.norm_template.mode,
            "gt_norm": ds.gt_norm,
        },
    )


def _prepare(checkpoint: Any, device: str, mc_samples: Any, tile: Any, max_samples: Any):
    from napari_sim_uq.core.devices import resolve_device
    from napari_sim_uq.tasks.sim.reconstruct import load_sim_model

    mc = _opt_int(mc_samples, "mc_samples", 0)
    _opt_int(tile, "tile", 1)
    max_n = _opt_int(max_samples, "max_samples", 1)
    dev = resolve_device(device)
    model, ck = load_sim_model(checkpoint, dev)
    return model, ck, dev, mc, max_n


def _unit_scales() -> dict[str, float]:
    return dict.fromkeys(QUANTITIES, 1.0)


# --------------------------------------------------------------------------- evaluate


def _self_check_summary(rows: list[dict]) -> dict:
    """Fraction of stacks the raw-domain self-check flags, and its ZMS range."""
    checks = [r["self_check"] for r in rows if r.get("self_check")]
    zms = [c["raw_zms"] for c in checks if c["raw_zms"] is not None]
    flagged = [r["name"] for r in rows if r.get("self_check") and not r["self_check"]["ok"]]
    first = checks[0] if checks else {}
    return {
        "range": first.get("range"),
        "rho_max": first.get("rho_max"),
        "reference": first.get("reference"),
        "n_stacks": len(checks),
        "n_flagged": len(flagged),
        "fraction_flagged": len(flagged) / len(checks) if checks else None,
        "raw_zms_median": float(np.median(zms)) if zms else None,
        "raw_zms_min": float(np.min(zms)) if zms else None,
        "raw_zms_max": float(np.max(zms)) if zms else None,
        "flagged": flagged,
    }


def evaluate_sim_job(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    split: str = "test",
    out_dir: str | os.PathLike | None = None,
    *,
    mc_samples: int = 0,
    tile: int | None = None,
    device: str = "auto",
    max_samples: int | None = None,
    overwrite: bool = False,
    wiener: bool = True,
) -> Generator[Event, None, dict]:
    """Job: evaluate ``checkpoint`` on the stacks of ``data_dir/split``.

    ``wiener``: also reconstruct each stack with classical Wiener SIM (illumination
    estimated from the stack, :mod:`~napari_sim_uq.tasks.sim.classical`) as a second
    baseline next to widefield (``image_quality["wiener"]``; stacks whose estimate fails
    are counted in ``wiener_failed`` and left out of its means).

    Returns the metrics document (a dict of plain JSON values; conventions in the module
    docstring and ``docs/metrics.md``). With ``out_dir`` it is also written to
    ``out_dir/metrics.json`` with a figure of the calibration curves,
    ``out_dir/calibration_curves.png``; existing files are replaced only with
    ``overwrite`` (:class:`FileExistsError` otherwise, checked before any work). Without
    ground truth (no ``{split}_gt`` folder) only the raw-frame calibration is evaluated.
    Yields the inference events (stage ``"reconstruct"``) and one ``"evaluate"`` event per
    stack.
    """
    targets = None
    if out_dir is not None:
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise InputError(f"output folder '{out}' is a file")
        targets = {"metrics": out / METRICS_FILE, "curves": out / CURVES_FILE}
        existing = [str(p) for p in targets.values() if p.exists()]
        if existing and not overwrite:
            raise FileExistsError(
                f"not overwriting existing results: {', '.join(existing)} (use --overwrite)"
            )
    from napari_sim_uq.tasks.sim.calibration import (
        stored_pattern_estimate_scale,
        stored_self_check_reference,
        stored_sigma_maps,
    )

    model, ck, dev, mc, max_n = _prepare(checkpoint, device, mc_samples, tile, max_samples)
    applied = {q: float((ck.sigma_scale or {}).get(q, 1.0)) for q in QUANTITIES}
    maps = stored_sigma_maps(ck)
    reference = stored_self_check_reference(ck)
    lp_scale = stored_pattern_estimate_scale(ck)
    res = yield from _collect(
        model,
        ck,
        data_dir,
        split,
        stage="evaluate",
        mc_samples=mc,
        tile=tile,
        device=dev,
        max_samples=max_n,
        quantities=QUANTITIES,
        scale_sets={"checkpoint": applied, "unscaled": _unit_scales()},
        image_quality=True,
        sigma_maps=maps,
        raw_scale=applied["raw"],
        self_check_reference=reference,
        wiener=bool(wiener),
        lp_scale=lp_scale,
    )

    calibration: dict[str, Any] = {}
    curves = {}
    moments = ("zms", "calib_ratio", "cov68", "cov95", "nll", "mean_variance")
    for q in QUANTITIES:
        pool = res.pools.get(q)
        if pool is None:
            calibration[q] = {"available": False, "reason": res.unavailable.get(q, "")}
            continue
        cal_pool = res.pools.get(f"{q}_calibrated")
        if cal_pool is not None:  # scale, then the stored sigma map
            rep = cal_pool.report(1.0, "checkpoint")
            rep["sigma_scale_applied"] = applied[q]
            rep["sigma_map_applied"] = maps[q].to_dict()["kind"]
            scale_only = pool.report(applied[q], "checkpoint")
            rep["scale_only"] = {
                k: scale_only.get(k)
                for k in (*moments, "spearman", "by_std_decile", "by_intensity")
            }
        else:
            rep = pool.report(applied[q], "checkpoint")
            rep["sigma_map_applied"] = None
        unscaled = pool.report(1.0, "unscaled", full=False)
        rep["unscaled"] = {k: unscaled[k] for k in moments}
        rep["available"] = True
        curves[q] = rep["curve"]
        calibration[q] = rep

    image_quality: dict[str, Any] = {}
    if res.has_gt:
        rows = res.per_sample
        for key, fields_ in (
            ("emitter", ("psnr", "ssim", "nrmse", "psnr_affine", "ssim_affine")),
            ("widefield", ("psnr", "ssim", "nrmse")),
            ("lp", ("psnr", "ssim", "nrmse")),
        ):
            image_quality[key] = {k: _mean_of([r[key] for r in rows], k) for k in fields_}
        pe, pw = image_quality["emitter"]["psnr"], image_quality["widefield"]["psnr"]
        image_quality["emitter_psnr_gain_over_widefield_db"] = (
            None if pe is None or pw is None else pe - pw
        )
        if wiener:
            image_quality.update(_wiener_summary(rows))

    self_check = _self_check_summary(res.per_sample)
    std_parts = {
        part: _mean_of([r.get("emitter_std_mean") or {} for r in res.per_sample], part)
        for part in ("total", "aleatoric", "epistemic")
    }
    notes = []
    if not res.has_gt:
        notes.append(
            f"no ground truth for split '{split}' ('{split}_gt' folder missing): only the "
            "raw-frame calibration was evaluated"
        )
    for q, why in res.unavailable.items():
        if res.has_gt or q == "raw":
            notes.append(f"{q}: {why}")
    doc: dict[str, Any] = {
        "format": "napari-sim-uq evaluation",
        "format_version": 1,
        "checkpoint": str(checkpoint),
        "model_type": ck.model_type,
        "config_hash": ck.config_hash,
        "package_version": ck.package_version,
        "epoch": ck.epoch,
        "data_dir": str(data_dir),
        "split": split,
        "n_samples": len(res.names),
        "n_stacks_in_split": res.meta["n_stacks_in_split"],
        "samples": res.names,
        "ground_truth": res.has_gt,
        "mc_samples": mc,
        "tile": tile,
        "device": str(dev),
        "normalization": {"mode": res.meta["norm_mode"], "gt_norm": res.meta["gt_norm"]},
        "sigma_scale": {"applied": applied, "checkpoint": dict(ck.sigma_scale or {})},
        "raw_variance": {
            "definition": "rec_std^2 + alpha*max(rec, 0) + beta + var_floor "
            "(normalised units), times sigma_scale['raw']^2",
            **res.camera,
        },
        "conventions": {
            "image_quality": "per stack, in ground-truth units; PSNR/SSIM data_range = "
            "max(gt) - min(gt) of that stack; NRMSE after 0.1/99.9 percentile normalisation "
            "of each image; means over stacks (PSNR in dB); light patterns: SSIM per frame",
            "widefield": "mean of the raw frames, cubic-spline upsampled to the HR grid "
            "(scipy.ndimage.zoom order=3, grid_mode=True, mode='nearest'), mapped by the "
            "least-squares affine fit a*wf+b against the ground truth of each stack; "
            "emitter psnr_affine/ssim_affine apply the same fit to the prediction",
            "wiener": "classical generalised Wiener SIM with the illumination estimated "
            "from each stack (napari_sim_uq.tasks.sim.classical), on the model's HR grid, "
            "mapped by the same affine fit as widefield; stacks whose estimate fails are "
            "left out (wiener_failed) and wiener_same_stacks compares on the others; "
            "lp_parametric: the light patterns 1 + m cos(2 pi k.r + phi) of the same "
            "estimates against the true patterns, ZMS/cov95 of their delta-method std "
            "(parameter noise only, no sigma scale), means over those stacks",
            "calibration": "pixels pooled over stacks in normalised model units; ZMS, calib "
            "ratio, NLL, cov68 (|r| <= sigma) and cov95 (|r| <= 2 sigma) over all pixels; "
            f"Spearman, UCE (20 equal-count bins), MACE, AUSE (normalised RMSE) over at most "
            f"{MAX_POOLED_PIXELS} pixels per quantity",
        },
        "notes": notes,
        "image_quality": image_quality,
        "calibration": calibration,
        "self_check": self_check,
        "emitter_std_mean": std_parts,
        "per_sample": res.per_sample,
    }
    if targets is not None:
        from napari_sim_uq.core.io.tiff_io import atomic_write
        from napari_sim_uq.core.plots import save_calibration_curves

        files = {"metrics": str(targets["metrics"])}
        if curves:
            titles = [f"{q} (s = {applied[q]:.3g})" for q in curves]
            em = calibration.get("emitter") or {}
            save_calibration_curves(
                curves,
                targets["curves"],
                titles=titles,
                conditional=em if em.get("by_std_decile") else None,
                conditional_title=f"emitter ZMS per std decile / intensity ({split})",
            )
            files["calibration_curves"] = str(targets["curves"])
        doc["files"] = files
        text = json.dumps(jsonable(doc), indent=2, allow_nan=False)
        atomic_write(
            targets["metrics"],
            lambda tmp: Path(tmp).write_text(text),
            overwrite=overwrite,
        )
    return jsonable(doc)


# --------------------------------------------------------------------------- calibrate


def _fit_maps(pool: Any, scale: float | None, method: str, n_bins: int) -> tuple[dict, dict]:
    """The emitter sigma map of ``method`` fitted on the pool's subset (``{}`` for
    ``"scale"`` or without an emitter pool), and the in-sample conditional tables."""
    from napari_sim_uq.core.uq.calibrate import SigmaMap, conditional_calibration
    from napari_sim_uq.tasks.sim.calibration import (
        SIM_INTENSITY_CLASSES,
        fit_emitter_map,
    )

    if pool is None or scale is None:
        return {}, {}
    r, s = pool.subset()
    sig = scale * s
    inten, cov = pool.extra("intensity"), pool.extra("covariate")

    def table(sigma: np.ndarray) -> dict:
        if inten is None:
            return {}
        c = conditional_calibration(r, sigma, inten, intensity_classes=SIM_INTENSITY_CLASSES)
        return {k: c[k] for k in ("pooled", "by_std_decile", "by_intensity")}

    tables = {"scale_only": table(sig)}
    if method == "scale":
        return {}, tables
    if method == "map":
        smap = SigmaMap.fit(r, sig, n_bins)
        after = smap(sig)
    else:
        smap = fit_emitter_map(r, sig, cov, n_bins)
        after = smap(sig, cov)
    tables["map"] = table(after)
    return {"emitter": smap}, tables


def calibrate_sim_job(
    checkpoint: str | os.PathLike,
    data_dir: str | os.PathLike,
    split: str = "val",
    *,
    mc_samples: int = 0,
    tile: int | None = None,
    device: str = "auto",
    max_samples: int | None = None,
    quantities: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    method: str = "map-intensity",
    n_bins: int = 10,
    pattern_estimate: bool = True,
) -> Generator[Event, None, dict]:
    """Job: fit ``s = sqrt(mean(r^2 / sigma^2))`` per quantity on ``data_dir/split`` and
    store it in the checkpoint; for the emitter (``method`` other than ``"scale"``) also a
    monotone map of the scaled std (:mod:`.calibration`): ``"map"`` one per-quantile map
    (:class:`~napari_sim_uq.core.uq.calibrate.SigmaMap`, ``n_bins`` bins of sigma),
    ``"map-intensity"`` (default) one per class of the predicted emitter's relative
    intensity (:func:`~napari_sim_uq.tasks.sim.calibration.fit_emitter_map`). ``"scale"``
    removes a stored map.

    ``pattern_estimate`` (with ground truth): also estimate the illumination of every
    stack (:mod:`~napari_sim_uq.tasks.sim.classical`) and store the sigma scale of the
    parametric light patterns' std over the stacks where the estimate passes
    (``extra["pattern_estimate_sigma_scale"]``, used by ``evaluate`` and the Reconstruct
    widget's Wiener option); it needs at least 2 such stacks.

    ``sigma`` is the model's own sigma (the checkpoint's current scales are not applied),
    so calibrating twice gives the same scales. ``quantities``: any of ``"emitter"``,
    ``"lp"``, ``"raw"``; ``None`` (default) fits every quantity the data allow (only
    ``"raw"`` without ground truth), an explicit quantity that cannot be fitted is an
    :class:`InputError`. The scales are written with
    :func:`~napari_sim_uq.core.io.checkpoint.update_sigma_scale` (atomic; nothing else in the
    file changes; other stored scales such as ``"psf"`` are kept), or, with ``out``, into a
    new checkpoint file ``out`` (never replacing an existing file).

    Returns ``{"checkpoint", "written", "split", "n_samples", "fitted", "sigma_scale",
    "previous_sigma_scale", "method", "sigma_map", "before", "after", "unscaled",
    "emitter_conditional", "n_pixels", "notes"}``; ``before`` / ``after`` hold ZMS, cov68
    and cov95 with the previous / new scales (``after``: scale only), and
    ``emitter_conditional`` the emitter's tables per std decile and intensity class
    (in-sample, on the calibration split) with the scale only and with the map.
    """
    if method not in CALIBRATION_METHODS:
        raise InputError(f"method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 2:
        raise InputError(f"n_bins must be an integer >= 2, got {n_bins!r}")
    if quantities is None:
        requested, explicit = list(QUANTITIES), False
    else:
        if isinstance(quantities, str):
            quantities = [quantities]
        requested = list(dict.fromkeys(quantities))
        bad = [q for q in requested if q not in QUANTITIES]
        if bad or not requested:
            raise InputError(
                f"quantities must be a non-empty list of {list(QUANTITIES)}, got {quantities!r}"
            )
        explicit = True
    target = Path(checkpoint) if out is None else Path(out)
    if out is not None and target.exists():
        raise FileExistsError(
            f"'{target}' already exists; not overwriting it (choose a new --out file, or "
            "leave out --out to update the checkpoint in place)"
        )
    model, ck, dev, mc, max_n = _prepare(checkpoint, device, mc_samples, tile, max_samples)
    previous = dict(ck.sigma_scale or {})
    before_scales = {q: float(previous.get(q, 1.0)) for q in QUANTITIES}
    if explicit and any(q in ("emitter", "lp") for q in requested):
        _, has_gt = _split_files(data_dir, split)
        if not has_gt:
            missing = [q for q in requested if q in ("emitter", "lp")]
            raise InputError(
                f"cannot calibrate {', '.join(missing)}: split '{split}' has no ground truth "
                f"('{Path(data_dir) / (split + '_gt')}' is missing); calibrate 'raw' only"
            )
    res = yield from _collect(
        model,
        ck,
        data_dir,
        split,
        stage="calibrate",
        mc_samples=mc,
        tile=tile,
        device=dev,
        max_samples=max_n,
        quantities=requested,
        scale_sets={"before": before_scales, "unscaled": _unit_scales()},
        image_quality=pattern_estimate,
        raw_scale=1.0,
        wiener=pattern_estimate,
    )
    if explicit:
        missing = [q for q in requested if q not in res.pools]
        if missing:
            raise InputError(
                "cannot calibrate "
                + "; ".join(f"{q}: {res.unavailable.get(q, 'not available')}" for q in missing)
            )
    if not res.pools:
        raise InputError(
            "nothing to calibrate: " + "; ".join(f"{q}: {w}" for q, w in res.unavailable.items())
        )
    fitted: dict[str, float] = {}
    for q, pool in res.pools.items():
        s = math.sqrt(pool.zms_unscaled)
        if not (math.isfinite(s) and s > 0):
            raise InputError(
                f"cannot calibrate {q}: the fitted scale is {s!r} (the residuals are all 0 "
                "or the sigmas are degenerate)"
            )
        fitted[q] = s
    new_scales = {**previous, **fitted}
    maps, conditional = _fit_maps(res.pools.get("emitter"), fitted.get("emitter"), method, n_bins)
    if not maps and method != "scale":
        notes_map = ["no emitter sigma map: the emitter was not calibrated (no ground truth)"]
    else:
        notes_map = []
    from napari_sim_uq.core.io.checkpoint import update_calibration
    from napari_sim_uq.tasks.sim.calibration import self_check_reference

    reference = self_check_reference(
        [r["self_check"] for r in res.per_sample], float(new_scales.get("raw", 1.0))
    )
    lp_zms = [
        r["wiener"]["lp_parametric"]["zms"]
        for r in res.per_sample
        if (((r.get("wiener") or {}).get("lp_parametric") or {}).get("zms") is not None)
    ]
    pattern_scale = (
        {"sigma_scale": math.sqrt(float(np.mean(lp_zms))), "n_stacks": len(lp_zms)}
        if len(lp_zms) >= 2
        else None
    )
    if pattern_estimate and pattern_scale is None:
        notes_map.append(
            "no pattern-estimate scale: fewer than 2 stacks with an estimable illumination "
            "and ground-truth patterns"
        )
    update_calibration(
        checkpoint,
        new_scales,
        {q: m.to_dict() for q, m in maps.items()},
        out=None if out is None else target,
        extra={"self_check": reference, PATTERN_ESTIMATE_SCALE_KEY: pattern_scale},
    )

    def short(rep: dict) -> dict:
        return {k: rep[k] for k in ("zms", "cov68", "cov95", "nll")}

    res.pools.pop("emitter_calibrated", None)

    before = {
        q: short(p.report(before_scales[q], "before", full=False)) for q, p in res.pools.items()
    }
    after = {q: short(p.report(fitted[q], None, full=False)) for q, p in res.pools.items()}
    unscaled = {q: short(p.report(1.0, "unscaled", full=False)) for q, p in res.pools.items()}
    notes = [f"{q} not fitted: {w}" for q, w in res.unavailable.items()] + notes_map
    return jsonable(
        {
            "checkpoint": str(checkpoint),
            "written": str(target),
            "split": split,
            "data_dir": str(data_dir),
            "n_samples": len(res.names),
            "mc_samples": mc,
            "fitted": fitted,
            "sigma_scale": new_scales,
            "previous_sigma_scale": previous,
            "method": method,
            "sigma_map": {q: m.to_dict() for q, m in maps.items()},
            "self_check_reference": reference,
            "pattern_estimate_sigma_scale": pattern_scale,
            "emitter_conditional": conditional,
            "before": before,
            "after": after,
            "unscaled": unscaled,
            "n_pixels": {q: p.n for q, p in res.pools.items()},
            "raw_variance": res.camera,
            "notes": notes,
        }
    )
