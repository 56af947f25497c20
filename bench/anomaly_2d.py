"""Anomaly detection with a heteroscedastic 2D autoencoder: uncertainty-normalised vs plain
MSE score, per anomaly kind, for a few anomaly-AE designs.

    python bench/anomaly_2d.py                       # ~8 CPU minutes (4 designs x 1.5 min)
    python bench/anomaly_2d.py --size 64 --train-minutes 0.75
    python bench/anomaly_2d.py --quick               # tiny, for a smoke run

Data (``synth2d``): the autoencoders are trained on normal images only, ``generate_image
(size, (seed, 0, i))`` (train) with model selection on ``(seed, 1, i)`` (val), ``degrade=
"none"``, min-max normalisation (as ``sim-uq demo-2d``). Held out: ``n_test`` normal images
``(seed, 2, i)`` and, for each anomaly kind ``k`` (blob, cluster, texture, line), the same
images with one anomaly each, ``insert_anomaly(normal_i, SeedSequence([seed, 4, k, i]),
kind)``. No seed of the held-out images is used in training (nor was it used while the
designs were chosen).

Designs (``--designs``, all conv AEs trained with the heteroscedastic loss on the same data
and the same time budget; the number of epochs is set from a timed two-epoch probe, so that
the cosine schedule ends within ``--train-minutes``):

- ``sigmoid``: the anomaly AE of the demo before this benchmark (sigmoid mean head,
  log-variance clamp -12);
- ``linear``: a linear mean head, clamp -12;
- ``linear-floor``: a linear mean head and the variance floor ``logvar_min = -5`` (the demo's
  anomaly AE now, :func:`~napari_sim_uq.tasks.ae2d.demo.anomaly_ae_model`);
- ``deep-floor``: as ``linear-floor`` with a deeper bottleneck, ``conv_depth = 3``
  (stride 8) and 8 latent channels.

Scores (:func:`~napari_sim_uq.tasks.ae2d.anomaly.anomaly_job`, one deterministic pass, the
real code path): per pixel ``z^2 = (x - mu)^2 / sigma^2`` ("uncertainty") and ``(x - mu)^2``
("mse"), pooled per image by the pixel mean (DESIGN.md 5) or the mean of the top 1 %.
For each design, kind and pooled over the kinds (all normal images vs all abnormal ones):
ROC AUC, EER and F1 at the EER threshold. Also on the normal test images: the coefficient
of variation (std / mean) of each image score, the mean z^2, and ``paired``: the fraction
of abnormal images that score higher than their own normal version.

Prints the tables and writes ``bench/results/anomaly_2d.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine_info, write_result

KINDS = ("blob", "cluster", "texture", "line")
DESIGNS = ("sigmoid", "linear", "linear-floor", "deep-floor")


def design_model(name: str, base_channels: int) -> dict:
    """AE2DConfig fields of a design (module docstring)."""
    from napari_sim_uq.tasks.ae2d.demo import anomaly_ae_model

    floor = anomaly_ae_model(base_channels, -5.0)
    if name == "sigmoid":
        return {"arch": "conv-ae", "model": "hetero", "base_channels": base_channels}
    if name == "linear":
        return {**floor, "logvar_min": -12.0, "logvar_init": -4.0}
    if name == "linear-floor":
        return floor
    if name == "deep-floor":
        return {**floor, "conv_depth": 3, "latent_channels": 8}
    raise SystemExit(f"unknown design {name!r}; choose from {', '.join(DESIGNS)}")


def make_test_sets(args, root: Path) -> dict:
    """Held-out normal images and, per kind, the same images with one anomaly (uint16 TIFFs
    as the demo writes them)."""
    from napari_sim_uq.core.io.tiff_io import write_image
    from napari_sim_uq.tasks.ae2d.synth2d import generate_image, insert_anomaly

    def save(path: Path, img: np.ndarray) -> None:
        write_image(path, np.rint(np.clip(img, 0, 1) * 65535).astype(np.uint16))

    areas: dict[str, list[float]] = {k: [] for k in KINDS}
    for i in range(args.n_test):
        normal = generate_image(args.size, (args.seed, 2, i))
        normal = (np.rint(normal * 65535) / 65535).astype(np.float32)
        save(root / "normal" / f"image_{i:05d}.tif", normal)
        for k, kind in enumerate(KINDS):
            rng = np.random.default_rng(np.random.SeedSequence([args.seed, 4, k, i]))
            img, mask = insert_anomaly(normal, rng, kind)
            save(root / "abnormal" / kind / f"image_{i:05d}.tif", img)
            areas[kind].append(float(mask.mean()))
    return {
        k: {"median": float(np.median(v)), "min": min(v), "max": max(v)} for k, v in areas.items()
    }


def _drive(job) -> tuple[dict, list[float]]:
    """Run a training job; returns its summary and the times of its validation events
    (one per epoch)."""
    times = []
    try:
        while True:
            ev = next(job)
            if ev.stage == "validate":
                times.append(time.perf_counter())
    except StopIteration as stop:
        return stop.value, times


def train(args, name: str, data: Path, tmp: Path) -> tuple[Path, dict]:
    from napari_sim_uq.tasks.ae2d.train import Train2DConfig, train_2d_job

    model = design_model(name, args.base_channels)

    def cfg(ckpt: str, epochs: int) -> Train2DConfig:
        return Train2DConfig(
            data_dir=str(data / "train"),
            val_dir=str(data / "val"),
            ckpt_dir=str(tmp / ckpt),
            epochs=epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            patch=args.patch,
            patches_per_image=args.patches_per_image,
            degrade="none",
            norm_mode="minmax",
            model=model,
            device=args.device,
            seed=args.seed,
        )

    budget = 60.0 * args.train_minutes
    # probe: two epochs; the second one's time is an epoch without the start-up cost
    t_probe = time.perf_counter()
    _, times = _drive(train_2d_job(cfg(f"{name}-probe", 2)))
    epoch_s = times[1] - times[0]
    startup_s = max(0.0, times[0] - t_probe - epoch_s)
    epochs = args.epochs or max(1, int((budget - startup_s) / epoch_s))
    t0 = time.perf_counter()
    summary, _ = _drive(train_2d_job(cfg(name, epochs)))
    seconds = time.perf_counter() - t0
    last = summary["history"][-1] if summary["history"] else {}
    ckpt = Path(summary["best"] or summary["latest"])
    return ckpt, {
        "model": model,
        "probe_epoch_s": epoch_s,
        "probe_startup_s": startup_s,
        "epochs": epochs,
        "steps": summary["steps"],
        "train_seconds": seconds,
        "val_mse": last.get("val_mse"),
        "val_zms": last.get("val_zms"),
    }


def evaluate(args, ckpt: Path, sets: Path, out: Path) -> dict:
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.ae2d.anomaly import POOLS, SCORES, anomaly_job

    res: dict = {}
    normal_rows = None
    for kind in (*KINDS, "pooled"):
        abnormal = sets / "abnormal" / ("*/*.tif" if kind == "pooled" else kind)
        doc = run(
            anomaly_job(
                ckpt, sets / "normal", str(abnormal), out / kind, seed=args.seed, device=args.device
            )
        )
        keep = ("auc", "eer", "f1")
        entry = {
            pool: {n: {k: doc["scores_by_pool"][pool][n][k] for k in keep} for n in SCORES}
            for pool in POOLS
        }
        rows = doc["per_image"]
        normal = {Path(r["file"]).name: r for r in rows if r["label"] == 0}
        if kind != "pooled":
            entry["paired"] = {
                f"{n}_{p}": float(
                    np.mean(
                        [
                            r[f"{n}_{p}"] > normal[Path(r["file"]).name][f"{n}_{p}"]
                            for r in rows
                            if r["label"] == 1
                        ]
                    )
                )
                for n in SCORES
                for p in POOLS
            }
        res[kind] = entry
        normal_rows = list(normal.values())
    cv = {}
    for n in SCORES:
        for p in POOLS:
            s = np.array([r[f"{n}_{p}"] for r in normal_rows])
            cv[f"{n}_{p}"] = float(s.std() / s.mean())
    res["normal_images"] = {
        "cv": cv,
        "mean_z2": float(np.mean([r["uncertainty_mean"] for r in normal_rows])),
        "mean_mse": float(np.mean([r["mse_mean"] for r in normal_rows])),
    }
    return res


def print_tables(result: dict) -> None:
    for name, d in result["designs"].items():
        t = d["training"]
        nrm = d["scores"]["normal_images"]
        print(
            f"\n{name}: {t['epochs']} epochs in {t['train_seconds']:.0f} s, normal val MSE "
            f"{t['val_mse']:.2e}; normal test images: mean z^2 {nrm['mean_z2']:.2f}, CV of the "
            f"pixel-mean score {nrm['cv']['uncertainty_mean']:.2f} (z^2) vs "
            f"{nrm['cv']['mse_mean']:.2f} (MSE)"
        )
        print(
            f"  {'kind':8s} {'AUC z2':>7s} {'AUC mse':>8s} {'EER z2':>7s} {'EER mse':>8s} "
            f"{'F1 z2':>6s} {'F1 mse':>7s} | top1%: {'AUC z2':>7s} {'AUC mse':>8s}"
        )
        for kind in (*KINDS, "pooled"):
            m, t1 = d["scores"][kind]["mean"], d["scores"][kind]["top1"]
            u, s = m["uncertainty"], m["mse"]
            print(
                f"  {kind:8s} {u['auc']:7.3f} {s['auc']:8.3f} {u['eer']:7.3f} {s['eer']:8.3f} "
                f"{u['f1']:6.3f} {s['f1']:7.3f} |        {t1['uncertainty']['auc']:7.3f} "
                f"{t1['mse']['auc']:8.3f}"
            )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--designs", default=",".join(DESIGNS), help="comma-separated designs")
    ap.add_argument("--train-minutes", type=float, default=1.5, help="budget per design")
    ap.add_argument("--epochs", type=int, default=None, help="fix the epochs (no budget)")
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--n-train", type=int, default=48)
    ap.add_argument("--n-val", type=int, default=16)
    ap.add_argument("--n-test", type=int, default=50, help="normal test images (and per kind)")
    ap.add_argument("--base-channels", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--patches-per-image", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    ap.add_argument("--out", type=Path, default=None, help="JSON path")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.size, args.n_train, args.n_val, args.n_test = 1, 32, 4, 2, 4
        args.patch, args.patches_per_image, args.batch_size = 32, 2, 4
    designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    for d in designs:
        design_model(d, args.base_channels)  # unknown names fail before any work
    if args.threads:
        torch.set_num_threads(args.threads)
    out_path = args.out or RESULTS / ("anomaly_2d_quick.json" if args.quick else "anomaly_2d.json")
    machine = machine_info([torch.device(args.device)])
    t_start = time.perf_counter()

    from napari_sim_uq.tasks.ae2d.synth2d import generate_dataset_2d

    result: dict = {"designs": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        generate_dataset_2d(tmp / "data", args.n_train, args.n_val, 0, args.size, args.seed)
        areas = make_test_sets(args, tmp / "test")
        for name in designs:
            ckpt, info = train(args, name, tmp / "data", tmp / "ck")
            print(
                f"{name}: trained {info['epochs']} epochs in {info['train_seconds']:.0f} s",
                flush=True,
            )
            scores = evaluate(args, ckpt, tmp / "test", tmp / "scores" / name)
            result["designs"][name] = {"training": info, "scores": scores}
    result.update(
        {
            "benchmark": "anomaly_2d",
            "quick": args.quick,
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "quick")},
            "data": {
                "train": "generate_image(size, (seed, 0, i)), i < n_train; val (seed, 1, i)",
                "test_normal": "generate_image(size, (seed, 2, i)), i < n_test",
                "test_abnormal": "insert_anomaly(normal_i, SeedSequence([seed, 4, k, i]), "
                "KINDS[k])",
                "anomaly_area_fraction": areas,
            },
            "conventions": {
                "scores": "uncertainty: (x - mu)^2 / sigma^2 per pixel; mse: (x - mu)^2; "
                "normalised units; mc_samples 1",
                "pools": "mean: over all pixels; top1: mean of the highest 1 % of pixels",
                "pooled": "all normal test images vs the abnormal images of every kind",
                "paired": "fraction of abnormal images scoring above their own normal image",
                "cv": "std / mean of the score over the normal test images",
            },
            "seconds_total": time.perf_counter() - t_start,
            "machine": machine,
        }
    )
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    print_tables(result)
    write_result(out_path, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
