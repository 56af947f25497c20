"""SIM illumination-parameter estimation and Wiener SIM against the generator's truth
(issue 16). Prints tables and writes JSON.

    python bench/sim_patterns.py [--n 64] [--n-wiener 64] [--out bench/results/sim_patterns.json]

1. **Per-stack estimation on 256 x 256 fields** (default generator, HR factor 2; seed
   11000): per angle the relative wave-vector error, the largest per-frame phase error at
   the frame's centre and the modulation error; the fraction of angles within the issue's
   targets (< 0.5 % of |k|, < 0.1 rad, within 0.1) and the fraction flagged as failed.
2. **48 x 48 fields** (the demo's size): per stack, and for a ``--fixed-instrument``
   dataset (period, orientation, modulation and PSF width drawn once, phases per stack)
   from the dataset (:func:`estimate_patterns_dataset`).
3. **Wiener SIM vs widefield** on 48 x 48 stacks like the demo's (seed 12000): emitter PSNR
   (oracle affine fit as in ``sim-uq evaluate``) of the widefield baseline, Wiener with the
   true parameters (oracle), Wiener with per-stack estimates (stacks whose estimate fails
   are counted and left out), and on the fixed-instrument set with the dataset estimate.
4. **Parametric light patterns** of the per-stack estimates on those 48 x 48 stacks:
   PSNR against the true patterns, and the calibration of their delta-method std
   (:mod:`napari_sim_uq.tasks.sim.classical.patterns`) before and after one sigma scale
   fitted on a separate calibration set (seed 12500).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, machine_info, write_result
from napari_sim_uq.core.uq import metrics as M
from napari_sim_uq.tasks.sim.calibration import PATTERN_FRINGE_CLASSES
from napari_sim_uq.tasks.sim.classical.estimate import (
    PatternEstimate,
    estimate_patterns,
    estimate_patterns_dataset,
    pattern_errors,
)
from napari_sim_uq.tasks.sim.classical.patterns import parametric_patterns
from napari_sim_uq.tasks.sim.classical.wiener import wiener_sim_array
from napari_sim_uq.tasks.sim.evaluate import _affine_fit, widefield_baseline
from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_sample

F = 2


def errors_table(samples, ests) -> dict:
    k, ph, mo, ok = [], [], [], []
    for s, est in zip(samples, ests, strict=True):
        p = s.params
        e = pattern_errors(est, p["wave_vectors"], p["phases"], p["modulation"], F)
        k += list(e["k_rel"])
        ph += list(e["phase_max"])
        mo += list(e["modulation"])
        ok += list(est.ok)
    k, ph, mo, ok = map(np.asarray, (k, ph, mo, ok))
    good = (k < 0.005) & (ph < 0.1) & (mo < 0.1)
    return {
        "n_angles": int(k.size),
        "k_rel_median_pct": float(np.median(k) * 100),
        "k_rel_p95_pct": float(np.percentile(k, 95) * 100),
        "phase_max_median_rad": float(np.median(ph)),
        "phase_max_p95_rad": float(np.percentile(ph, 95)),
        "modulation_err_median": float(np.median(mo)),
        "frac_k_within_0.5pct": float(np.mean(k < 0.005)),
        "frac_phase_within_0.1rad": float(np.mean(ph < 0.1)),
        "frac_modulation_within_0.1": float(np.mean(mo < 0.1)),
        "frac_all_within_targets": float(np.mean(good)),
        "frac_flagged_failed": float(np.mean(~ok)),
        "frac_wrong_and_not_flagged": float(np.mean(ok & (k >= 0.02))),
    }


def psnr_fit(img, gt) -> float:
    a, b = _affine_fit(img.astype(np.float64), gt)
    return M.psnr(a * img + b, gt, float(gt.max() - gt.min()))


def oracle(s, shape) -> PatternEstimate:
    p = s.params
    return PatternEstimate.from_truth(
        p["wave_vectors"], p["phases"], p["modulation"], p["psf_sigma_lr"], shape, F
    )


#: classes of the true pattern value for the conditional calibration of the pattern std
FRINGE_CLASSES = PATTERN_FRINGE_CLASSES


def pattern_calibration(cfg, test_samples, n_calib: int) -> dict:
    """Parametric light patterns of the per-stack estimates on ``test_samples``: PSNR, and
    the calibration of their delta-method std, raw and after one sigma scale fitted on a
    separate calibration set (seed 12500), pooled, per std decile and per fringe class
    (:func:`~napari_sim_uq.core.uq.calibrate.conditional_calibration`)."""
    from napari_sim_uq.core.uq.calibrate import conditional_calibration

    def rows(samples):
        out = []
        for s in samples:
            est = estimate_patterns(s.raw, binning=F)
            if not est.all_ok:
                continue
            mu, sd = parametric_patterns(est, F)
            gt = s.patterns.astype(np.float64)
            out.append((M.psnr(mu, gt, float(gt.max() - gt.min())), gt - mu, sd, gt))
        return out

    calib = rows([generate_sample(cfg, 12500, i) for i in range(n_calib)])
    scale2 = float(
        np.mean(np.concatenate([(r / np.maximum(sd, 1e-9)).ravel() ** 2 for _, r, sd, _ in calib]))
    )
    test = rows(test_samples)
    r = np.concatenate([r.ravel() for _, r, _, _ in test])
    sd = np.concatenate([sd.ravel() for _, _, sd, _ in test])
    gt = np.concatenate([g.ravel() for _, _, _, g in test])
    z2 = (r / np.maximum(sd, 1e-9)) ** 2
    zs2 = z2 / scale2
    cond = conditional_calibration(
        r, sd * math.sqrt(scale2), gt, mask=sd > 0, intensity_classes=FRINGE_CLASSES
    )
    return {
        "n_test_stacks": len(test),
        "n_calib_stacks": len(calib),
        "psnr_mean": float(np.mean([p for p, _, _, _ in test])),
        "psnr_min": float(np.min([p for p, _, _, _ in test])),
        "zms_unscaled": float(np.mean(z2)),
        "sigma_scale_from_calib": math.sqrt(scale2),
        "zms_scaled": float(np.mean(zs2)),
        "cov95_scaled": float(np.mean(zs2 <= 1.96**2)),
        "spearman_sigma_abs_err": float(M.spearman(sd, np.abs(r))),
        "scaled_zms_by_std_decile": [row["zms"] for row in cond["by_std_decile"]],
        "scaled_by_fringe_class": {
            k: {"n": v["n"], "zms": v["zms"], "cov95": v["cov95"]}
            for k, v in cond["by_intensity"].items()
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64, help="stacks per estimation set")
    ap.add_argument("--n-wiener", type=int, default=64, help="stacks for Wiener vs widefield")
    ap.add_argument("--out", type=Path, default=RESULTS / "sim_patterns.json")
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 3 stacks per set, 128 x 128 fields"
    )
    ap.add_argument(
        "--patterns-only",
        action="store_true",
        help="only part 4 (the parametric patterns), merged into an existing --out JSON",
    )
    args = ap.parse_args()
    big = 256
    if args.quick:
        args.n, args.n_wiener, big = 3, 3, 128
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = {
        "benchmark": "sim_patterns",
        "machine": machine_info([torch.device("cpu")]),
        "hr_factor": F,
        "large_field": big,
    }

    t0 = time.perf_counter()
    if args.patterns_only:
        import json

        cfg48 = SynthConfig(lr_size=(48, 48), hr_factor=F)
        sw = [generate_sample(cfg48, 12000, i) for i in range(args.n_wiener)]
        result = json.loads(args.out.read_text()) if args.out.exists() else {}
        result["parametric_patterns_48"] = pattern_calibration(cfg48, sw, args.n_wiener)
        for k, v in result["parametric_patterns_48"].items():
            print(f"{k:32s} {v}")
        write_result(args.out, result)
        return
    cfg256 = SynthConfig(lr_size=(big, big), hr_factor=F)
    s256 = [generate_sample(cfg256, 11000, i) for i in range(args.n)]
    e256 = [estimate_patterns(s.raw, binning=F) for s in s256]
    result["per_stack_256"] = errors_table(s256, e256)
    result["per_stack_256"]["seconds_per_stack"] = (time.perf_counter() - t0) / args.n

    cfg48 = SynthConfig(lr_size=(48, 48), hr_factor=F)
    s48 = [generate_sample(cfg48, 11500, i) for i in range(args.n)]
    result["per_stack_48"] = errors_table(s48, [estimate_patterns(s.raw, binning=F) for s in s48])

    fixed = SynthConfig(lr_size=(48, 48), hr_factor=F, fixed_instrument=True, instrument_seed=5)
    sfx = [generate_sample(fixed, 11700, i) for i in range(args.n)]
    per_fx = [estimate_patterns(s.raw, binning=F) for s in sfx]
    result["fixed_instrument_48_per_stack"] = errors_table(sfx, per_fx)
    ds = estimate_patterns_dataset([s.raw for s in sfx], binning=F)
    result["fixed_instrument_48_dataset"] = errors_table(sfx, ds.stacks)
    result["fixed_instrument_48_dataset"]["psf_sigma_raw_px"] = ds.psf_sigma

    # Wiener vs widefield, 48 x 48 like the demo's data
    sw = [generate_sample(cfg48, 12000, i) for i in range(args.n_wiener)]
    rows = {"widefield": [], "wiener_oracle": [], "wiener_estimated": []}
    failed = 0
    for s in sw:
        gt = s.emitter.astype(np.float64)
        rows["widefield"].append(psnr_fit(widefield_baseline(s.raw, F), gt))
        rows["wiener_oracle"].append(
            psnr_fit(wiener_sim_array(s.raw, oracle(s, (48, 48)), hr_factor=F).image, gt)
        )
        est = estimate_patterns(s.raw, binning=F)
        if est.all_ok:
            rows["wiener_estimated"].append(
                (len(rows["widefield"]) - 1, psnr_fit(wiener_sim_array(s.raw, est).image, gt))
            )
        else:
            failed += 1
    idx = [i for i, _ in rows["wiener_estimated"]]
    wiener = {
        "n_stacks": len(sw),
        "widefield_psnr": float(np.mean(rows["widefield"])),
        "wiener_oracle_psnr": float(np.mean(rows["wiener_oracle"])),
        "wiener_estimated_n": len(idx),
        "wiener_estimated_failed": failed,
        "wiener_estimated_psnr": float(np.mean([v for _, v in rows["wiener_estimated"]]))
        if idx
        else None,
        "widefield_psnr_same_stacks": float(np.mean([rows["widefield"][i] for i in idx]))
        if idx
        else None,
    }
    fx_wf, fx_wn, fx_fail = [], [], 0
    for s, est in zip(sfx, ds.stacks, strict=True):
        if not est.all_ok:  # e.g. this stack's own modulation estimate is implausible
            fx_fail += 1
            continue
        gt = s.emitter.astype(np.float64)
        fx_wf.append(psnr_fit(widefield_baseline(s.raw, F), gt))
        fx_wn.append(psnr_fit(wiener_sim_array(s.raw, est, hr_factor=F).image, gt))
    wiener["fixed_instrument_widefield_psnr"] = float(np.mean(fx_wf))
    wiener["fixed_instrument_wiener_dataset_estimate_psnr"] = float(np.mean(fx_wn))
    wiener["fixed_instrument_stacks_failed"] = fx_fail
    result["wiener_48"] = wiener

    result["parametric_patterns_48"] = pattern_calibration(cfg48, sw, args.n_wiener)
    result["seconds"] = time.perf_counter() - t0

    print(
        f"{'set':34s} {'angles':>6s} {'k<0.5%':>7s} {'ph<0.1':>7s} {'m<0.1':>6s} "
        f"{'all':>6s} {'flagged':>7s} {'wrong,unflagged':>15s}"
    )
    for key in (
        "per_stack_256",
        "per_stack_48",
        "fixed_instrument_48_per_stack",
        "fixed_instrument_48_dataset",
    ):
        r = result[key]
        print(
            f"{key:34s} {r['n_angles']:6d} {r['frac_k_within_0.5pct']:7.3f} "
            f"{r['frac_phase_within_0.1rad']:7.3f} {r['frac_modulation_within_0.1']:6.3f} "
            f"{r['frac_all_within_targets']:6.3f} {r['frac_flagged_failed']:7.3f} "
            f"{r['frac_wrong_and_not_flagged']:15.3f}"
        )
    print()
    for k, v in {**wiener, **result["parametric_patterns_48"]}.items():
        print(f"{k:48s} {v if not isinstance(v, float) else round(v, 3)}")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
