"""Neural networks (``nn.Module`` only, pure PyTorch: no Qt/napari imports).

Generic parts: :mod:`.activations` (activations with delta-method variances),
:mod:`.blocks` (conv/up blocks, per-pixel norm), :mod:`.modes` (eval / MC-dropout mode
guards). The SIM network: :mod:`.sim_net`.
"""

from napari_sim_uq.models.activations import (
    bounded_tanh_variance,
    soft_clamp,
    softmax_covariance_factors,
    softmax_variance,
    softplus_variance,
)
from napari_sim_uq.models.modes import count_parameters, eval_mode, mc_dropout_mode
from napari_sim_uq.models.sim_net import UQ_TARGETS, SimNetConfig, SimOutput, SimUQNet

__all__ = [
    "UQ_TARGETS",
    "SimNetConfig",
    "SimOutput",
    "SimUQNet",
    "bounded_tanh_variance",
    "count_parameters",
    "eval_mode",
    "mc_dropout_mode",
    "soft_clamp",
    "softmax_covariance_factors",
    "softmax_variance",
    "softplus_variance",
]
