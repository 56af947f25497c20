"""Training of the 2D autoencoders: the shared loop
(:func:`napari_sim_uq.core.training.loop.train_job`) with the 2D data, network and loss.

Training pairs are made on the fly: random patches of the (clean) training images,
normalised per image, degraded by :mod:`napari_sim_uq.core.data.degrade` (the network
sees the degraded patch and is trained to give the clean one; with ``degrade="none"`` it
reconstructs its input, as an anomaly-detecting autoencoder does). Files in ``ckpt_dir``
as for every task: ``latest.pt``, ``best.pt`` and ``metrics.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from napari_sim_uq.core.config import option
from napari_sim_uq.core.data.normalization import NORM_MODES
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.training.loop import (
    ImageTrainOptions,
    TrainSetup,
    same_model_config,
    train_job,
)

__all__ = ["MODEL_TYPE", "NORM_MODES", "VARIANCE_LOSSES", "Train2DConfig", "train_2d_job"]

MODEL_TYPE = "ae2d"

#: how the mean and the variance head of an MC-dropout model with ``aleatoric`` learn
VARIANCE_LOSSES = ("decoupled", "joint")


@dataclass
class Train2DConfig(ImageTrainOptions):
    """A 2D autoencoder training run (JSON-serialisable; stored in checkpoints): the loop's
    options and the 2D data; the network's options are in ``model`` (AE2DConfig fields)."""

    ckpt_dir: str = option(
        "checkpoints_2d", help="writes latest.pt, best.pt and metrics.csv here", flag="--out-dir"
    )
    epochs: int = option(30, help="number of epochs", minimum=1)
    batch_size: int = option(16, help="patches per optimiser step", minimum=1)
    lr: float = option(1e-3, help="learning rate", minimum=0.0)
    degrade: str = option(
        "noise:0.1",
        help='degradations of the training inputs, e.g. "noise:0.1", "noise,jpeg,mask" or '
        '"none" (reconstruct the input: anomaly detection); see docs/cli.md',
    )
    variance_loss: str = option(
        "decoupled",
        help="MC dropout with a variance head: decoupled (the mean learns by MSE, the variance "
        "head by the NLL of that mean) or joint (one Gaussian NLL for both)",
        choices=VARIANCE_LOSSES,
    )
    # network (AE2DConfig fields)
    model: dict = field(default_factory=dict)

    def validate(self) -> None:
        super().validate()
        if self.variance_loss not in VARIANCE_LOSSES:
            raise InputError(
                f"variance_loss must be one of {VARIANCE_LOSSES}, got {self.variance_loss!r}"
            )
        from napari_sim_uq.core.data.degrade import parse_degradations

        parse_degradations(self.degrade)  # clear error for a bad spec before any work


def train_2d_job(cfg: Train2DConfig):
    """Train a 2D autoencoder; a job (generator of Events, returns a summary)."""
    cfg = Train2DConfig.coerce(cfg)
    cfg.validate()
    return (yield from train_job(cfg, lambda device, dist: _setup(cfg, device)))


def _setup(cfg: Train2DConfig, device) -> TrainSetup:

    from napari_sim_uq.core.data.degrade import parse_degradations
    from napari_sim_uq.tasks.ae2d.loss import AE2DLoss
    from napari_sim_uq.tasks.ae2d.net import AE2DConfig, build_model

    model_cfg = AE2DConfig.from_dict(dict(cfg.model)) if cfg.model else AE2DConfig()
    model_cfg.validate()
    if cfg.patch % model_cfg.multiple:
        raise InputError(
            f"patch={cfg.patch} must be a multiple of {model_cfg.multiple} for this network "
            f"({model_cfg.arch}, depth {model_cfg.depth})"
        )
    degradation = parse_degradations(cfg.degrade)

    train_ds = cfg.patch_dataset(cfg.data_dir, cfg.seed, degradation)
    # validation patches are fixed (the same every epoch: a comparable loss)
    val_ds = cfg.patch_dataset(cfg.val_dir, cfg.seed + 1, degradation) if cfg.val_dir else None
    model = build_model(model_cfg).to(device)
    criterion = AE2DLoss(model_cfg, decoupled=cfg.variance_loss == "decoupled").to(device)

    # the loss covers every pixel: the target is the whole clean patch, also where a mask
    # degradation hid the input (inpainting)
    def step(wrapped, crit, batch):
        return crit(wrapped(batch["x"]), batch["target"])

    def val_step(wrapped, crit, batch):
        return crit(wrapped(batch["x"]), batch["target"])[1]

    return TrainSetup(
        model=model,
        criterion=criterion,
        train_ds=train_ds,
        val_ds=val_ds,
        config={
            "model_type": MODEL_TYPE,
            "model": model_cfg.to_dict(),
            "train": cfg.to_dict(),
            "data": {
                "norm_mode": cfg.norm_mode,
                "degrade": degradation.to_dict(),
                "patch": cfg.patch,
            },
        },
        step=step,
        val_step=val_step,
        normalization={"mode": cfg.norm_mode, "per_image": True},
        sigma_scale={"mean": 1.0},
        check_resume=same_model_config(cfg.ckpt_dir, model_cfg.to_dict()),
    )
