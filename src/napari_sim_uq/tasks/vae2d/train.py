r"""Training of the VAE on clean images: the shared loop
(:func:`napari_sim_uq.core.training.loop.train_job`) with random clean patches
(:class:`~napari_sim_uq.core.data.images2d.PatchDataset` of the 2D task's data module is not
imported: tasks do not depend on each other; the data helpers used here live in the core).

Loss (per pixel; the negative ELBO divided by the number of pixels):
``|x - G(z)|^2 / (2 sigma_dec^2) + log sigma_dec + KL(q(z|x) || N(0, I)) / P^2`` with
``z ~ q(z|x)`` (reparameterised) and one learned decoder std ``sigma_dec`` (a "sigma-VAE":
with a fixed unit variance the KL term would dominate and the decoder would blur).

``sigma_model`` (the decoder's error on images it did not train on, used as a noise floor
by the posterior) is the RMS of ``x - G(mu(x))`` over the validation patches, measured at
every validation and stored in the checkpoint (``extra["sigma_model"]``). Without
``--val-dir``, validation uses fixed patches of the training images drawn with another seed
(then ``sigma_model`` is measured on seen images and may be optimistic: give a val folder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from napari_sim_uq.core.config import option
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.training.loop import (
    ImageTrainOptions,
    TrainSetup,
    same_model_config,
    train_job,
)

__all__ = ["MODEL_TYPE", "TrainVAEConfig", "train_vae_job"]

MODEL_TYPE = "vae2d"


@dataclass
class TrainVAEConfig(ImageTrainOptions):
    """A VAE training run (JSON-serialisable; stored in checkpoints); the network's options
    are in ``model`` (:class:`~napari_sim_uq.tasks.vae2d.net.VAEConfig` fields)."""

    ckpt_dir: str = option(
        "checkpoints_vae", help="writes latest.pt, best.pt and metrics.csv here", flag="--out-dir"
    )
    data_dir: str = option("", help="clean training images: a folder of PNG/TIFF files or a glob")
    val_dir: str | None = option(
        None, help="validation images (folder or glob); best.pt and sigma_model follow them"
    )
    epochs: int = option(30, help="number of epochs", minimum=1)
    batch_size: int = option(32, help="patches per optimiser step", minimum=1)
    lr: float = option(2e-3, help="learning rate", minimum=0.0)
    patches_per_image: int = option(16, help="patches drawn from each image per epoch", minimum=1)
    latent_dim: int = option(16, help="latent dimension K", minimum=1, maximum=256)
    patch: int = option(64, help="side of the square training patches (pixels)", minimum=8)
    kl_weight: float = option(1.0, help="weight of the KL term (1: the ELBO)", minimum=0.0)
    # other network options (VAEConfig fields: channels, depth)
    model: dict = field(default_factory=dict)

    def validate(self) -> None:
        super().validate()
        if not (self.kl_weight >= 0 and math.isfinite(self.kl_weight)):
            raise InputError(f"kl_weight must be a number >= 0, got {self.kl_weight!r}")
        self.model_config().validate()

    def model_config(self):
        from napari_sim_uq.tasks.vae2d.net import VAEConfig

        extra = dict(self.model)
        for k in ("patch", "latent_dim"):
            if k in extra and extra[k] != getattr(self, k):
                raise InputError(f"model.{k} conflicts with {k}={getattr(self, k)}")
        return VAEConfig.from_dict({**extra, "patch": self.patch, "latent_dim": self.latent_dim})


def train_vae_job(cfg: TrainVAEConfig):
    """Train the VAE; a job (generator of Events, returns a summary)."""
    cfg = TrainVAEConfig.coerce(cfg)
    cfg.validate()
    return (yield from train_job(cfg, lambda device, dist: _setup(cfg, device)))


def _setup(cfg: TrainVAEConfig, device) -> TrainSetup:

    import torch
    from torch import nn

    from napari_sim_uq.tasks.vae2d.net import build_vae

    model_cfg = cfg.model_config()

    train_ds, val_ds = cfg.clean_patch_datasets()
    model = build_vae(model_cfg).to(device)

    class Criterion(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.log_sigma = nn.Parameter(torch.tensor(math.log(0.1)))

        def forward(self, x, recon, mu, logvar):
            sig2 = torch.exp(2 * self.log_sigma)
            rec = ((x - recon) ** 2).mean() / (2 * sig2) + self.log_sigma
            kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1).mean() / x[0].numel()
            return rec + cfg.kl_weight * kl, rec, kl

    criterion = Criterion().to(device)
    # sigma_model: the RMS reconstruction error over the last validation pass (a training
    # step marks the next validation batch as the start of a new pass)
    state = {"sigma_model": math.nan, "se": 0.0, "n": 0, "new_pass": True}

    def step(wrapped, crit, batch):
        state["new_pass"] = True
        x = batch["x"]
        recon, mu, logvar = wrapped(x)
        loss, rec, kl = crit(x, recon, mu, logvar)
        return loss, {
            "recon": float(rec.detach()),
            "kl": float(kl.detach()),
            "sigma_dec": float(crit.log_sigma.detach().exp()),
        }

    def val_step(wrapped, crit, batch):
        x = batch["x"]
        recon, mu, logvar = wrapped(x)
        loss, _, kl = crit(x, recon, mu, logvar)
        m = wrapped.module if hasattr(wrapped, "module") else wrapped
        mse = float(((x - m.decode(mu)[:, None]) ** 2).mean())
        if state["new_pass"]:
            state.update(se=0.0, n=0, new_pass=False)
        state["se"] += mse
        state["n"] += 1
        state["sigma_model"] = math.sqrt(state["se"] / state["n"])
        return {"loss": float(loss), "kl": float(kl), "recon_rmse": math.sqrt(mse)}

    def extra_state() -> dict:
        return {
            "sigma_model": float(state["sigma_model"]),
            "log_sigma_dec": float(criterion.log_sigma.detach()),
        }

    def load_extra(extra: dict) -> None:
        if "log_sigma_dec" in extra:
            with torch.no_grad():
                criterion.log_sigma.fill_(float(extra["log_sigma_dec"]))
        state["sigma_model"] = float(extra.get("sigma_model", math.nan))

    return TrainSetup(
        model=model,
        criterion=criterion,
        train_ds=train_ds,
        val_ds=val_ds,
        config={
            "model_type": MODEL_TYPE,
            "model": model_cfg.to_dict(),
            "train": cfg.to_dict(),
            "data": {"norm_mode": cfg.norm_mode, "patch": cfg.patch},
        },
        step=step,
        val_step=val_step,
        normalization={"mode": cfg.norm_mode, "per_image": True},
        sigma_scale={"mean": 1.0},
        extra_state=extra_state,
        load_extra=load_extra,
        check_resume=same_model_config(cfg.ckpt_dir, model_cfg.to_dict()),
    )
