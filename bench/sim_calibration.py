"""SIM emitter calibration beyond the calibration split (issue 15): a checkpoint is
recalibrated on one split with each method (one sigma scale; scale + per-intensity-class
sigma map) and evaluated on several held-out splits: like the training data (48 x 48 and
96 x 96 fields), made differently (Airy PSF and thin structures), and with optics or photon
levels far outside the training ranges. Prints a table and writes JSON.

    python bench/sim_calibration.py --demo-dir sim-uq-demo [--n 64] [--mc-samples 0]
    python bench/sim_calibration.py --demo-dir D --checkpoint ensemble.pt   # another model

``--checkpoint`` evaluates another model of the demo's data (e.g. a deep ensemble made by
``sim-uq train --ensemble N`` or ``sim-uq ensemble``) instead of the demo's own.

``--demo-dir`` is the output of ``sim-uq demo`` (its ``checkpoints/best.pt`` and ``data/``
with the ``calib`` split); the other splits are generated into ``data/`` when missing
(seeds 4000-9500, never used by the demo). Reported per split: emitter PSNR (and
widefield), pooled ZMS / cov95 / Spearman, the ZMS range over std deciles, ZMS on
background and structure pixels, the fraction of stacks the raw-domain self-check flags,
and the mean aleatoric / epistemic emitter std (with ``--mc-samples``).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from _common import RESULTS, machine_info, write_result
from napari_sim_uq.core.events import run
from napari_sim_uq.tasks.sim.evaluate import calibrate_sim_job, evaluate_sim_job
from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_dataset, shifted_config

#: split name -> (seed, changes to the demo's generator settings)
SPLITS = {
    "test": None,  # the demo's own test split
    "test96": (6000, {"lr_size": (96, 96)}),
    "test_shifted": (4000, "shifted"),
    "far_psf": (7000, {"psf_sigma_lr": (2.0, 2.6)}),
    "far_dim": (8000, {"photons": (15.0, 40.0)}),
    "far_period": (9000, {"period_lr": (4.5, 5.5)}),
    "far_bright": (9500, {"photons": (2000.0, 5000.0)}),
}
METHODS = ("scale", "map-intensity")


def _ensure_split(data: Path, name: str, n: int) -> None:
    spec = SPLITS[name]
    if spec is None or (data / name).is_dir():
        return
    seed, change = spec
    base = SynthConfig(lr_size=(48, 48), hr_factor=2)
    if change == "shifted":
        cfg = shifted_config(base)
    else:
        d = base.to_dict()
        d.update(change)
        cfg = SynthConfig.from_dict(d)
    run(generate_dataset(data, n, cfg, seed=seed, split=name))


def _row(doc: dict) -> dict:
    em = doc["calibration"]["emitter"]
    iq = doc["image_quality"]
    dec = [r["zms"] for r in em["by_std_decile"] if r["zms"] is not None]
    by = em["by_intensity"]
    return {
        "n_stacks": doc["n_samples"],
        "emitter_psnr": iq["emitter"]["psnr"],
        "widefield_psnr": iq["widefield"]["psnr"],
        "zms": em["zms"],
        "cov95": em["cov95"],
        "spearman": em["spearman"],
        "zms_std_decile_min": min(dec),
        "zms_std_decile_max": max(dec),
        "zms_background": by["background"]["zms"],
        "zms_structure": by["structure"]["zms"],
        "zms_by_intensity": {k: v["zms"] for k, v in by.items()},
        "self_check_flagged": doc["self_check"]["fraction_flagged"],
        "std_mean": doc["emitter_std_mean"],
    }


def _num(d: dict | None, key: str) -> str:
    v = (d or {}).get(key)
    return f"{'-':>8}" if v is None else f"{v:8.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo-dir", type=Path, required=True)
    ap.add_argument("--n", type=int, default=64, help="stacks per generated split")
    ap.add_argument("--mc-samples", type=int, default=0)
    ap.add_argument("--splits", nargs="+", default=list(SPLITS))
    ap.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="model to evaluate (default: DEMO_DIR/checkpoints/best.pt)",
    )
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--out", type=Path, default=RESULTS / "sim_calibration.json")
    args = ap.parse_args()
    data = args.demo_dir / "data"
    for name in args.splits:
        _ensure_split(data, name, args.n)
    machine = machine_info([torch.device("cpu")])
    source = args.checkpoint or args.demo_dir / "checkpoints" / "best.pt"
    result: dict = {
        "machine": machine,
        "checkpoint": str(source),
        "mc_samples": args.mc_samples,
        "methods": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            ck = Path(tmp) / f"{method}.pt"
            shutil.copy(source, ck)
            cal = run(
                calibrate_sim_job(
                    ck, data, "calib", mc_samples=args.mc_samples, device="cpu", method=method
                )
            )
            rows = {}
            for name in args.splits:
                doc = run(
                    evaluate_sim_job(ck, data, name, mc_samples=args.mc_samples, device="cpu")
                )
                rows[name] = _row(doc)
            result["methods"][method] = {
                "calib_stacks": cal["n_samples"],
                "sigma_scale": cal["sigma_scale"],
                "self_check_reference": cal["self_check_reference"],
                "splits": rows,
            }
    print(
        f"{'method':<14} {'split':<13} {'PSNR':>6} {'WF':>6} {'ZMS':>6} {'cov95':>6} "
        f"{'rho':>5} {'dec min':>7} {'dec max':>7} {'bg':>6} {'struct':>6} {'flagged':>7} "
        f"{'alea sd':>8} {'epi sd':>8}"
    )
    for method, m in result["methods"].items():
        for name, r in m["splits"].items():
            print(
                f"{method:<14} {name:<13} {r['emitter_psnr']:6.2f} {r['widefield_psnr']:6.2f} "
                f"{r['zms']:6.3g} {r['cov95']:6.3f} {r['spearman']:5.2f} "
                f"{r['zms_std_decile_min']:7.3g} {r['zms_std_decile_max']:7.3g} "
                f"{r['zms_background']:6.3g} {r['zms_structure']:6.3g} "
                f"{r['self_check_flagged']:7.1%} {_num(r['std_mean'], 'aleatoric')} "
                f"{_num(r['std_mean'], 'epistemic')}"
            )
    write_result(args.out, result)


if __name__ == "__main__":
    main()
