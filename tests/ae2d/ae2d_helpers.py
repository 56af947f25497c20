"""Shared helpers of the 2D task's tests."""

from __future__ import annotations

from pathlib import Path

from napari_sim_uq.core.events import run
from napari_sim_uq.tasks.ae2d.train import Train2DConfig, train_2d_job

#: the bundled SIM model (a checkpoint of another task)
SIM_CHECKPOINT = Path(__file__).parents[2] / "example_data" / "sim_uq_demo_model.pt"


def train_tiny(root: Path, **options) -> Path:
    """Train a tiny 2D model (2 epochs, 8 base channels) on ``root/data/train``; returns
    ``root/ck/latest.pt``."""
    base = dict(
        data_dir=str(root / "data" / "train"),
        ckpt_dir=str(root / "ck"),
        epochs=2,
        batch_size=8,
        patch=32,
        patches_per_image=2,
        device="cpu",
        model={"base_channels": 8, "depth": 2},
    )
    run(train_2d_job(Train2DConfig(**{**base, **options})))
    return root / "ck" / "latest.pt"
