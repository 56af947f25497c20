"""Denoising quality of the 2D U-Net against NL-means and BM3D, and its calibration.

    python bench/denoise_2d.py                       # 9 CPU minutes of training
    python bench/denoise_2d.py --train-minutes 20
    python bench/denoise_2d.py --quick               # tiny, for a smoke run

One run, side by side, on held-out clean images ``x`` in ``[0, 1]`` with Gaussian noise
``y = x + 0.1 N(0, 1)`` (one fixed noisy copy per image, the same for every method):

- ``noisy``: the input itself;
- ``nl-means``: ``skimage.restoration.denoise_nl_means`` with ``sigma = estimate_sigma(y)``
  and ``h = 0.8 sigma`` (the docstring's starting point for ``fast_mode=True`` with
  ``sigma`` given), patch 5, distance 6, as the scikit-image example;
  ``nl-means (h tuned)``: the same with ``h / sigma`` chosen on the calibration split from
  0.4-1.4 (never on the test images);
- ``bm3d``: ``bm3d.bm3d(y, sigma_psd=0.1)`` (the true noise level; package ``bm3d``);
- ``ours``: a U-Net (``AE2DConfig`` with ``--base-channels``/``--depth``, MC dropout with a
  variance head) trained here by ``train_2d_job`` on synth2d images, ``degrade="noise:0.1"``,
  ``norm_mode="none"``; the prediction is the mean of ``predict_2d`` with 30 MC samples.
  The number of epochs is chosen from ``--train-minutes`` and a timed one-epoch probe
  (counted in the budget), so that the cosine schedule runs to its end within the budget.

Test sets: (a) ``synth2d``: held-out ``generate_image`` images (split 2; training uses split
0, validation split 1, calibration split 3); (b) ``nuclei``: fluorescence-like textured
nuclei drawn differently from synth2d (the recipe of ``tasks/sim/samples.py``'s
``image2d_sample`` without its camera noise: smooth elliptical nuclei, multiplicative
Gaussian-filtered texture, blur 1.2 px, min-max to ``[0, 1]``; our own code, BSD-3-Clause).
scikit-image's ``human_mitosis`` is not used: scikit-image does not bundle it (it is
downloaded by pooch on first use) and the benchmark must not download.

Metrics: core ``psnr`` and ``ssim`` with ``data_range=1`` per image, averaged over the
images. Calibration of ours (``r = x - mean``, ``sigma`` = the total std): the sigma-scale
``s`` is fitted on the synth2d calibration split (``fit_sigma_scale``) and applied to both
test sets; ``conditional_calibration`` gives pooled ZMS, 95 % coverage, Spearman(sigma,
|r|) and ZMS per intensity tertile of the clean image. For the nuclei set the scale a
nuclei calibration split would give is reported too.

Prints the tables and writes ``bench/results/denoise_2d.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, write_result

SIGMA = 0.1
NLM_FACTORS = (0.4, 0.6, 0.8, 1.0, 1.2, 1.4)


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------


def nuclei_image(size: int, seed: int) -> np.ndarray:
    """A clean fluorescence-like image of textured nuclei in ``[0, 1]`` (module docstring)."""
    from scipy import ndimage

    rng = np.random.default_rng([seed, 11])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    img = np.zeros((size, size))
    for _ in range(max(4, size * size // 2500)):
        cy, cx = rng.uniform(0, size, 2)
        ax, ay = rng.uniform(0.03, 0.06, 2) * size
        t = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(t) + dy * np.sin(t)) / ax
        v = (dy * np.cos(t) - dx * np.sin(t)) / ay
        img += rng.uniform(0.5, 1.0) / (1.0 + np.exp(8.0 * (np.hypot(u, v) - 1.0)))
    img *= 1.0 + 2.0 * ndimage.gaussian_filter(rng.normal(size=(size, size)), 2.0)
    img = ndimage.gaussian_filter(np.clip(img, 0.0, None), 1.2)
    lo, hi = img.min(), img.max()
    return ((img - lo) / (hi - lo)).astype(np.float32)


def noisy_copy(clean: np.ndarray, key: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(list(key))
    return (clean + SIGMA * rng.standard_normal(clean.shape)).astype(np.float32)


def make_sets(args) -> dict:
    """``{set: {split: [(clean, noisy), ...]}}`` with splits ``test`` and ``cal``."""
    from napari_sim_uq.tasks.ae2d.synth2d import generate_image

    s = args.test_size
    out: dict = {"synth2d": {}, "nuclei": {}}
    for split, split_no, n in (("test", 2, args.n_test), ("cal", 3, args.n_cal)):
        clean = [generate_image(s, (args.seed, split_no, i), "mixed") for i in range(n)]
        out["synth2d"][split] = [
            (c, noisy_copy(c, (args.seed, 99, split_no, i))) for i, c in enumerate(clean)
        ]
        clean = [nuclei_image(s, 1000 * split_no + i + 7919 * args.seed) for i in range(n)]
        out["nuclei"][split] = [
            (c, noisy_copy(c, (args.seed, 98, split_no, i))) for i, c in enumerate(clean)
        ]
    return out


# --------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------


def nl_means(noisy: np.ndarray, factor: float = 0.8) -> np.ndarray:
    from skimage.restoration import denoise_nl_means, estimate_sigma

    sig = float(estimate_sigma(noisy))
    return denoise_nl_means(
        noisy.astype(np.float64),
        h=factor * sig,
        sigma=sig,
        fast_mode=True,
        patch_size=5,
        patch_distance=6,
        preserve_range=True,
    ).astype(np.float32)


def bm3d_available() -> str | None:
    try:
        import bm3d  # noqa: F401
    except ImportError:
        return None
    from importlib.metadata import version

    return version("bm3d")


def bm3d_denoise(noisy: np.ndarray) -> np.ndarray:
    import bm3d

    return np.asarray(bm3d.bm3d(noisy.astype(np.float64), sigma_psd=SIGMA), np.float32)


def ours(model, ck, noisy: np.ndarray, args) -> tuple[np.ndarray, np.ndarray]:
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.ae2d.predict import predict_2d

    pred = run(
        predict_2d(
            model,
            ck,
            noisy,
            mc_samples=args.mc_samples,
            mc_batch=args.mc_batch,
            tile=256,
            overlap=32,
            seed=0,
            device=args.device,
        )
    )
    return pred.arrays["mean"], pred.arrays["std"]


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------


def _drive(job, budget_s: float | None):
    """Run a job; close it (the loop saves latest.pt) once ``budget_s`` has passed.
    Returns ``(summary or None, step times)``."""
    times = []
    t0 = time.perf_counter()
    try:
        while True:
            ev = next(job)
            if ev.stage == "train":
                times.append(time.perf_counter())
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                job.close()
                return None, times
    except StopIteration as stop:
        return stop.value, times


def train(args, tmp: Path) -> tuple[Path, dict]:
    from napari_sim_uq.tasks.ae2d.synth2d import generate_dataset_2d
    from napari_sim_uq.tasks.ae2d.train import Train2DConfig, train_2d_job

    t_gen = time.perf_counter()
    files = generate_dataset_2d(
        tmp / "data",
        args.n_train,
        args.n_val,
        0,
        size=args.train_size,
        seed=args.seed,
        dtype="float32",
    )
    t_gen = time.perf_counter() - t_gen
    model_cfg = {"base_channels": args.base_channels, "depth": args.depth}

    def cfg(ckpt: str, epochs: int, max_steps=None) -> Train2DConfig:
        return Train2DConfig(
            data_dir=str(tmp / "data" / "train"),
            val_dir=str(tmp / "data" / "val") if files["val"] else None,
            ckpt_dir=str(tmp / ckpt),
            epochs=epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            patch=args.patch,
            patches_per_image=args.patches_per_image,
            degrade=f"noise:{SIGMA}",
            norm_mode="none",
            model=model_cfg,
            device=args.device,
            seed=args.seed,
            max_steps=max_steps,
        )

    steps_per_epoch = math.ceil(args.n_train * args.patches_per_image / args.batch_size)
    budget = 60.0 * args.train_minutes
    # probe: one whole epoch (steps, validation, checkpoint writes); a probe of a few
    # steps overestimated the epoch (warm-up) and left a third of the budget unused
    t_probe = time.perf_counter()
    _drive(train_2d_job(cfg("probe", 1)), None)
    t_probe = time.perf_counter() - t_probe
    epoch_s = t_probe
    step_s = epoch_s / steps_per_epoch
    if args.epochs is None:
        epochs = max(1, int((budget - t_probe) / epoch_s))
    else:
        epochs = args.epochs
    t0 = time.perf_counter()
    summary, _ = _drive(train_2d_job(cfg("ckpt", epochs)), 1.5 * budget + 60)
    seconds = time.perf_counter() - t0
    ckpt = tmp / "ckpt" / "best.pt"
    if not ckpt.exists():
        ckpt = tmp / "ckpt" / "latest.pt"
    hist = (summary or {}).get("history") or []
    info = {
        "model": model_cfg,
        "train_images": args.n_train,
        "val_images": args.n_val,
        "train_size": args.train_size,
        "patch": args.patch,
        "patches_per_image": args.patches_per_image,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "degrade": f"noise:{SIGMA}",
        "norm_mode": "none",
        "budget_minutes": args.train_minutes,
        "probe_epoch_s": epoch_s,
        "probe_step_s": step_s,
        "epochs_planned": epochs,
        "steps_planned": epochs * steps_per_epoch,
        "steps_done": (summary or {}).get("steps"),
        "stopped_by_time_guard": summary is None,
        "train_seconds": seconds,
        "generate_seconds": t_gen,
        "checkpoint": ckpt.name,
        "last_epoch": hist[-1] if hist else None,
    }
    return ckpt, info


# --------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------


def quality(pairs, outputs) -> dict:
    from napari_sim_uq.core.uq.metrics import psnr, ssim

    ps = [psnr(o, c, data_range=1.0) for (c, _), o in zip(pairs, outputs, strict=True)]
    ss = [ssim(o, c, data_range=1.0) for (c, _), o in zip(pairs, outputs, strict=True)]
    return {
        "psnr": float(np.mean(ps)),
        "ssim": float(np.mean(ss)),
        "psnr_per_image": [float(p) for p in ps],
        "ssim_per_image": [float(s) for s in ss],
    }


def calibration(pairs, means, stds, scale: float) -> dict:
    from napari_sim_uq.core.uq.calibrate import conditional_calibration

    r = np.concatenate([(c - m).ravel() for (c, _), m in zip(pairs, means, strict=True)])
    s = np.concatenate([sd.ravel() for sd in stds]).astype(np.float64) * scale
    x = np.concatenate([c.ravel() for c, _ in pairs])
    table = conditional_calibration(r, s, x)
    p = table["pooled"]
    return {
        "sigma_scale": scale,
        "zms": p["zms"],
        "cov95": p["cov95"],
        "spearman": p["spearman"],
        "uce": p["uce"],
        "mean_sigma": p["mean_sigma"],
        "rmse": p["rmse"],
        "zms_by_intensity": {k: v["zms"] for k, v in table["by_intensity"].items()},
        "cov95_by_intensity": {k: v["cov95"] for k, v in table["by_intensity"].items()},
        "n_by_intensity": {k: v["n"] for k, v in table["by_intensity"].items()},
        "zms_by_std_decile": [d["zms"] for d in table["by_std_decile"]],
        "intensity_thresholds": table["intensity_thresholds"],
    }


def fit_scale(pairs, means, stds) -> float:
    from napari_sim_uq.core.uq.calibrate import fit_sigma_scale

    r = np.concatenate([(c - m).ravel() for (c, _), m in zip(pairs, means, strict=True)])
    s = np.concatenate([sd.ravel() for sd in stds]).astype(np.float64)
    return fit_sigma_scale(r, s)


def _timed(fn, items) -> tuple[list, float]:
    t0 = time.perf_counter()
    out = [fn(i) for i in items]
    return out, (time.perf_counter() - t0) / max(len(items), 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--train-minutes", type=float, default=9.0, help="training budget")
    ap.add_argument("--epochs", type=int, default=None, help="fix the epochs (no budget)")
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--n-val", type=int, default=8)
    ap.add_argument("--train-size", type=int, default=128)
    ap.add_argument("--n-test", type=int, default=8, help="test images per set")
    ap.add_argument("--n-cal", type=int, default=6, help="calibration images per set")
    ap.add_argument("--test-size", type=int, default=128)
    ap.add_argument("--base-channels", type=int, default=16)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--patches-per-image", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--mc-samples", type=int, default=30)
    ap.add_argument("--mc-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    ap.add_argument("--out", type=Path, default=None, help="JSON path")
    args = ap.parse_args(argv)
    if args.quick:
        args.train_minutes, args.epochs = 0.05, 1
        args.n_train, args.n_val, args.train_size = 4, 2, 32
        args.n_test, args.n_cal, args.test_size = 2, 2, 32
        args.base_channels, args.depth, args.batch_size, args.patch = 8, 2, 4, 32
        args.patches_per_image, args.mc_samples, args.mc_batch = 2, 4, 4
    if args.threads:
        torch.set_num_threads(args.threads)
    out_path = args.out or RESULTS / ("denoise_2d_quick.json" if args.quick else "denoise_2d.json")
    bm3d_version = bm3d_available()
    t_start = time.perf_counter()
    machine = machine_info([torch.device(args.device)])  # load average at the start

    from napari_sim_uq.tasks.ae2d.predict import load_ae2d_model

    sets = make_sets(args)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, train_info = train(args, Path(tmp))
        print(
            f"trained {train_info['steps_done']} steps ({train_info['epochs_planned']} epochs "
            f"planned) in {train_info['train_seconds']:.0f} s",
            flush=True,
        )
        model, ck = load_ae2d_model(ckpt, args.device)

    # NL-means h / sigma tuned on the synth2d calibration split (never the test images)
    from napari_sim_uq.core.uq.metrics import psnr

    tune = {}
    for f in NLM_FACTORS:
        tune[f] = float(
            np.mean([psnr(nl_means(y, f), x, data_range=1.0) for x, y in sets["synth2d"]["cal"]])
        )
    best_factor = max(tune, key=tune.get)

    results: dict = {}
    cal_outputs: dict = {}
    for name, splits in sets.items():
        pairs = splits["test"]
        noisy = [y for _, y in pairs]
        methods: dict = {}
        methods["noisy"] = dict(quality(pairs, noisy), seconds_per_image=0.0)
        out, dt = _timed(nl_means, noisy)
        methods["nl-means"] = dict(quality(pairs, out), seconds_per_image=dt, h_over_sigma=0.8)
        out, dt = _timed(lambda y: nl_means(y, best_factor), noisy)
        methods["nl-means (h tuned)"] = dict(
            quality(pairs, out), seconds_per_image=dt, h_over_sigma=best_factor
        )
        if bm3d_version:
            out, dt = _timed(bm3d_denoise, noisy)
            methods["bm3d"] = dict(quality(pairs, out), seconds_per_image=dt)
        pred, dt = _timed(lambda y: ours(model, ck, y, args), noisy)
        means, stds = [p[0] for p in pred], [p[1] for p in pred]
        methods["ours"] = dict(quality(pairs, means), seconds_per_image=dt)
        cal_pred = [ours(model, ck, y, args) for _, y in splits["cal"]]
        cal_outputs[name] = (splits["cal"], [p[0] for p in cal_pred], [p[1] for p in cal_pred])
        results[name] = {"methods": methods, "_pred": (pairs, means, stds)}
        print(
            f"{name}: " + ", ".join(f"{k} {v['psnr']:.2f} dB" for k, v in methods.items()),
            flush=True,
        )

    scale = fit_scale(*cal_outputs["synth2d"])
    for name, res in results.items():
        pairs, means, stds = res.pop("_pred")
        res["calibration"] = {
            "raw": calibration(pairs, means, stds, 1.0),
            "s from synth2d cal": calibration(pairs, means, stds, scale),
        }
        if name != "synth2d":
            own = fit_scale(*cal_outputs[name])
            res["calibration"][f"s from {name} cal"] = calibration(pairs, means, stds, own)

    # ---------------------------------------------------------------- tables
    print()
    names = list(next(iter(results.values()))["methods"])
    head = f"{'method':<20}" + "".join(f"{s + ' PSNR':>14}{s + ' SSIM':>14}" for s in results)
    print(head + f"{'s/image':>10}")
    for m in names:
        row = f"{m:<20}"
        for s in results:
            v = results[s]["methods"][m]
            row += f"{v['psnr']:>14.2f}{v['ssim']:>14.4f}"
        row += f"{results['synth2d']['methods'][m]['seconds_per_image']:>10.2f}"
        print(row)
    print()
    print(
        f"{'set':<9}{'sigma':<20}{'s':>6}{'ZMS':>7}{'cov95':>7}{'rho':>7}"
        f"{'ZMS bg':>8}{'ZMS mid':>8}{'ZMS bright':>11}"
    )
    for s, res in results.items():
        for key, c in res["calibration"].items():
            zi = c["zms_by_intensity"]
            print(
                f"{s:<9}{key:<20}{c['sigma_scale']:>6.2f}{c['zms']:>7.2f}{c['cov95']:>7.3f}"
                f"{(c['spearman'] or float('nan')):>7.2f}{zi['background']:>8.2f}"
                f"{zi['mid']:>8.2f}{zi['bright']:>11.2f}"
            )
    if not bm3d_version:
        print("bm3d is not installed: pip install bm3d (or the 'bench' extra)")
    result = {
        "benchmark": "denoise_2d",
        "machine": machine,
        "loadavg_end": list(os.getloadavg()),
        "seconds_total": time.perf_counter() - t_start,
        "settings": {
            "noise_sigma": SIGMA,
            "n_test": args.n_test,
            "n_cal": args.n_cal,
            "test_size": args.test_size,
            "mc_samples": args.mc_samples,
            "mc_batch": args.mc_batch,
            "seed": args.seed,
            "bm3d": bm3d_version,
            "nl_means": {
                "patch_size": 5,
                "patch_distance": 6,
                "fast_mode": True,
                "h_over_sigma_docs": 0.8,
                "h_over_sigma_tuned": best_factor,
                "tuning_psnr_on_cal": {str(k): v for k, v in tune.items()},
            },
            "quick": args.quick,
        },
        "training": train_info,
        "sets": results,
    }
    write_result(out_path, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
