"""The 2D autoencoder task's entry in the registry (:mod:`napari_sim_uq.tasks`)."""

from __future__ import annotations

from napari_sim_uq.tasks.ae2d.predict import AE2D_OUTPUTS, ANOMALY_OUTPUTS
from napari_sim_uq.tasks.ae2d.train import MODEL_TYPE, Train2DConfig


class AE2DTask:
    name = "ae2d"
    title = "2D autoencoder"
    model_types = (MODEL_TYPE,)
    outputs = AE2D_OUTPUTS + ANOMALY_OUTPUTS
    train_config = Train2DConfig
    train_command = "train-2d"

    def train(self, cfg: Train2DConfig):
        from napari_sim_uq.tasks.ae2d.train import train_2d_job

        return train_2d_job(cfg)

    def load_model(self, checkpoint, device="cpu"):
        from napari_sim_uq.tasks.ae2d.predict import load_ae2d_model

        return load_ae2d_model(checkpoint, device)

    def predict(self, model, ck, image, **options):
        """Reconstruct one image (a job; see :func:`~napari_sim_uq.tasks.ae2d.predict.
        predict_2d`)."""
        from napari_sim_uq.tasks.ae2d.predict import predict_2d

        return predict_2d(model, ck, image, **options)


TASK = AE2DTask()
