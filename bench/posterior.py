"""VAE latent posterior (``sim-uq posterior``): speed and calibration on held-out images.

    python bench/posterior.py                     # ~6 CPU minutes with the bundled VAE
    python bench/posterior.py --n-images 8        # quicker
    python bench/posterior.py --quick             # tiny, for a smoke run

Speed: one 64 x 64 image (a held-out crop, noise and a masked box), K = 16 latents, 10
starts, 64 samples, on ``torch.get_num_threads()`` threads; the median of ``--repeats``
runs and the split into optimisation (Adam + L-BFGS + Newton), exact Hessians and sampling.

Calibration, per split: ``--n-images`` held-out windows of ``P x P`` pixels (the VAE's
patch, 64) at random places of 256 x 256 images that no training or calibration step used,
normalised like their whole image (a region of an acquisition); the posterior mean and std
against the clean window, in the image's units:

- ``box``: images made like the 2D sample (:func:`napari_sim_uq.tasks.sim.samples.
  image2d_clean`), Gaussian noise of 5 % of the image's range, one missing box of 1/8 to
  1/2 of the window per side; the noise std is given;
- ``box-estimated``: the same with the noise std estimated from the image;
- ``half``: the right half missing (as in DeepUQ's example) and noise of 10 %;
- ``other-generator``: nuclei drawn by another generator (``synth2d`` "nuclei" with a
  smooth background), made differently from the training and calibration data.

For missing and observed pixels, and each split by intensity class (structure: clean
intensity above 0.25 of the normalised range), before and after the checkpoint's
calibration (:mod:`napari_sim_uq.tasks.vae2d.calibrate`; one uncalibrated posterior per
window, the calibrated std is the same std times the table's per-pixel scale): 95 %
coverage of the clean image by the central interval (mean +- 1.96 std), ZMS, RMSE, mean
std and Spearman(std, |err|); the std ratio missing / observed; ZMS per std decile; chi^2
per observed pixel at the MAP (mean and range over windows) and the number of modes.
Targets (issue 13): chi^2 in [0.8, 1.25]; std missing > observed; coverage in
[0.85, 0.99] on missing and on observed pixels.

Prints the tables and writes ``bench/results/posterior.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, write_result

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "example_data" / "vae2d_demo_model.pt"


def windows(kind: str, n: int, patch: int, seed: int) -> list[dict]:
    """``n`` clean ``patch``-pixel windows at random places of held-out 256 x 256 images,
    with the whole image's normalisation (as a region of an acquisition)."""
    from napari_sim_uq.core.data.normalization import Normalization
    from napari_sim_uq.tasks.ae2d.synth2d import generate_image
    from napari_sim_uq.tasks.sim.samples import image2d_clean

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if kind == "sample":
            img = image2d_clean(seed=9000 + seed * 1000 + i, size=256)
        else:  # another generator: synth2d nuclei with a smooth background, 100-1600 counts
            img = 100 + 1500 * generate_image(256, (seed, 7, i), "nuclei", background=0.1)
        norm = Normalization("percentile").fit(img, "test image")
        y, x = rng.integers(0, 256 - patch + 1, 2)
        out.append({"clean": img[y : y + patch, x : x + patch].astype(np.float32), "norm": norm})
    return out


def corrupt(w: dict, split: str, rng: np.random.Generator):
    clean = w["clean"]
    h, wd = clean.shape
    frac = 0.1 if split == "half" else 0.05
    sigma = frac * w["norm"].scale
    noisy = clean + rng.normal(0, sigma, clean.shape).astype(np.float32)
    observed = np.ones(clean.shape, bool)
    if split == "half":
        observed[:, wd // 2 :] = False
    else:
        bh, bw = int(rng.integers(h // 8, h // 2 + 1)), int(rng.integers(wd // 8, wd // 2 + 1))
        y, x = rng.integers(0, h - bh + 1), rng.integers(0, wd - bw + 1)
        observed[y : y + bh, x : x + bw] = False
    return noisy, observed, sigma


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if a.size > 2 else float("nan")


def stats(err: np.ndarray, std: np.ndarray) -> dict:
    if err.size == 0:
        return {"n": 0}
    z = err / std
    return {
        "n": int(err.size),
        "cov95": float(np.mean(np.abs(z) < 1.96)),
        "zms": float(np.mean(z * z)),
        "rmse": float(np.sqrt(np.mean(err * err))),
        "mean_std": float(std.mean()),
        "spearman": spearman(std, np.abs(err)),
    }


CLASSES = (
    "missing",
    "observed",
    "missing/background",
    "missing/structure",
    "observed/background",
    "observed/structure",
)


def summarise(rows: list[dict], key: str) -> dict:
    out = {}
    for cls in CLASSES:
        err = np.concatenate([r["err"][r[cls]] for r in rows])
        std = np.concatenate([r[key][r[cls]] for r in rows])
        out[cls] = stats(err, std)
    # the std ratio and ZMS per std decile, pooled over missing and observed pixels
    out["std_ratio_missing_observed"] = out["missing"]["mean_std"] / out["observed"]["mean_std"]
    err = np.concatenate([r["err"].ravel() for r in rows])
    std = np.concatenate([r[key].ravel() for r in rows])
    edges = np.quantile(std, np.linspace(0, 1, 11))
    idx = np.clip(np.searchsorted(edges, std, side="right") - 1, 0, 9)
    out["zms_per_std_decile"] = [
        float(np.mean((err[idx == d] / std[idx == d]) ** 2)) for d in range(10)
    ]
    return out


def run_split(model, ck, split: str, n: int, seed: int, n_samples: int) -> dict:
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.vae2d.reconstruct import posterior_2d
    from napari_sim_uq.tasks.vae2d.scales import pixel_scales

    table = ck.extra.get("posterior_calibration")
    kind = "other" if split == "other-generator" else "sample"
    rng = np.random.default_rng(seed + 17)
    rows, chi2, modes, ratio, secs = [], [], [], [], []
    for w in windows(kind, n, int(model.patch), seed):
        noisy, observed, sigma = corrupt(w, split, rng)
        given = None if split == "box-estimated" else sigma
        t0 = time.perf_counter()
        pred = run(
            posterior_2d(
                model,
                ck,
                noisy,
                mask=observed,
                noise_sigma=given,
                n_samples=n_samples,
                seed=seed,
                normalization=w["norm"],
                calibrated=False,
            )
        )
        secs.append(time.perf_counter() - t0)
        std = pred.arrays["posterior_std"]
        structure = w["norm"].apply(w["clean"]) > 0.25
        rows.append(
            {
                "err": pred.arrays["posterior_mean"] - w["clean"],
                "std_raw": std,
                "std_cal": std
                * pixel_scales(table, observed, w["norm"].apply(pred.arrays["posterior_mean"]))
                if table
                else std,
                "missing": ~observed,
                "observed": observed,
                "missing/background": ~observed & ~structure,
                "missing/structure": ~observed & structure,
                "observed/background": observed & ~structure,
                "observed/structure": observed & structure,
            }
        )
        chi2.append(pred.meta["chi2_per_observed_pixel_at_map"])
        modes.append(pred.meta["modes_per_tile"][0])
        ratio.append(pred.meta["noise_sigma"] / sigma)
    values, counts = np.unique(modes, return_counts=True)
    return {
        "uncalibrated": summarise(rows, "std_raw"),
        "calibrated": summarise(rows, "std_cal"),
        "chi2_at_map": {
            "mean": float(np.mean(chi2)),
            "min": float(np.min(chi2)),
            "max": float(np.max(chi2)),
        },
        "n_modes": {str(k): int(v) for k, v in zip(values, counts, strict=True)},
        "noise_sigma_estimated_over_true": float(np.mean(ratio)),
        "seconds_per_image": float(np.mean(secs)),
    }


def speed(model, ck, repeats: int) -> dict:
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.vae2d.reconstruct import posterior_2d

    w = windows("sample", 1, 64, 99)[0]
    noisy, observed, sigma = corrupt(w, "box", np.random.default_rng(0))
    runs = []
    for r in range(repeats + 1):
        pred = run(posterior_2d(model, ck, noisy, mask=observed, noise_sigma=sigma, seed=r))
        if r:  # the first run warms up (allocations, torch.func tracing)
            runs.append(pred.meta["timings"])
    keys = ("total_s", "optimisation_s", "hessians_s", "sampling_s")
    return {k: statistics.median(t[k] for t in runs) for k in keys} | {"runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--n-images", type=int, default=16)
    ap.add_argument("--n-samples", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--splits", default="box,box-estimated,half,other-generator")
    ap.add_argument("--quick", action="store_true", help="2 images per split, 1 repeat")
    ap.add_argument("--out", default=str(RESULTS / "posterior.json"))
    args = ap.parse_args()
    if args.quick:
        args.n_images, args.repeats = 2, 1

    from napari_sim_uq.tasks.vae2d.reconstruct import load_vae_model

    model, ck = load_vae_model(args.model)
    print(
        f"model {args.model}: patch {model.patch}, K = {model.latent_dim}, sigma_model "
        f"{ck.extra['sigma_model']:.4f}; {torch.get_num_threads()} threads"
    )
    sp = speed(model, ck, args.repeats)
    print(
        f"\nspeed, one 64 x 64 image, K = {model.latent_dim}, 10 starts, 64 samples (median of "
        f"{args.repeats}): total {sp['total_s']:.2f} s = optimisation {sp['optimisation_s']:.2f}"
        f" + Hessians {sp['hessians_s']:.2f} + sampling {sp['sampling_s']:.2f} s"
    )
    result = {"machine": machine_info([torch.device("cpu")]), "model": args.model, "speed": sp}
    result["splits"] = {}
    head = (
        f"{'split':16s} {'pixels':20s} {'cov95':>6s} {'ZMS':>6s} {'RMSE':>7s} {'std':>7s} "
        f"{'Spear':>6s} | {'cov95':>6s} {'ZMS':>6s} {'std':>7s}"
    )
    print("\n" + " " * 38 + "uncalibrated" + " " * 22 + "| calibrated")
    print(head + "\n" + "-" * len(head))
    for i, split in enumerate(s for s in args.splits.split(",") if s):
        res = run_split(model, ck, split, args.n_images, 100 + i, args.n_samples)
        result["splits"][split] = res
        for cls in CLASSES:
            u, c = res["uncalibrated"][cls], res["calibrated"][cls]
            if not u["n"]:
                continue
            print(
                f"{split:16s} {cls:20s} {u['cov95']:6.3f} {u['zms']:6.3f} {u['rmse']:7.1f} "
                f"{u['mean_std']:7.1f} {u['spearman']:6.3f} | {c['cov95']:6.3f} {c['zms']:6.3f} "
                f"{c['mean_std']:7.1f}"
            )
        c2 = res["chi2_at_map"]
        print(
            f"{split:16s} chi2 at the MAP {c2['mean']:.3f} ({c2['min']:.2f}-{c2['max']:.2f}); "
            f"std ratio missing/observed {res['uncalibrated']['std_ratio_missing_observed']:.2f}"
            f" -> {res['calibrated']['std_ratio_missing_observed']:.2f} calibrated; "
            f"ZMS per std decile (calibrated) "
            f"{' '.join(f'{v:.2f}' for v in res['calibrated']['zms_per_std_decile'])}; "
            f"modes {res['n_modes']}; noise estimate / truth "
            f"{res['noise_sigma_estimated_over_true']:.3f}; {res['seconds_per_image']:.1f} s/image"
        )
    write_result(Path(args.out), result)


if __name__ == "__main__":
    main()
