"""Training: losses (pure PyTorch, no Qt/napari imports).

Generic: :mod:`.losses` (Gaussian NLL, camera noise). SIM: :mod:`.sim_loss`, :mod:`.sim_train`.
"""

from napari_sim_uq.training.losses import CameraNoise, gaussian_nll
from napari_sim_uq.training.sim_loss import (
    LossResult,
    NonFiniteLossError,
    SimLoss,
    SimLossConfig,
)

__all__ = [
    "CameraNoise",
    "LossResult",
    "NonFiniteLossError",
    "SimLoss",
    "SimLossConfig",
    "gaussian_nll",
]
