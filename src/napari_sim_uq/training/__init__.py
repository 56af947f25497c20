"""Training: losses (pure PyTorch, no Qt/napari imports)."""

from napari_sim_uq.training.sim_loss import (
    CameraNoise,
    LossResult,
    NonFiniteLossError,
    SimLoss,
    SimLossConfig,
    gaussian_nll,
)

__all__ = [
    "CameraNoise",
    "LossResult",
    "NonFiniteLossError",
    "SimLoss",
    "SimLossConfig",
    "gaussian_nll",
]
