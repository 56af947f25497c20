"""Generic training losses (PyTorch, no Qt/napari): the Gaussian negative log-likelihood
with a variance floor (and the beta-NLL remedy), and a Poisson-Gaussian camera-noise term
``alpha * max(y, 0) + beta`` with learnable ``alpha``, ``beta`` (DESIGN.md 4.6-4.7).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.nn.activations import inv_softplus

__all__ = ["CameraNoise", "gaussian_nll", "real_param"]


def real_param(name: str, v: object, *, minimum: float | None = None, positive: bool = False):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise InputError(f"{name} must be a finite number, got {v!r}")
    if positive and not v > 0:
        raise InputError(f"{name} must be > 0, got {v!r}")
    if minimum is not None and v < minimum:
        raise InputError(f"{name} must be >= {minimum:g}, got {v!r}")
    return float(v)


def gaussian_nll(
    x: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    floor: float = 0.0,
    beta: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Heteroscedastic Gaussian NLL ``0.5 * ((x - mean)^2 / V + log V)``, ``V = var + floor``.

    The constant ``0.5 * log(2 pi)`` is dropped (as in ``torch.nn.functional.
    gaussian_nll_loss(..., full=False)``, which this equals for ``floor = 0`` where no
    clamping by its ``eps`` happens). ``floor >= 0`` is *added* to ``var`` (gradients reach
    ``var`` everywhere; ``torch`` clamps instead). ``beta > 0`` gives the beta-NLL of
    Seitzer et al. (2022): each pixel's NLL is multiplied by ``V.detach() ** beta``.
    ``reduction``: ``"mean"``, ``"sum"`` or ``"none"`` (element-wise). Shapes broadcast.
    """
    if reduction not in ("mean", "sum", "none"):
        raise InputError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    floor = real_param("floor", floor, minimum=0.0)
    beta = real_param("beta", beta, minimum=0.0)
    v = var + floor if floor > 0 else var
    nll = 0.5 * ((x - mean).square() / v + torch.log(v))
    if beta > 0:
        nll = nll * v.detach().pow(beta)
    if reduction == "mean":
        return nll.mean()
    if reduction == "sum":
        return nll.sum()
    return nll


# --------------------------------------------------------------------------------------
# camera noise
# --------------------------------------------------------------------------------------


class CameraNoise(nn.Module):
    """Learnable Poisson-Gaussian observation noise in normalised units.

    ``Var_cam(y) = alpha * max(y, 0) + beta`` with ``alpha = softplus(a)`` (shot noise: the
    inverse of gain times normalisation scale) and ``beta = softplus(c)`` (read noise and
    offset), two scalar parameters. ``alpha_init`` / ``beta_init`` set the initial values
    exactly; :meth:`init_from_data` estimates them from the data instead.
    """

    def __init__(self, alpha_init: float = 1e-3, beta_init: float = 1e-4):
        super().__init__()
        alpha_init = real_param("alpha_init", alpha_init, positive=True)
        beta_init = real_param("beta_init", beta_init, positive=True)
        self.a = nn.Parameter(torch.tensor(inv_softplus(alpha_init)))
        self.c = nn.Parameter(torch.tensor(inv_softplus(beta_init)))

    @property
    def alpha(self) -> torch.Tensor:
        return F.softplus(self.a)

    @property
    def beta(self) -> torch.Tensor:
        return F.softplus(self.c)

    def forward(self, y_mean: torch.Tensor) -> torch.Tensor:
        """``alpha * max(y_mean, 0) + beta`` (same shape as ``y_mean``)."""
        return self.alpha.to(y_mean.dtype) * y_mean.clamp_min(0) + self.beta.to(y_mean.dtype)

    @torch.no_grad()
    def set_values(self, alpha: float, beta: float) -> None:
        """Set ``alpha`` and ``beta`` (both > 0) exactly."""
        alpha = real_param("alpha", alpha, positive=True)
        beta = real_param("beta", beta, positive=True)
        self.a.fill_(inv_softplus(alpha))
        self.c.fill_(inv_softplus(beta))

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, n_bins: int = 10) -> tuple[float, float]:
        """Rough data-driven ``(alpha, beta)`` from neighbouring-pixel differences; sets and
        returns them.

        For every pair of horizontally or vertically adjacent pixels, ``d = x_1 - x_2`` and
        ``m = (x_1 + x_2) / 2``. If the signal varies little between neighbours,
        ``Var(d) = 2 Var_cam(m)``. The pairs are split into ``n_bins`` equal-count bins of
        ``m``; in each bin the noise variance is estimated robustly as
        ``(1.4826 * median|d|)^2 / 2`` (the median limits the influence of edges), and
        ``var = alpha * max(m, 0) + beta`` is fitted by least squares (non-negative: a
        negative coefficient is set to a tiny value and the other refitted).

        This is an **upper bound** in practice: structure finer than a pixel, such as SIM
        illumination fringes with a period of a few camera pixels, adds signal differences
        that are counted as noise. It is only a starting point; both parameters are
        learned. ``x``: normalised data ``(..., H, W)`` with ``H, W >= 2``.
        """
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x)
        if x.ndim < 2 or x.shape[-1] < 2 or x.shape[-2] < 2:
            raise InputError(
                f"init_from_data needs images of at least 2 x 2 pixels, got shape {tuple(x.shape)}"
            )
        x = x.detach().to(torch.float64)
        if not bool(torch.isfinite(x).all()):
            raise InputError("init_from_data: the data contain NaN or infinite values")
        d = torch.cat(
            [
                (x[..., :, 1:] - x[..., :, :-1]).flatten(),
                (x[..., 1:, :] - x[..., :-1, :]).flatten(),
            ]
        )
        m = torch.cat(
            [
                (0.5 * (x[..., :, 1:] + x[..., :, :-1])).flatten(),
                (0.5 * (x[..., 1:, :] + x[..., :-1, :])).flatten(),
            ]
        ).clamp_min(0)
        order = torch.argsort(m)
        n_bins = max(1, min(int(n_bins), d.numel() // 16))
        ms, vs = [], []
        for idx in torch.tensor_split(order, n_bins):
            mad = d[idx].abs().median()
            ms.append(m[idx].mean())
            vs.append((1.4826 * mad) ** 2 / 2)
        mb, vb = torch.stack(ms), torch.stack(vs)
        tiny = 1e-12
        scale = max(float(vb.max()), tiny)
        alpha, beta = _nonneg_line_fit(mb, vb)
        alpha = max(alpha, tiny)
        beta = max(beta, 1e-6 * scale, tiny)
        self.set_values(alpha, beta)
        return alpha, beta


def _nonneg_line_fit(m: torch.Tensor, v: torch.Tensor) -> tuple[float, float]:
    """Least-squares ``v = alpha m + beta`` with ``alpha, beta >= 0``."""
    if m.numel() >= 2 and float(m.max() - m.min()) > 0:
        mc = m - m.mean()
        alpha = float((mc * (v - v.mean())).sum() / mc.square().sum())
        beta = float(v.mean()) - alpha * float(m.mean())
        if alpha >= 0 and beta >= 0:
            return alpha, beta
        if alpha < 0:
            return 0.0, float(v.mean())
        # beta < 0: line through the origin
        den = float(m.square().sum())
        return (float((m * v).sum()) / den if den > 0 else 0.0), 0.0
    return 0.0, float(v.mean())
