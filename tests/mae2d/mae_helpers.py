"""Shared helpers of the masked-autoencoder task's tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

#: a tiny ViT MAE (seconds to train on a CPU) as `sim-uq train-mae` options
TINY_ARGS = [
    "--epochs", "2", "--batch-size", "8", "--img-size", "16", "--patch-size", "4",
    "--patches-per-image", "4", "--embed-dim", "16", "--depth", "1", "--num-heads", "2",
    "--decoder-dim", "16", "--decoder-heads", "2", "--warmup-steps", "2", "--quiet",
]  # fmt: skip


def write_clean_images(folder: Path, n: int, size: int = 40, seed: int = 0) -> list[Path]:
    """``n`` clean 16-bit images made like the 2D sample (textured nuclei)."""
    from napari_sim_uq.tasks.sim.samples import image2d_clean

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        img = image2d_clean(seed=seed + i, size=size)
        out.append(folder / f"im_{i}.tif")
        tifffile.imwrite(out[-1], np.rint(img).astype(np.uint16))
    return out
