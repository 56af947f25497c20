r"""Training losses and abnormality scores of the 2D autoencoders (PyTorch).

With the residual ``r = x - mu`` and the predicted log-variance ``s`` (``sigma^2 = exp(s)``)
of each pixel, :class:`AE2DLoss` picks one of three per-pixel losses from the config
(:func:`loss_kind`):

- ``"mse"`` (``model="mc-dropout"`` without ``aleatoric``): ``r^2``.
- ``"nll"`` (``model="mc-dropout"`` with ``aleatoric``): the Gaussian NLL
  ``0.5 (r^2 / V + log V)`` with ``V = exp(s) + var_floor`` (core
  :func:`~napari_sim_uq.core.nn.losses.gaussian_nll`); ``beta > 0`` weights each pixel by
  ``V.detach()^beta`` (beta-NLL, Seitzer et al. 2022), a remedy when the mean fits poorly
  because pixels with a large predicted variance stop contributing to it.
- ``"upae"`` (``model="hetero"``): the heteroscedastic / UPAE loss
  ``exp(-s) r^2 + s`` (:func:`upae_loss`). Per pixel it is ``2 NLL - log(2 pi)`` with the
  full Gaussian ``NLL = 0.5 (r^2 / sigma^2 + log sigma^2 + log 2 pi)``, so it has the same
  minimiser, ``s = log(r^2)``; it has no variance floor (the network's soft clamp bounds
  ``s``).

With ``decoupled=True`` (the default of ``sim-uq train-2d``) the ``"nll"`` loss is split:
``0.5 log(mean r^2) + NLL(x; stop_grad(mu), V)``. The first term is the NLL of a single
variance fitted to the batch: its gradient has the direction of the MSE's (every pixel
weighted alike) at the NLL's scale. The mean then learns what the MSE model learns
(with the joint NLL, pixels with a large predicted variance stop pulling on the mean, which
costs PSNR: the validation MSE of the demo's denoiser rose 4.5x), and the variance head
learns the distribution of the residual of that mean. Both heads share the network.

Every loss is a mean over pixels, or over the valid pixels where a ``mask`` is given
(``True`` / 1 = valid, for example the image without the padding the network needed; a
float mask weights the pixels). The total can be negative for ``"nll"`` and ``"upae"``.

Abnormality scores (DESIGN.md section 5): :func:`pixel_scores` ``(x - mu)^2 / sigma^2``
and its per-image mean :func:`image_score` (the torch counterpart of
:func:`napari_sim_uq.core.uq.metrics.anomaly_scores`, which takes ``sigma``); for a plain
autoencoder without variances :func:`mse_score`, the per-image mean of ``(x - mu)^2``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.nn.losses import gaussian_nll, real_param
from napari_sim_uq.tasks.ae2d.net import AE2DConfig, AEOutput

__all__ = [
    "LOSS_KINDS",
    "AE2DLoss",
    "image_score",
    "loss_kind",
    "masked_mean",
    "mse_score",
    "pixel_scores",
    "upae_loss",
]

#: The per-pixel losses :class:`AE2DLoss` chooses from.
LOSS_KINDS = ("mse", "nll", "upae")

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _check_same_shape(fn: str, **tensors: torch.Tensor | None) -> None:
    given = {k: v for k, v in tensors.items() if v is not None}
    for k, v in given.items():
        if not isinstance(v, torch.Tensor):
            raise InputError(f"{fn}: {k} must be a torch.Tensor, got {type(v).__name__}")
    shapes = {tuple(v.shape) for v in given.values()}
    if len(shapes) > 1:
        got = ", ".join(f"{k} {tuple(v.shape)}" for k, v in given.items())
        raise InputError(f"{fn}: {' and '.join(given)} must have the same shape, got {got}")


def _mask_weights(mask: object, like: torch.Tensor, fn: str) -> torch.Tensor:
    """``mask`` as float weights of ``like``'s shape (broadcast)."""
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"{fn}: mask must be a torch.Tensor, got {type(mask).__name__}")
    try:
        w = mask.to(device=like.device, dtype=like.dtype).expand_as(like)
    except RuntimeError:
        raise InputError(
            f"{fn}: the mask of shape {tuple(mask.shape)} does not broadcast to the images' "
            f"shape {tuple(like.shape)}"
        ) from None
    return w


def masked_mean(
    values: torch.Tensor, mask: torch.Tensor | None = None, dims: Sequence[int] | None = None
) -> torch.Tensor:
    """Mean of ``values`` (over ``dims``, default all) counting only the pixels where
    ``mask`` (broadcast to ``values``; bool, or float weights >= 0) is non-zero; the
    masked-out values do not enter the result, even if NaN (keep them finite where a
    gradient flows: NaN would reach it through the backward pass). A mean over no valid
    pixel raises :class:`InputError`."""
    fn = "masked_mean"
    if mask is None:
        return values.mean() if dims is None else values.mean(dim=tuple(dims))
    w = _mask_weights(mask, values, fn)
    if bool((w < 0).any()):
        raise InputError(f"{fn}: mask weights must be >= 0 (True / 1 marks a valid pixel)")
    v = torch.where(w != 0, values, torch.zeros((), dtype=values.dtype, device=values.device))
    if dims is None:
        num, den = (v * w).sum(), w.sum()
    else:
        num, den = (v * w).sum(dim=tuple(dims)), w.sum(dim=tuple(dims))
    if bool((den <= 0).any()):
        raise InputError(f"{fn}: the mask selects no valid pixel (of an image)")
    return num / den


# --------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------


def upae_loss(
    mean: torch.Tensor,
    logvar: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Heteroscedastic (UPAE) loss ``mean(exp(-s) (x - mu)^2 + s)``, ``s = logvar``, over
    all pixels or the valid pixels of ``mask``. Per pixel it equals ``2 NLL - log(2 pi)``
    (full Gaussian NLL) and is minimal at ``s = log((x - mu)^2)``."""
    _check_same_shape("upae_loss", mean=mean, logvar=logvar, target=target)
    per_pixel = torch.exp(-logvar) * (target - mean).square() + logvar
    return masked_mean(per_pixel, mask)


def loss_kind(cfg: AE2DConfig | dict | None) -> str:
    """``"upae"`` for the hetero model, ``"nll"`` for MC dropout with a variance head,
    ``"mse"`` without one."""
    cfg = AE2DConfig.coerce(cfg)
    if cfg.model == "hetero":
        return "upae"
    return "nll" if cfg.aleatoric else "mse"


class AE2DLoss(nn.Module):
    """The training loss of an autoencoder built from ``cfg`` (see the module docstring).

    ``var_floor`` (``>= 0``, added to the variance) and ``beta`` (``>= 0``, beta-NLL) only
    apply to the ``"nll"`` loss. ``forward(out, target, mask=None)`` returns the scalar
    loss and a dict of floats for logging: ``loss``, ``mse`` (of the mean), and with a
    variance head ``mean_logvar`` and ``zms`` (``mean(r^2 / sigma^2)``, ideally 1).
    """

    def __init__(
        self,
        cfg: AE2DConfig | dict | None = None,
        *,
        var_floor: float = 1e-6,
        beta: float = 0.0,
        decoupled: bool = False,
    ):
        super().__init__()
        self.cfg = AE2DConfig.coerce(cfg)
        self.kind = loss_kind(self.cfg)
        self.decoupled = bool(decoupled) and self.kind == "nll"
        self.var_floor = real_param("var_floor", var_floor, minimum=0.0)
        self.beta = real_param("beta", beta, minimum=0.0)

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind!r}, var_floor={self.var_floor:g}, beta={self.beta:g}, "
            f"decoupled={self.decoupled}"
        )

    def forward(
        self,
        out: AEOutput | tuple,
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        fn = "AE2DLoss"
        if not isinstance(out, tuple) or len(out) != 2:
            raise InputError(f"{fn} needs the model output (mean, logvar), got {type(out)}")
        mean, logvar = out
        _check_same_shape(fn, mean=mean, logvar=logvar, target=target)
        if self.kind != "mse" and logvar is None:
            raise InputError(
                f"{fn}: the {self.kind!r} loss needs a log-variance output, but the model "
                "has no variance head (build it from the same config)"
            )
        sq = (target - mean).square()
        if self.kind == "mse":
            total = masked_mean(sq, mask)
        elif self.kind == "upae":
            total = upae_loss(mean, logvar, target, mask)
        else:
            nll = gaussian_nll(
                target,
                mean.detach() if self.decoupled else mean,
                torch.exp(logvar),
                floor=self.var_floor,
                beta=self.beta,
                reduction="none",
            )
            total = masked_mean(nll, mask)
            if self.decoupled:
                # the mean's term is the NLL of one variance fitted to the batch,
                # 0.5 log(mean r^2): the direction of the MSE, at the NLL's scale (a bare
                # MSE term is ~100x weaker than the variance head's NLL gradient in the
                # shared layers, and the mean then hardly learns)
                total = total + 0.5 * torch.log(masked_mean(sq, mask) + self.var_floor + 1e-12)
        with torch.no_grad():
            logged = {"loss": total.detach(), "mse": masked_mean(sq, mask)}
            if logvar is not None:
                logged["mean_logvar"] = masked_mean(logvar, mask)
                logged["zms"] = masked_mean(sq * torch.exp(-logvar), mask)
            values = torch.stack([v.float() for v in logged.values()]).tolist()
        return total, dict(zip(logged, values, strict=True))


# --------------------------------------------------------------------------------------
# abnormality scores
# --------------------------------------------------------------------------------------


def pixel_scores(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Per-pixel abnormality ``(x - mu)^2 / sigma^2`` (same shape as ``x``); ``var`` is the
    predicted variance ``sigma^2`` (aleatoric, or aleatoric + MC-dropout epistemic) and
    must be > 0 everywhere."""
    fn = "pixel_scores"
    _check_same_shape(fn, x=x, mean=mean, var=var)
    n_bad = int((~(var > 0)).sum())
    if n_bad:
        raise InputError(
            f"{fn}: var must be > 0 everywhere, found {n_bad} value(s) <= 0 or NaN; "
            "floor the predicted variance"
        )
    return (x - mean).square() / var


def _per_image(values: torch.Tensor, mask: torch.Tensor | None, fn: str) -> torch.Tensor:
    if values.ndim < 2:
        raise InputError(f"{fn}: expected a batch of images (B, ...), got {tuple(values.shape)}")
    return masked_mean(values, mask, dims=tuple(range(1, values.ndim)))


def image_score(
    x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-image abnormality ``mean((x - mu)^2 / sigma^2)`` over all axes but the first
    (over the valid pixels of ``mask``), shape ``(B,)``. Without a mask it equals
    :func:`napari_sim_uq.core.uq.metrics.anomaly_scores` ``(x, mean, sqrt(var))``."""
    return _per_image(pixel_scores(x, mean, var), mask, "image_score")


def mse_score(
    x: torch.Tensor, mean: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-image abnormality of a plain autoencoder, ``mean((x - mu)^2)`` over all axes but
    the first (over the valid pixels of ``mask``), shape ``(B,)``."""
    _check_same_shape("mse_score", x=x, mean=mean)
    return _per_image((x - mean).square(), mask, "mse_score")
