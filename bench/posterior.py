"""VAE latent posterior (``sim-uq posterior``): speed and calibration on held-out images.

    python bench/posterior.py                     # ~6 CPU minutes with the bundled VAE
    python bench/posterior.py --n-images 8        # quicker
    python bench/posterior.py --quick             # tiny, for a smoke run

Speed: one 64 x 64 image (a held-out crop, noise and a masked box), K = 16 latents, 10
starts, 64 samples, on ``torch.get_num_threads()`` threads; the median of ``--repeats``
runs and the split into optimisation (Adam + L-BFGS + Newton), exact Hessians and sampling.

Calibration, per split (``--n-images`` held-out 64 x 64 images each; the posterior mean and
std against the clean image, in the image's units):

- ``box``: images made like the 2D sample (:func:`napari_sim_uq.tasks.sim.samples.
  image2d_clean`, seeds never used in training) cropped where they hold structure, Gaussian
  noise of 5 % of the range, one missing box of 24 x 32 pixels; the noise std is given;
- ``box-estimated``: the same with the noise std estimated from the image;
- ``half``: the right half missing (as in DeepUQ's example) and noise of 10 %;
- ``other-generator``: nuclei drawn by another generator (``synth2d`` "nuclei", made
  differently from the training data), noise of 5 %, a missing box.

For masked and observed pixels separately: 95 % coverage of the clean image by the central
posterior interval (mean +- 1.96 std), ZMS (mean of err^2 / std^2), RMSE, mean std and
Spearman(std, |err|); the std ratio masked / observed; chi^2 per observed pixel at the MAP
(mean and range over images) and the number of modes. Targets (issue): chi^2 in
[0.8, 1.25]; std masked > observed; coverage in [0.85, 0.99] on both.

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


def crops(kind: str, n: int, size: int, seed: int) -> list[np.ndarray]:
    """``n`` clean ``size``-pixel crops holding structure (the 99th percentile of the crop
    is above a third of the image's range), scaled to [0, 1] by their source image."""
    from napari_sim_uq.tasks.ae2d.synth2d import generate_image
    from napari_sim_uq.tasks.sim.samples import image2d_clean

    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    i = 0
    while len(out) < n:
        if kind == "sample":
            img = image2d_clean(seed=9000 + seed * 1000 + i, size=256)
        else:
            img = generate_image(256, (seed, 7, i), "nuclei", background=0.1)
        i += 1
        img = (img - img.min()) / (img.max() - img.min())
        for _ in range(4):
            y, x = rng.integers(0, 256 - size, 2)
            c = img[y : y + size, x : x + size]
            if np.percentile(c, 99) > 1 / 3 and len(out) < n:
                out.append(c.astype(np.float32))
    return out


def corrupt(clean: np.ndarray, split: str, rng: np.random.Generator):
    h, w = clean.shape
    sigma = 0.1 if split == "half" else 0.05
    noisy = clean + rng.normal(0, sigma, clean.shape).astype(np.float32)
    observed = np.ones(clean.shape, bool)
    if split == "half":
        observed[:, w // 2 :] = False
    else:
        bh, bw = min(24, h // 2), min(32, w // 2)
        y, x = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
        observed[y : y + bh, x : x + bw] = False
    return noisy, observed, sigma


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def summarise(rows: list[dict]) -> dict:
    out = {}
    for part in ("masked", "observed"):
        err = np.concatenate([r[part]["err"] for r in rows])
        std = np.concatenate([r[part]["std"] for r in rows])
        z = err / std
        out[part] = {
            "cov95": float(np.mean(np.abs(z) < 1.96)),
            "zms": float(np.mean(z * z)),
            "rmse": float(np.sqrt(np.mean(err * err))),
            "mean_std": float(std.mean()),
            "spearman": spearman(std, np.abs(err)),
        }
    out["std_ratio_masked_observed"] = out["masked"]["mean_std"] / out["observed"]["mean_std"]
    chi2 = [r["chi2"] for r in rows]
    out["chi2_at_map"] = {
        "mean": float(np.mean(chi2)),
        "min": float(np.min(chi2)),
        "max": float(np.max(chi2)),
    }
    modes = [r["n_modes"] for r in rows]
    values, counts = np.unique(modes, return_counts=True)
    out["n_modes"] = {str(k): int(v) for k, v in zip(values, counts, strict=True)}
    out["noise_sigma_estimated_over_true"] = float(np.mean([r["sigma_ratio"] for r in rows]))
    out["seconds_per_image"] = float(np.mean([r["seconds"] for r in rows]))
    return out


def run_split(model, ck, split: str, n: int, seed: int, n_samples: int) -> dict:
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.vae2d.reconstruct import posterior_2d

    kind = "other" if split == "other-generator" else "sample"
    rng = np.random.default_rng(seed + 17)
    rows = []
    for clean in crops(kind, n, int(model.patch), seed):
        noisy, observed, sigma = corrupt(clean, split, rng)
        given = None if split == "box-estimated" else sigma
        t0 = time.perf_counter()
        pred = run(
            posterior_2d(
                model, ck, noisy, mask=observed, noise_sigma=given, n_samples=n_samples, seed=seed
            )
        )
        err = pred.arrays["posterior_mean"] - clean
        std = pred.arrays["posterior_std"]
        rows.append(
            {
                "masked": {"err": err[~observed], "std": std[~observed]},
                "observed": {"err": err[observed], "std": std[observed]},
                "chi2": pred.meta["chi2_per_observed_pixel_at_map"],
                "n_modes": pred.meta["modes_per_tile"][0],
                "sigma_ratio": pred.meta["noise_sigma"] / sigma,
                "seconds": time.perf_counter() - t0,
            }
        )
    return summarise(rows)


def speed(model, ck, repeats: int) -> dict:
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.vae2d.reconstruct import posterior_2d

    clean = crops("sample", 1, 64, 99)[0]
    noisy, observed, sigma = corrupt(clean, "box", np.random.default_rng(0))
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
        f"{'split':16s} {'part':9s} {'cov95':>6s} {'ZMS':>6s} {'RMSE':>7s} {'std':>7s} "
        f"{'Spear':>6s}   chi2@MAP (min-max)   std ratio  modes"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for i, split in enumerate(s for s in args.splits.split(",") if s):
        res = run_split(model, ck, split, args.n_images, 100 + i, args.n_samples)
        result["splits"][split] = res
        for part in ("masked", "observed"):
            m = res[part]
            tail = ""
            if part == "masked":
                c = res["chi2_at_map"]
                tail = (
                    f"   {c['mean']:.3f} ({c['min']:.2f}-{c['max']:.2f})    "
                    f"{res['std_ratio_masked_observed']:.2f}     {res['n_modes']}"
                )
            print(
                f"{split:16s} {part:9s} {m['cov95']:6.3f} {m['zms']:6.3f} {m['rmse']:7.4f} "
                f"{m['mean_std']:7.4f} {m['spearman']:6.3f}{tail}"
            )
    write_result(Path(args.out), result)


if __name__ == "__main__":
    main()
