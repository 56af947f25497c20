"""Make the small VAE shipped in ``example_data/vae2d_demo_model.pt``.

A :class:`~napari_sim_uq.tasks.vae2d.net.ConvVAE` (64 x 64 patches, K = 16 latents, 8
full-resolution channels) trained on CPU on noise-free images made like the 2D sample
(:func:`napari_sim_uq.tasks.sim.samples.image2d_clean`: textured nuclei, other seeds), so
the "Posterior reconstruction" widget works on the sample out of the box. Only the weights,
config, normalisation, ``sigma_model`` and the posterior calibration (fitted on 96 corrupted
windows of 12 other held-out images) are kept (no optimiser state).

Usage (from the repository root)::

    python scripts/make_example_vae_model.py [--out example_data/vae2d_demo_model.pt]
                                             [--epochs 80] [--work /tmp/vae_demo]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_images(folder: Path, seeds: range, size: int) -> None:
    from napari_sim_uq.core.io.tiff_io import write_image
    from napari_sim_uq.tasks.sim.samples import image2d_clean

    folder.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        img = np.rint(image2d_clean(seed=s, size=size)).astype(np.uint16)
        write_image(folder / f"image_{s:05d}.tif", img, overwrite=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "example_data" / "vae2d_demo_model.pt"))
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--work", default="/tmp/vae_demo")
    args = ap.parse_args()

    import torch

    from napari_sim_uq.core.events import run
    from napari_sim_uq.core.io.checkpoint import load_checkpoint, save_checkpoint
    from napari_sim_uq.tasks.vae2d.train import TrainVAEConfig, train_vae_job

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    write_images(work / "train", range(1000, 1000 + args.n_train), 256)
    write_images(work / "val", range(5000, 5008), 256)
    write_images(work / "calib", range(6000, 6012), 256)
    cfg = TrainVAEConfig(
        ckpt_dir=str(work / "ck"),
        data_dir=str(work / "train"),
        val_dir=str(work / "val"),
        epochs=args.epochs,
        batch_size=32,
        lr=2e-3,
        patches_per_image=16,
        model={"channels": 8},
    )
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    summary = run(train_vae_job(cfg))
    seconds = time.perf_counter() - t0
    ck = load_checkpoint(Path(summary["ckpt_dir"]) / "latest.pt")
    last = summary["history"][-1]
    print(f"trained {summary['epochs_done']} epochs in {seconds:.0f} s; last: {last}")
    print(f"sigma_model {ck.extra['sigma_model']:.4f} (normalised units)")
    save_checkpoint(
        args.out,
        model_state=ck.model_state,
        config=ck.config,
        normalization=ck.normalization,
        sigma_scale=ck.sigma_scale,
        train_state=ck.train_state,
        extra={
            "sigma_model": ck.extra["sigma_model"],
            "made_by": "scripts/make_example_vae_model.py",
            "train_seconds": round(seconds, 1),
        },
        overwrite=True,
    )
    # the posterior std calibration (tasks/vae2d/calibrate.py) on other held-out images
    from napari_sim_uq.tasks.vae2d.calibrate import calibrate_vae_job

    table = run(calibrate_vae_job(args.out, str(work / "calib"), n_windows=96))
    print("calibration: std scales (rows: observed, missing by distance bin; columns:")
    print(f"background, structure) {np.round(np.asarray(table['scales']), 2).tolist()}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
