"""Neural networks (``nn.Module`` only, pure PyTorch: no Qt/napari imports)."""

from napari_sim_uq.models.sim_net import (
    UQ_TARGETS,
    SimNetConfig,
    SimOutput,
    SimUQNet,
    bounded_tanh_variance,
    count_parameters,
    eval_mode,
    mc_dropout_mode,
    soft_clamp,
    softmax_covariance_factors,
    softmax_variance,
    softplus_variance,
)

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
