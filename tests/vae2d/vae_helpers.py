"""Shared helpers of the VAE task's tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile


def write_clean_images(folder: Path, n: int, size: int = 40, seed: int = 0) -> None:
    """``n`` clean 16-bit images made like the 2D sample (textured nuclei)."""
    from napari_sim_uq.tasks.sim.samples import image2d_clean

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = image2d_clean(seed=seed + i, size=size)
        tifffile.imwrite(folder / f"im_{i}.tif", np.rint(img).astype(np.uint16))
