"""Masked reconstruction (``sim-uq inpaint``): quality against biharmonic inpainting and the
calibration of the std, on held-out images.

    python bench/inpaint.py --models DIR            # the models of bench/mae_train.py
    python bench/inpaint.py --models DIR --n-images 8 --runs vit75   # quicker
    python bench/inpaint.py --models example_data --runs mae2d_demo_model --size 256  # bundled

For each model (``<run>.pt`` in ``--models``; vit and energy blocks, trained at 75 % and
85 % masking) and each masking ratio (75 %, 85 %):

- **Quality**: ``--n-images`` held-out 128 x 128 images made like the training data
  (textured nuclei, :func:`napari_sim_uq.tasks.sim.samples.image2d_clean`, seeds no training
  run used); random tokens (4 x 4 pixels) hidden at the ratio (seeded per image); the
  reconstruction of ``sim-uq inpaint`` (tiles of 32, ``--num-samples`` stochastic passes,
  the mean) and biharmonic inpainting (``skimage.restoration.inpaint_biharmonic``) of the
  same pixels; PSNR of the hidden pixels pooled over the images (normalised units: 0-1 = the
  observed pixels' 0.1-99.9 percentile range, as the model sees them) and the mean SSIM of
  the inpainted images.
- ``--augment``: the same PSNR with the mean averaged over the 8 rotations / reflections
  of each tile (``sim-uq inpaint --augment``; one deterministic pass per symmetry).
- **Calibration** (at the model's training ratio): for each of ``--methods`` (default
  ``scale,map-intensity``: one std scale; the scale and a monotone std map per class of the
  predicted intensity) the calibration is fitted with ``calibrate-mae`` on ``--n-calib``
  other held-out images, then on the test images:
  ZMS, 95 % coverage and Spearman(std, |err|) of the hidden pixels, per std decile and per
  intensity tertile of the truth (:func:`napari_sim_uq.core.uq.calibrate.
  conditional_calibration`), and the same on images of another generator (``synth2d``
  nuclei with a smooth background), made differently from the training data.
- **Energy**: for energy-block models, whether the energy decreased at every one of the T
  steps, over the test tiles.

Targets (issue 14): PSNR >= biharmonic + 1 dB at 75 % and 85 % for both blocks; after
sigma-scaling ZMS in [0.8, 1.25] and cov95 in [0.90, 0.98] on hidden pixels.
Prints the tables and writes ``bench/results/inpaint.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, write_result

RATIOS = (0.75, 0.85)


def test_images(kind: str, n: int, seed: int, size: int = 128) -> list[np.ndarray]:
    from napari_sim_uq.tasks.ae2d.synth2d import generate_image
    from napari_sim_uq.tasks.sim.samples import image2d_clean

    if kind == "sample":
        return [image2d_clean(seed=seed + i, size=size).astype(np.float32) for i in range(n)]
    return [
        (100 + 1500 * generate_image(size, (seed, 7, i), "nuclei", background=0.1)).astype(
            np.float32
        )
        for i in range(n)
    ]


def run_images(model, ck, images, ratio, num_samples, seed, baseline=True, augment=False):
    """Inpaint every image with random tokens hidden; pooled hidden-pixel numbers and the
    per-pixel residuals, stds and truths (normalised units)."""
    from napari_sim_uq.core.data.normalization import Normalization
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.mae2d.inpaint import inpaint_2d

    se_m, se_b, n, ssim, rs, ss, cs, secs = 0.0, 0.0, 0, [], [], [], [], 0.0
    for i, img in enumerate(images):
        t0 = time.perf_counter()
        pred = run(
            inpaint_2d(
                model, ck, img, mask_ratio=ratio, num_samples=num_samples, seed=seed + i,
                baseline=baseline, augment=augment,
            )
        )  # fmt: skip
        secs += time.perf_counter() - t0
        m = pred.meta["metrics"]
        k = pred.meta["n_missing"]
        se_m += m["mse_missing"] * k
        if baseline:
            se_b += 10 ** (-m["psnr_missing_biharmonic"] / 10) * k
        n += k
        ssim.append(m["ssim_inpainted"])
        norm = Normalization.from_dict(pred.meta["normalization"])
        miss = np.isnan(pred.arrays["masked_input"])
        truth = norm.apply(img.astype(np.float64))[miss]
        rs.append(truth - norm.apply(pred.arrays["inpainted"].astype(np.float64))[miss])
        if "std" in pred.arrays:
            ss.append(norm.apply_std(pred.arrays["std"].astype(np.float64))[miss])
        cs.append(truth)
    out = {
        "psnr": 10 * math.log10(n / se_m),
        "psnr_biharmonic": 10 * math.log10(n / se_b) if baseline else None,
        "ssim": float(np.mean(ssim)),
        "seconds_per_image": secs / len(images),
    }
    if baseline:
        out["gain_db"] = out["psnr"] - out["psnr_biharmonic"]
    arrays = (np.concatenate(rs), np.concatenate(ss) if ss else None, np.concatenate(cs))
    return out, arrays


def energy_monotone(model, images, ratio, seed) -> dict | None:
    """Fraction of (tile, step) pairs where the energy did not increase (float32 slack of
    1e-6 relative), over 32 x 32 tiles of the test images."""
    from napari_sim_uq.core.data.normalization import Normalization
    from napari_sim_uq.tasks.mae2d.net import patchify, random_visible

    if model.cfg.block != "energy":
        return None
    s = model.cfg.img_size
    tiles = []
    for img in images:
        x = Normalization("percentile").fit(img).apply(img)
        tiles += [x[y : y + s, z : z + s] for y in range(0, x.shape[0] - s + 1, s)
                  for z in range(0, x.shape[1] - s + 1, s)]  # fmt: skip
    x = torch.from_numpy(np.stack(tiles)[:, None].astype(np.float32))
    g = torch.Generator().manual_seed(seed)
    vis = random_visible(len(x), model.cfg.n_tokens, ratio, generator=g)
    t = model.embed(patchify(x, model.cfg.patch_size)) + model.pos
    t = torch.where(vis[..., None], t, model.mask_token + model.pos)
    ok, total, drops = 0, 0, []
    for blk in model.blocks:
        t, e = blk.descend(t, record=True)
        d = e[1:] - e[:-1]
        ok += int((d <= 1e-6 * e[:-1].abs()).sum())
        total += d.numel()
        drops.append(float((e[0] - e[-1]).mean()))
    return {"fraction_non_increasing": ok / total, "steps_checked": total, "mean_drop": drops}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="folder of <run>.pt (bench/mae_train.py)")
    ap.add_argument("--runs", default="vit75,vit85,energy75,energy85")
    ap.add_argument("--n-images", type=int, default=24)
    ap.add_argument("--n-calib", type=int, default=16)
    ap.add_argument("--num-samples", type=int, default=16)
    ap.add_argument("--size", type=int, default=128, help="side of the test images")
    ap.add_argument(
        "--augment",
        action="store_true",
        help="also the quality with the mean averaged over the 8 tile symmetries",
    )
    ap.add_argument(
        "--methods", default="scale,map-intensity", help="calibrate-mae methods to compare"
    )
    ap.add_argument(
        "--quality-only", action="store_true", help="PSNR against biharmonic only (no std)"
    )
    ap.add_argument("--out", default=str(RESULTS / "inpaint.json"))
    args = ap.parse_args()

    from napari_sim_uq.core.events import run
    from napari_sim_uq.core.io.tiff_io import write_image
    from napari_sim_uq.core.uq.calibrate import conditional_calibration
    from napari_sim_uq.tasks.mae2d.calibrate import calibrate_mae_job
    from napari_sim_uq.tasks.mae2d.inpaint import load_mae_model

    test = test_images("sample", args.n_images, 300000, args.size)
    other = test_images("other", args.n_images, 11, args.size)
    calib = test_images("sample", args.n_calib, 400000, args.size)
    tmp = Path(tempfile.mkdtemp(prefix="inpaint_bench_"))
    for i, img in enumerate(calib):
        write_image(tmp / "calib" / f"c_{i:03d}.tif", np.rint(img).astype(np.uint16))
    results: dict = {}
    for name in [r for r in args.runs.split(",") if r]:
        path = Path(args.models) / f"{name}.pt"
        if not path.exists():
            print(f"{name}: {path} missing, skipped")
            continue
        work = tmp / f"{name}.pt"
        shutil.copy(path, work)
        model, ck = load_mae_model(work)
        train_ratio = float(ck.config["data"]["mask_ratio"])
        res: dict = {"block": model.cfg.block, "train_ratio": train_ratio, "quality": {}}
        for ratio in RATIOS:
            q, _ = run_images(
                model, ck, test, ratio, 1 if args.quality_only else args.num_samples, 1000
            )
            res["quality"][f"{ratio:.2f}"] = q
            if args.augment:
                qa, _ = run_images(model, ck, test, ratio, 1, 1000, baseline=False, augment=True)
                q["psnr_augmented"] = qa["psnr"]
                print(f"{name} at {ratio:.0%}, augmented: PSNR {qa['psnr']:.2f} dB", flush=True)
            print(
                f"{name} at {ratio:.0%}: PSNR {q['psnr']:.2f} dB, biharmonic "
                f"{q['psnr_biharmonic']:.2f} dB, gain {q['gain_db']:+.2f} dB, SSIM "
                f"{q['ssim']:.3f} ({q['seconds_per_image']:.1f} s/image)",
                flush=True,
            )
        if args.quality_only:
            res["energy"] = energy_monotone(model, test[:2], train_ratio, 3)
            results[name] = res
            write_result(Path(args.out), {"options": vars(args), "results": results})
            continue
        res["calibration"] = {}
        for method in [m for m in args.methods.split(",") if m]:
            cal = run(
                calibrate_mae_job(
                    work, tmp / "calib", num_samples=args.num_samples, seed=5, method=method
                )
            )
            res["sigma_scale"] = cal["sigma_scale"]["mean"]
            res["calibration"][method] = {"fit": cal["after"]["pooled"]}
            model, ck = load_mae_model(work)
            for split, imgs in (("test", test), ("other-generator", other)):
                q, (r, s, c) = run_images(
                    model, ck, imgs, train_ratio, args.num_samples, 2000, baseline=split != "test"
                )
                table = conditional_calibration(r, s, c)
                res["calibration"][method][split] = {"quality": q, **table}
                p = table["pooled"]
                dec = [row["zms"] for row in table["by_std_decile"]]
                cls = {k: round(v["zms"], 3) for k, v in table["by_intensity"].items()}
                print(
                    f"{name} {split} {method} (ratio {train_ratio:.0%}, scale "
                    f"{res['sigma_scale']:.3f}): ZMS {p['zms']:.3f}, cov95 {p['cov95']:.3f}, "
                    f"Spearman {p['spearman']:.3f}; ZMS per std decile {min(dec):.2f}-"
                    f"{max(dec):.2f}; by intensity {cls}",
                    flush=True,
                )
        res["energy"] = energy_monotone(model, test[:4], train_ratio, 3)
        if res["energy"]:
            print(f"{name} energy: {res['energy']}", flush=True)
        results[name] = res
        # after every model, so that a long run stopped early keeps what it measured
        write_result(
            Path(args.out),
            {
                "machine": machine_info([torch.device("cpu")]),
                "options": vars(args),
                "results": results,
            },
        )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
