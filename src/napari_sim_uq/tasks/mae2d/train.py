r"""Training of the masked autoencoder on clean images: the shared loop
(:func:`napari_sim_uq.core.training.loop.train_job`) on random ``S x S`` crops
(:class:`~napari_sim_uq.core.data.images2d.PatchDataset`, ``S = img_size``).

Each step hides ``round(mask_ratio * N)`` of the ``N`` tokens of every crop, uniformly at
random (a new draw every step), and the loss is the mean squared error on the hidden
tokens' pixels only (``loss_norm="patch"``: each hidden token's squared error divided by
the variance of its true pixels plus 0.01, which weights flat and textured tokens alike;
MAE's ``norm_pix_loss`` instead predicts per-patch *normalised* pixels, which cannot be
turned back into an image for inpainting, so it is not offered).

Optimiser: AdamW (0.9, 0.999), weight decay 1e-4, gradient clipping 1.0, a linear warm-up
of ``warmup_steps`` and a cosine decay to ``min_lr_ratio * lr`` (the source documents: 5e-5
to 1e-6 for the energy block). Options left at ``None`` take the block's defaults
(:data:`BLOCK_DEFAULTS`).

Validation (``--val-dir``, else other crops of the training images) uses fixed hidden
tokens (seeded per batch), so ``val_loss`` and ``val_psnr_masked`` (PSNR of the hidden
pixels, data range 1 in normalised units) are comparable between epochs and runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from napari_sim_uq.core.config import option
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.training.loop import (
    ImageTrainOptions,
    TrainSetup,
    same_model_config,
    train_job,
)

__all__ = ["BLOCK_DEFAULTS", "LOSS_NORMS", "MODEL_TYPE", "TrainMAEConfig", "train_mae_job"]

MODEL_TYPE = "mae2d"
LOSS_NORMS = ("none", "patch")

#: Per block, the values of the options left at ``None``. The energy block's are the source
#: documents' (embedding 256, 12 heads, 1 layer, lr 5e-5); the ViT's are a compact MAE that
#: trains in minutes on a CPU.
BLOCK_DEFAULTS = {
    "vit": {"embed_dim": 128, "depth": 4, "num_heads": 4, "lr": 1e-3},
    "energy": {"embed_dim": 256, "depth": 1, "num_heads": 12, "lr": 5e-5},
}


@dataclass
class TrainMAEConfig(ImageTrainOptions):
    """A masked-autoencoder training run (JSON-serialisable; stored in checkpoints); other
    network options (:class:`~napari_sim_uq.tasks.mae2d.net.MAEConfig` fields) go in
    ``model``."""

    ckpt_dir: str = option(
        "checkpoints_mae", help="writes latest.pt, best.pt and metrics.csv here", flag="--out-dir"
    )
    data_dir: str = option("", help="clean training images: a folder of PNG/TIFF files or a glob")
    epochs: int = option(50, help="number of epochs", minimum=1)
    batch_size: int = option(64, help="crops per optimiser step", minimum=1)
    lr: float | None = option(
        None, help="peak learning rate (default: vit 1e-3, energy 5e-5)", minimum=0.0
    )
    weight_decay: float = option(1e-4, help="AdamW weight decay", minimum=0.0)
    optimizer: str = option("adamw", help="adamw or adam", choices=("adam", "adamw"))
    warmup_steps: int = option(100, help="linear learning-rate warm-up steps", minimum=0)
    min_lr_ratio: float = option(
        0.02,
        help="final learning rate of the cosine as a fraction of lr",
        minimum=0.0,
        maximum=1.0,
    )
    patch: int = option(
        32,
        help="side of the square crops, which is the model's image size",
        minimum=8,
        flag="--img-size",
    )
    patches_per_image: int = option(16, help="crops drawn from each image per epoch", minimum=1)
    patch_size: int = option(4, help="side of the square tokens (pixels)", minimum=1)
    mask_ratio: float = option(
        0.75, help="fraction of the tokens hidden in training", minimum=0.0, maximum=0.99
    )
    block: str = option(
        "vit", help="vit (MAE) or energy (Energy Transformer)", choices=("vit", "energy")
    )
    embed_dim: int | None = option(
        None, help="token width (default: vit 128, energy 256)", minimum=8
    )
    depth: int | None = option(None, help="encoder blocks (default: vit 4, energy 1)", minimum=1)
    num_heads: int | None = option(
        None, help="attention heads (default: vit 4, energy 12)", minimum=1
    )
    loss_norm: str = option(
        "none",
        help="none: MSE of hidden pixels; patch: each hidden token's error divided by "
        "its pixel variance + 0.01",
        choices=LOSS_NORMS,
    )
    # other network options (MAEConfig fields: mlp_ratio, head_dim, decoder_*, dropout,
    # steps, alpha, beta)
    model: dict = field(default_factory=dict)

    def resolved(self) -> TrainMAEConfig:
        """A copy with the options left at ``None`` set to the block's defaults."""
        if self.block not in BLOCK_DEFAULTS:
            raise InputError(f"block must be one of {tuple(BLOCK_DEFAULTS)}, got {self.block!r}")
        d = self.to_dict()
        for k, v in BLOCK_DEFAULTS[self.block].items():
            if d.get(k) is None:
                d[k] = v
        return type(self).from_dict(d)

    def validate(self) -> None:
        cfg = self.resolved()  # the values a run would use
        ImageTrainOptions.validate(cfg)
        if not 0.0 <= cfg.mask_ratio < 1.0:
            raise InputError(f"mask_ratio must lie in [0, 1), got {cfg.mask_ratio!r}")
        if cfg.loss_norm not in LOSS_NORMS:
            raise InputError(f"loss_norm must be one of {LOSS_NORMS}, got {cfg.loss_norm!r}")
        cfg.model_config().validate()

    def model_config(self):
        from napari_sim_uq.tasks.mae2d.net import MAEConfig

        cfg = self.resolved()
        names = {f.name for f in fields(MAEConfig)}
        extra = dict(cfg.model)
        bad = sorted(set(extra) - names)
        if bad:
            raise InputError(f"unknown model options {bad}; the options are {sorted(names)}")
        own = {
            "img_size": cfg.patch,
            "patch_size": cfg.patch_size,
            "block": cfg.block,
            "embed_dim": cfg.embed_dim,
            "depth": cfg.depth,
            "num_heads": cfg.num_heads,
        }
        for k, v in own.items():
            if k in extra and extra[k] != v:
                raise InputError(f"model.{k}={extra[k]!r} conflicts with {k}={v!r}")
        return MAEConfig.from_dict({**extra, **own})


def train_mae_job(cfg: TrainMAEConfig):
    """Train the masked autoencoder; a job (generator of Events, returns a summary)."""
    cfg = TrainMAEConfig.coerce(cfg).resolved()
    cfg.validate()
    return (yield from train_job(cfg, lambda device, dist: _setup(cfg, device)))


def masked_token_loss(pred, target_tokens, visible, loss_norm: str = "none"):
    """Mean squared error over the hidden tokens' pixels (``loss_norm="patch"``: each
    token's mean squared error divided by its pixel variance + 0.01), and the plain MSE of
    the hidden pixels (for PSNR). ``pred``, ``target_tokens``: ``(B, N, p*p)``."""
    hidden = (~visible).to(pred.dtype)
    err = ((pred - target_tokens) ** 2).mean(-1)  # (B, N)
    n = hidden.sum().clamp_min(1.0)
    mse = (err * hidden).sum() / n
    if loss_norm == "patch":
        err = err / (target_tokens.var(-1, unbiased=False) + 0.01)
        return (err * hidden).sum() / n, mse
    return mse, mse


def _setup(cfg: TrainMAEConfig, device) -> TrainSetup:
    import math

    import torch

    from napari_sim_uq.tasks.mae2d.net import build_mae, patchify, random_visible

    model_cfg = cfg.model_config()

    train_ds, val_ds = cfg.clean_patch_datasets()
    model = build_mae(model_cfg).to(device)
    p, n_tok = model_cfg.patch_size, model_cfg.n_tokens
    criterion = torch.nn.Module()  # no loss parameters
    # validation batches are numbered within a pass so that their hidden tokens are fixed
    state = {"val_batch": 0}

    def step(wrapped, crit, batch):
        state["val_batch"] = 0
        x = batch["target"]
        visible = random_visible(x.shape[0], n_tok, cfg.mask_ratio, device=x.device)
        pred = wrapped(x, visible)
        loss, mse = masked_token_loss(pred, patchify(x, p), visible, cfg.loss_norm)
        m = float(mse.detach())
        if not math.isfinite(m):
            raise FloatingPointError("the reconstruction error is not finite")
        return loss, {"mse_masked": m}

    def val_step(wrapped, crit, batch):
        x = batch["target"]
        g = torch.Generator(device="cpu").manual_seed(cfg.seed * 7919 + state["val_batch"])
        state["val_batch"] += 1
        visible = random_visible(x.shape[0], n_tok, cfg.mask_ratio, generator=g).to(x.device)
        pred = wrapped(x, visible)
        loss, mse = masked_token_loss(pred, patchify(x, p), visible, cfg.loss_norm)
        m = float(mse)
        return {
            "loss": float(loss),
            "mse_masked": m,
            "psnr_masked": 10 * math.log10(1.0 / m) if m > 0 else math.inf,
        }

    return TrainSetup(
        model=model,
        criterion=criterion,
        train_ds=train_ds,
        val_ds=val_ds,
        config={
            "model_type": MODEL_TYPE,
            "model": model_cfg.to_dict(),
            "train": cfg.to_dict(),
            "data": {"norm_mode": cfg.norm_mode, "patch": cfg.patch, "mask_ratio": cfg.mask_ratio},
        },
        step=step,
        val_step=val_step,
        normalization={"mode": cfg.norm_mode, "per_image": True},
        sigma_scale={"mean": 1.0},
        check_resume=same_model_config(cfg.ckpt_dir, model_cfg.to_dict()),
        diverged=(FloatingPointError,),
    )
