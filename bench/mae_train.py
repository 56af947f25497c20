"""Train the masked autoencoders that ``bench/inpaint.py`` evaluates, each in a fixed
wall-clock budget (on a GPU: all runs at once, one process each).

    python bench/mae_train.py --out /tmp/mae_models --minutes 6            # the four models
    python bench/mae_train.py --out /tmp/m --minutes 0.5 --runs vit75 --n-train 32   # smoke

Data: ``--n-train`` clean 128 x 128 images made like the 2D sample (textured nuclei,
:func:`napari_sim_uq.tasks.sim.samples.image2d_clean`, seeds 100000+) and 32 validation
images (seeds 200000+); ``bench/inpaint.py`` tests on other seeds. Each run first times 20
steps, then sets the number of epochs so that the whole cosine schedule fits the budget.
Writes ``<out>/<run>.pt`` (weights, config and normalisation only) and
``<out>/mae_train.json`` (per run: options, epochs, steps, seconds, the validation
history). Data and run folders go to ``$MAE_WORK`` (default ``/tmp/mae_work``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: run name -> training options (TrainMAEConfig fields); the bench's model sizes
RUNS = {
    "vit75": dict(
        block="vit",
        mask_ratio=0.75,
        embed_dim=192,
        depth=6,
        num_heads=6,
        lr=1e-3,
        model={"decoder_dim": 128, "decoder_depth": 2},
    ),
    "vit85": dict(
        block="vit",
        mask_ratio=0.85,
        embed_dim=192,
        depth=6,
        num_heads=6,
        lr=1e-3,
        model={"decoder_dim": 128, "decoder_depth": 2},
    ),
    "energy75": dict(block="energy", mask_ratio=0.75, lr=2e-4),
    "energy85": dict(block="energy", mask_ratio=0.85, lr=2e-4),
    # the source documents' learning rate (5e-5), for comparison
    "energy75_lr5e-5": dict(block="energy", mask_ratio=0.75, lr=5e-5),
    # W_Q = W_K started as orthonormal rows (a positional attention from the first step) and
    # smaller steps alpha: the runs above stay at the level of a content-free prediction
    "energy75_a1": dict(
        block="energy", mask_ratio=0.75, lr=3e-4, model={"init_gain": 1.0, "alpha": 1.0}
    ),
    "energy85_a1": dict(
        block="energy", mask_ratio=0.85, lr=3e-4, model={"init_gain": 1.0, "alpha": 1.0}
    ),
    "energy75_a01": dict(
        block="energy", mask_ratio=0.75, lr=3e-4, model={"init_gain": 1.0, "alpha": 0.1}
    ),
    # the model bundled in example_data/ (compact: trains in minutes on a CPU too)
    "demo": dict(
        block="vit",
        mask_ratio=0.75,
        embed_dim=128,
        depth=4,
        num_heads=4,
        lr=1e-3,
        model={"decoder_dim": 128, "decoder_depth": 1},
    ),
}


def write_images(folder: Path, seeds: range, size: int = 128) -> None:
    import numpy as np

    from napari_sim_uq.core.io.tiff_io import write_image
    from napari_sim_uq.tasks.sim.samples import image2d_clean

    folder.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        img = np.rint(image2d_clean(seed=s, size=size)).astype(np.uint16)
        write_image(folder / f"image_{s:06d}.tif", img, overwrite=True)


def train_one(name: str, data: Path, out: Path, minutes: float, batch: int, device: str) -> None:
    import torch

    from napari_sim_uq.core.events import run
    from napari_sim_uq.core.io.checkpoint import load_checkpoint, save_checkpoint
    from napari_sim_uq.tasks.mae2d.train import TrainMAEConfig, train_mae_job

    work = Path(os.environ.get("MAE_WORK", "/tmp/mae_work")) / name
    shutil.rmtree(work, ignore_errors=True)
    opts = dict(
        data_dir=str(data / "train"),
        val_dir=str(data / "val"),
        batch_size=batch,
        patches_per_image=8,
        device=device,
        **RUNS[name],
    )
    n_train = len(list((data / "train").glob("*.tif")))
    steps_per_epoch = -(-n_train * 8 // batch)
    # time 20 steps (after 5 warm-up steps) to size the run
    t_epochs = -(-25 // steps_per_epoch) + 1
    t_opts = dict(ckpt_dir=str(work / "timing"), epochs=t_epochs, **opts)
    run(train_mae_job(TrainMAEConfig(max_steps=5, **t_opts)))
    t0 = time.perf_counter()
    run(train_mae_job(TrainMAEConfig(max_steps=25, resume=True, **t_opts)))
    per_step = (time.perf_counter() - t0) / 20
    budget = minutes * 60 * 0.9
    epochs = max(1, int(budget / (per_step * steps_per_epoch * 1.05)))
    cfg = TrainMAEConfig(ckpt_dir=str(work / "run"), epochs=epochs, **opts)
    t0 = time.perf_counter()
    summary = run(train_mae_job(cfg))
    seconds = time.perf_counter() - t0
    best = Path(summary["best"] or summary["latest"])
    ck = load_checkpoint(best)
    save_checkpoint(
        out / f"{name}.pt",
        model_state=ck.model_state,
        config=ck.config,
        normalization=ck.normalization,
        sigma_scale=ck.sigma_scale,
        train_state=ck.train_state,
        overwrite=True,
    )
    doc = {
        "run": name,
        "options": RUNS[name],
        "device": summary["device"],
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "seconds_per_step": per_step,
        "epochs": epochs,
        "steps": summary["steps"],
        "seconds": seconds,
        "history": summary["history"],
    }
    (work / "summary.json").write_text(json.dumps(doc, indent=1))
    last = summary["history"][-1]
    print(
        f"{name}: {epochs} epochs, {summary['steps']} steps in {seconds:.0f} s; "
        f"val PSNR (hidden) {last.get('val_psnr_masked', float('nan')):.2f} dB",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=6.0, help="wall-clock budget per run")
    ap.add_argument("--runs", default=",".join(RUNS), help="comma-separated run names")
    ap.add_argument("--n-train", type=int, default=1024)
    ap.add_argument("--size", type=int, default=128, help="side of the generated images")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.one:
        train_one(args.one, Path(args.data), out, args.minutes, args.batch, args.device)
        return
    work = Path(os.environ.get("MAE_WORK", "/tmp/mae_work"))
    data = work / "_data"
    t0 = time.perf_counter()
    write_images(data / "train", range(100000, 100000 + args.n_train), args.size)
    write_images(data / "val", range(200000, 200032), args.size)
    print(f"data: {args.n_train} + 32 images in {time.perf_counter() - t0:.0f} s", flush=True)
    names = [n for n in args.runs.split(",") if n]
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        sys.exit(f"unknown runs {unknown}; known: {sorted(RUNS)}")
    threads = max(1, (os.cpu_count() or 2) // len(names))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--out",
                str(out),
                "--one",
                n,
                "--data",
                str(data),
                "--minutes",
                str(args.minutes),
                "--batch",
                str(args.batch),
                "--device",
                args.device,
            ],
            env=env,
        )
        for n in names
    ]
    codes = [p.wait() for p in procs]
    print("exit codes", dict(zip(names, codes, strict=True)), flush=True)
    docs = {}
    for n in names:
        f = work / n / "summary.json"
        if f.exists():
            docs[n] = json.loads(f.read_text())
    (out / "mae_train.json").write_text(json.dumps(docs, indent=1))


if __name__ == "__main__":
    main()
