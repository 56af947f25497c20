"""The masked-autoencoder task's entry in the registry (:mod:`napari_sim_uq.tasks`)."""

from __future__ import annotations

from napari_sim_uq.tasks.mae2d.inpaint import INPAINT_OUTPUTS
from napari_sim_uq.tasks.mae2d.train import MODEL_TYPE, TrainMAEConfig


class MAE2DTask:
    name = "mae2d"
    title = "masked reconstruction"
    model_types = (MODEL_TYPE,)
    outputs = INPAINT_OUTPUTS
    train_config = TrainMAEConfig
    train_command = "train-mae"

    def train(self, cfg: TrainMAEConfig):
        from napari_sim_uq.tasks.mae2d.train import train_mae_job

        return train_mae_job(cfg)

    def load_model(self, checkpoint, device="cpu"):
        from napari_sim_uq.tasks.mae2d.inpaint import load_mae_model

        return load_mae_model(checkpoint, device)

    def predict(self, model, ck, image, **options):
        """The masked reconstruction of one image (a job; see
        :func:`~napari_sim_uq.tasks.mae2d.inpaint.inpaint_2d`)."""
        from napari_sim_uq.tasks.mae2d.inpaint import inpaint_2d

        return inpaint_2d(model, ck, image, **options)


TASK = MAE2DTask()
