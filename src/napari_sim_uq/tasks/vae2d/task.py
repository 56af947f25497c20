"""The VAE posterior task's entry in the registry (:mod:`napari_sim_uq.tasks`)."""

from __future__ import annotations

from napari_sim_uq.tasks.vae2d.reconstruct import POSTERIOR_OUTPUTS
from napari_sim_uq.tasks.vae2d.train import MODEL_TYPE, TrainVAEConfig


class VAE2DTask:
    name = "vae2d"
    title = "VAE posterior"
    model_types = (MODEL_TYPE,)
    outputs = POSTERIOR_OUTPUTS
    train_config = TrainVAEConfig
    train_command = "train-vae"

    def train(self, cfg: TrainVAEConfig):
        from napari_sim_uq.tasks.vae2d.train import train_vae_job

        return train_vae_job(cfg)

    def load_model(self, checkpoint, device="cpu"):
        from napari_sim_uq.tasks.vae2d.reconstruct import load_vae_model

        return load_vae_model(checkpoint, device)

    def predict(self, model, ck, image, **options):
        """The posterior of one corrupted image (a job; see
        :func:`~napari_sim_uq.tasks.vae2d.reconstruct.posterior_2d`)."""
        from napari_sim_uq.tasks.vae2d.reconstruct import posterior_2d

        return posterior_2d(model, ck, image, **options)


TASK = VAE2DTask()
