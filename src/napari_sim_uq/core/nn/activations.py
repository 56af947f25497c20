"""Output activations with their variances (delta method) and a smooth clamp (PyTorch).

Variances belong to the quantities that enter a model (DESIGN.md 4.5): a log-variance
predicted for a pre-activation value ``a`` maps through the activation's derivative, e.g.
``Var(softplus(a)) ~ sigmoid(a)^2 Var(a)``; a softmax through its Jacobian
``diag(p) - p p^T``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "bounded_tanh_variance",
    "inv_soft_clamp",
    "inv_softplus",
    "soft_clamp",
    "softmax_covariance_factors",
    "softmax_variance",
    "softplus_variance",
]


def inv_softplus(y: float) -> float:
    """``x`` with ``softplus(x) = y`` (``y > 0``)."""
    return y + math.log(-math.expm1(-y))


def soft_clamp(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Smooth clamp of ``x`` into ``[lo, hi]``: ``lo + softplus(hi - softplus(hi - x) - lo)``.

    The identity up to ``O(exp(-d))`` at distance ``d`` from both bounds, strictly monotone
    with a gradient that never vanishes (unlike ``torch.clamp``). A final hard clamp removes
    the rounding-level overshoot above ``hi`` (at most ``log1p(exp(-(hi - lo)))``).
    """
    t = hi - F.softplus(hi - x)
    return (lo + F.softplus(t - lo)).clamp(lo, hi)


def inv_soft_clamp(y: float, lo: float, hi: float) -> float:
    """``x`` with ``soft_clamp(x, lo, hi) = y`` for ``lo < y < hi`` (ignoring the hard clamp),
    if ``y`` is reachable; used to set the log-variance biases."""
    t = lo + inv_softplus(y - lo)
    if t >= hi:  # y within rounding of the upper reach: take the largest sensible value
        return hi + 20.0
    return hi - inv_softplus(hi - t)


def softplus_variance(a: torch.Tensor, var_a: torch.Tensor) -> torch.Tensor:
    """Delta-method variance of ``softplus(a)``: ``sigmoid(a)^2 Var(a)``."""
    return torch.sigmoid(a).square() * var_a


def bounded_tanh_variance(a: torch.Tensor, var_a: torch.Tensor) -> torch.Tensor:
    """Delta-method variance of ``1 + tanh(a)``: ``(1 - tanh(a)^2)^2 Var(a)``.

    ``1 - tanh(a)^2 = 4 sigmoid(2a) sigmoid(-2a)``, which stays accurate (and positive) where
    ``tanh(a)`` rounds to +-1.
    """
    d = 4.0 * torch.sigmoid(2.0 * a) * torch.sigmoid(-2.0 * a)
    return d.square() * var_a


def softmax_variance(p: torch.Tensor, var_z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    r"""Delta-method variance of ``p = softmax(z)`` given independent ``Var(z_j) = v_j``.

    With the Jacobian ``J_ij = p_i (delta_ij - p_j)``::

        Var(p_i) = sum_j J_ij^2 v_j = p_i^2 [ v_i (1 - 2 p_i) + sum_j p_j^2 v_j ]
                 = p_i^2 [ v_i (1 - p_i)^2 + sum_{j != i} p_j^2 v_j ]

    The second form is evaluated (both terms are non-negative; the sum over ``j != i`` is
    computed as ``S - p_i^2 v_i`` and clipped at 0 against rounding). Batched over all
    dimensions but ``dim``; never forms the ``n x n`` Jacobian. This is the diagonal of
    ``J diag(v) J^T``.
    """
    p2 = p.square()
    total = (p2 * var_z).sum(dim=dim, keepdim=True)
    others = (total - p2 * var_z).clamp_min(0.0)
    return p2 * (var_z * (1.0 - p).square() + others)


def softmax_covariance_factors(
    p: torch.Tensor, var_z: torch.Tensor, dim: int = -1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors of the full delta-method covariance of ``p = softmax(z)``.

    ``J diag(v) J^T = diag(w) - w p^T - p w^T + c p p^T`` with ``w = p^2 v`` and
    ``c = sum(w)`` (``J = diag(p) - p p^T``), so ``a^T Cov a`` for any weights ``a`` is
    ``sum(w a^2) - 2 (w . a)(p . a) + c (p . a)^2`` without forming ``n x n`` matrices.
    Returns ``(w, c)``, ``c`` with ``dim`` kept (size 1). Its diagonal is
    :func:`softmax_variance`.
    """
    w = p.square() * var_z
    return w, w.sum(dim=dim, keepdim=True)
