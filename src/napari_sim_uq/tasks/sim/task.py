"""The SIM task's entry in the registry (:mod:`napari_sim_uq.tasks`)."""

from __future__ import annotations

from napari_sim_uq.tasks.sim.reconstruct import SIM_OUTPUTS
from napari_sim_uq.tasks.sim.train import MODEL_TYPE, TrainConfig


class SimTask:
    name = "sim"
    title = "SIM reconstruction"
    model_types = (MODEL_TYPE,)
    outputs = SIM_OUTPUTS
    train_config = TrainConfig
    train_command = "train"

    def train(self, cfg: TrainConfig):
        from napari_sim_uq.tasks.sim.train import train_sim_job

        return train_sim_job(TrainConfig.coerce(cfg))

    def load_model(self, checkpoint, device="cpu"):
        from napari_sim_uq.tasks.sim.reconstruct import load_sim_model

        return load_sim_model(checkpoint, device)

    def predict(self, model, ck, frames, **options):
        """Reconstruct a raw stack (a job; see :func:`~napari_sim_uq.tasks.sim.predict.
        predict_sim`)."""
        from napari_sim_uq.tasks.sim.predict import predict_sim

        return predict_sim(model, frames, **options)


TASK = SimTask()
