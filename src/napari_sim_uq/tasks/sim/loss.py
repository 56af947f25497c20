r"""Training loss of :class:`~napari_sim_uq.tasks.sim.net.SimUQNet` (DESIGN.md section 4,
items 5-7): heteroscedastic Gaussian NLL of the raw SIM frames under the propagated
variance, a learnable camera-noise term, optional beta-NLL, an auxiliary L1 / MS-SSIM
reconstruction term and optional supervised terms against ground truth.

Units and conventions
---------------------
All intensities are **normalised** intensities (the units of the network input ``x``,
DESIGN.md section 3); variances are in normalised intensity squared. Ground truth given to
the supervised terms must be normalised the same way as ``x``.

Raw term. The network output gives the mean ``y = E[y]`` and the model variance
``Var_model(y)`` of every raw frame through the exact forward model and variance
propagation of :func:`napari_sim_uq.tasks.sim.physics.forward_mean_and_variance` (the output's
``*_var`` are already post-activation variances, item 5). The PSF is a softmax, so its
covariance is the exact delta-method covariance of the softmax (diagonal plus rank 2,
:func:`napari_sim_uq.tasks.sim.physics.softmax_psf_covariance`) computed from ``psf_logvar``;
an output with ``psf_var`` but no ``psf_logvar`` falls back to independent PSF pixels
conditioned on ``sum(h) = 1`` (``psf_sum_to_one``). The predictive variance of pixel ``i`` is

    V_i = Var_model(y_i) + Var_cam(y_i) + var_floor

and the per-pixel loss ``nll_i = 0.5 * ((x_i - y_i)^2 / V_i + log V_i)``, **without** the
constant ``0.5 * log(2 pi)`` (so the NLL can be negative; add ``0.9189385`` per pixel for
the true negative log-density). Reduction: the mean over batch, frames and pixels.

``var_floor`` is **absolute** (normalised intensity^2, default ``1e-6``, i.e. a standard
deviation of ``1e-3`` of the normalised range) and is *added*, not clamped, so gradients
always reach every variance. It keeps ``V > 0`` where the activations saturate (the
delta-method variances of a dark emitter or a saturated pattern underflow to 0) and with
``camera_noise="none"``.

Camera noise (item 6). :class:`CameraNoise`: ``Var_cam = alpha * max(y, 0) + beta`` with
learnable scalars ``alpha = softplus(a)``, ``beta = softplus(c)``. A camera with gain ``g``
(counts per photon), read noise ``sigma_r`` (counts) and an affine normalisation
``x_norm = (x_counts - o) / s`` has exactly ``alpha = 1 / (g s)`` and
``beta = (sigma_r^2 + o / g) / s^2`` (for ``o`` counts of offset above the zero-photon
level). Without it, shot and read noise have nowhere to go but into ``Var(e)`` / ``Var(l)``.
A spatially varying read-noise map is not representable by the scalar ``beta``: the excess
then goes into the model variances. ``Var_cam`` is a function of ``y`` *with* gradient
(the proper Gaussian likelihood; its expected score is zero at the true mean).

beta-NLL (Seitzer et al. 2022, "On the pitfalls of heteroscedastic uncertainty
estimation"): every pixel's NLL is weighted by ``stop_grad(V_i)^beta`` (``beta_nll`` in
``[0, 1]``; 0 is the plain NLL, 1 gives the mean the gradient of an MSE). It is applied to
every Gaussian NLL term (raw and supervised).

Supervised terms (``supervised=True``, batch with ``"emitter_gt"`` and/or ``"lp_gt"``):
``gaussian_nll(gt, mean, var, var_floor, beta_nll)`` for the emitter and the light
patterns; a target without predicted variance (not in ``uq_targets``) uses the MSE
instead. The key tells which entered the total: ``sup_<name>_nll`` is present only when
the NLL was used; ``sup_<name>_mse`` is always logged and is the contribution when there is
no ``sup_<name>_nll``. ``supervised=True`` with neither key in the batch raises
:class:`InputError` (a missing ground truth is a setup mistake, not silently skipped).

``sup_var_only`` (issue 15): with ground truth, the raw-frame NLL sees the emitter and
pattern variances detached, so only the supervised NLL against the ground truth trains them.
Otherwise the raw NLL pushes every misfit of the camera-noise model (a per-stack read-noise
map that the scalar ``beta`` cannot represent) into ``Var(e)`` as well, which inflates the
emitter std on the dark background.

Auxiliary term: ``mean |x - y|`` (``"l1"``) or ``1 - MS-SSIM(y, x)`` (``"ms-ssim"``,
:func:`napari_sim_uq.core.uq.metrics.ms_ssim`, every frame a channel, data range
``max(x) - min(x)`` of the batch). Five scales with an 11-pixel window need at least 176
pixels per side; smaller frames use the largest number of scales ``s`` with
``11 * 2^(s-1) <= min(H, W)`` and the first ``s`` standard weights renormalised to sum 1;
frames smaller than 11 pixels fall back to L1 with a one-time warning per loss instance.

Total: ``raw_weight * raw_nll + aux_rec_weight * aux + sup_emitter_weight * sup_emitter
+ sup_lp_weight * sup_lp``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from napari_sim_uq.core.config import JsonConfig, option
from napari_sim_uq.core.errors import InputError, SimUqError
from napari_sim_uq.core.nn.losses import CameraNoise, gaussian_nll, real_param
from napari_sim_uq.core.uq.metrics import MS_SSIM_WEIGHTS, ms_ssim
from napari_sim_uq.tasks.sim.net import SimOutput
from napari_sim_uq.tasks.sim.physics import forward_mean_and_variance, softmax_psf_covariance

__all__ = [
    "AUX_REC_MODES",
    "CAMERA_NOISE_MODELS",
    "LossResult",
    "NonFiniteLossError",
    "SimLoss",
    "SimLossConfig",
]

CAMERA_NOISE_MODELS = ("poisson_gaussian", "none")
AUX_REC_MODES = ("l1", "ms-ssim")
_AUX_ALIASES = {"ms_ssim": "ms-ssim", "msssim": "ms-ssim", "L1": "l1"}
_MS_SSIM_WIN = 11


class NonFiniteLossError(SimUqError, RuntimeError):
    """A loss term is NaN or infinite (training diverged or bad data reached the loss).

    ``terms`` lists the non-finite terms (first one first); the message also names model
    outputs or inputs that are non-finite. A training loop should stop and keep its last
    good checkpoint (e.g. lower the learning rate and resume from it).
    """

    def __init__(self, message: str, terms: list[str]):
        super().__init__(message)
        self.terms = terms


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------


@dataclass
class SimLossConfig(JsonConfig):
    """Options of :class:`SimLoss` (JSON round trip: :meth:`to_dict` / :meth:`from_dict`).

    Invalid values raise :class:`~napari_sim_uq.core.errors.InputError`. See the module
    docstring for the meaning and units of every term.
    """

    _what = "loss parameters"

    var_floor: float = option(
        1e-6,
        help="absolute variance floor (normalised intensity^2) added to every variance",
        minimum=0.0,
        flag="--uq-var-floor",
    )
    psf_var_weight: float = option(
        1.0,
        help="factor on the PSF covariance in the raw-frame variance; 0 disables it",
        minimum=0.0,
        flag="--uq-psf-var-weight",
    )
    camera_noise: str = "poisson_gaussian"  # or "none"
    camera_alpha_init: float = 1e-3  # initial alpha (normalised intensity)
    camera_beta_init: float = 1e-4  # initial beta (normalised intensity^2)
    beta_nll: float = option(0.0, help="beta-NLL exponent; 0 = plain NLL", minimum=0.0, maximum=1.0)
    aux_rec_weight: float = option(
        0.0,
        help="weight of the auxiliary reconstruction term; 0 = off",
        minimum=0.0,
        flag="--uq-aux-rec-weight",
    )
    aux_rec_mode: str = option(
        "l1",
        help="auxiliary reconstruction term",
        choices=AUX_REC_MODES,
        flag="--uq-aux-rec-mode",
    )
    supervised: bool = False  # add NLL terms against emitter / light-pattern ground truth
    sup_structure_weight: float = option(
        0.0,
        help="supervised training: extra weight of the structure pixels (true emitter above "
        "1 %% of its bright level) in the emitter NLL, w = 1 + this, weights normalised to "
        "mean 1 per image; 0 = plain NLL",
        minimum=0.0,
        flag="--uq-structure-weight",
    )
    sup_var_only: bool = option(
        False,
        help="supervised training: the emitter and pattern variances learn from the "
        "ground-truth NLL only (held fixed in the raw-frame NLL, so camera-noise misfit does "
        "not leak into them)",
        flag="--uq-sup-var-only",
    )
    sup_emitter_weight: float = 1.0
    sup_lp_weight: float = 1.0
    raw_weight: float = 1.0  # weight of the raw-frame NLL

    def __post_init__(self) -> None:
        if isinstance(self.aux_rec_mode, str):
            self.aux_rec_mode = _AUX_ALIASES.get(self.aux_rec_mode, self.aux_rec_mode)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`InputError` on the first invalid value."""
        real_param("var_floor", self.var_floor, positive=True)
        real_param("psf_var_weight", self.psf_var_weight, minimum=0.0)
        if self.camera_noise not in CAMERA_NOISE_MODELS:
            raise InputError(
                f"camera_noise must be one of {list(CAMERA_NOISE_MODELS)}, "
                f"got {self.camera_noise!r}"
            )
        real_param("camera_alpha_init", self.camera_alpha_init, positive=True)
        real_param("camera_beta_init", self.camera_beta_init, positive=True)
        b = real_param("beta_nll", self.beta_nll, minimum=0.0)
        if b > 1.0:
            raise InputError(f"beta_nll must lie in [0, 1], got {self.beta_nll!r}")
        real_param("aux_rec_weight", self.aux_rec_weight, minimum=0.0)
        if self.aux_rec_mode not in AUX_REC_MODES:
            raise InputError(
                f"aux_rec_mode must be one of {list(AUX_REC_MODES)}, got {self.aux_rec_mode!r}"
            )
        if not isinstance(self.supervised, bool):
            raise InputError(f"supervised must be true or false, got {self.supervised!r}")
        real_param("sup_emitter_weight", self.sup_emitter_weight, minimum=0.0)
        real_param("sup_structure_weight", self.sup_structure_weight, minimum=0.0)
        real_param("sup_lp_weight", self.sup_lp_weight, minimum=0.0)
        real_param("raw_weight", self.raw_weight, minimum=0.0)
        sup = self.supervised and (self.sup_emitter_weight > 0 or self.sup_lp_weight > 0)
        if not (self.raw_weight > 0 or self.aux_rec_weight > 0 or sup):
            raise InputError(
                "the loss has no term left: raw_weight and aux_rec_weight are 0 and there is "
                "no weighted supervised term; set raw_weight > 0"
            )


# --------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------


def _structure_weights(gt: torch.Tensor, extra: float) -> torch.Tensor:
    """Per-pixel weights ``1 + extra`` on structure pixels (``gt`` above 1 % of its 99.9th
    percentile, per image) and 1 elsewhere, normalised to mean 1 per image (detached)."""
    with torch.no_grad():
        flat = gt.flatten(1).float()
        q = torch.quantile(flat, 0.999, dim=1).clamp_min(1e-12)
        structure = (flat > 0.01 * q[:, None]).to(gt.dtype)
        w = 1.0 + extra * structure
        w = w / w.mean(dim=1, keepdim=True)
    return w.reshape(gt.shape)


@dataclass
class LossResult:
    """What :meth:`SimLoss.forward` returns.

    ``total``: scalar tensor to backpropagate. ``terms``: detached floats for logging
    (always ``total``, ``raw_nll``, ``raw_mse``, ``raw_zms`` = ``mean((x - y)^2 / V)``,
    ``mean_var_y`` (``V``), ``mean_var_y_model``, ``mean_var_cam``, ``camera_alpha``,
    ``camera_beta``; ``emitter_std`` / ``lp_std`` / ``psf_std`` (mean post-activation
    standard deviations) where predicted; ``aux`` when ``aux_rec_weight > 0``;
    ``sup_emitter_nll`` or ``sup_emitter_mse``, ``sup_lp_nll`` or ``sup_lp_mse`` when
    supervised). ``y_mean``, ``y_var`` (the total predictive variance ``V``) and
    ``y_var_model`` (without camera noise and floor) are detached ``(B, F, H, W)``.
    """

    total: torch.Tensor
    terms: dict[str, float]
    y_mean: torch.Tensor
    y_var: torch.Tensor
    y_var_model: torch.Tensor


class SimLoss(nn.Module):
    """Loss of the SIM network (module docstring). Holds the learnable :class:`CameraNoise`
    (``self.camera``, ``None`` for ``camera_noise="none"``): put ``loss.parameters()`` into
    the optimiser and ``loss.state_dict()`` into checkpoints."""

    def __init__(self, cfg: SimLossConfig | dict | None = None, hr_factor: int = 2):
        super().__init__()
        cfg = SimLossConfig.coerce(cfg)  # validated private copy
        if isinstance(hr_factor, bool) or not isinstance(hr_factor, numbers.Integral):
            raise InputError(f"hr_factor must be an integer >= 1, got {hr_factor!r}")
        if hr_factor < 1:
            raise InputError(f"hr_factor must be an integer >= 1, got {hr_factor!r}")
        self.cfg = cfg
        self.hr_factor = int(hr_factor)
        self.camera: CameraNoise | None = None
        if cfg.camera_noise == "poisson_gaussian":
            self.camera = CameraNoise(cfg.camera_alpha_init, cfg.camera_beta_init)
        self._warned_ms_ssim = False

    # -- checks --------------------------------------------------------------------------

    def _check_shapes(self, out: SimOutput, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"x must be a torch tensor, got {type(x).__name__}")
        if x.ndim != 4:
            raise InputError(f"x must have shape (B, F, H, W), got {tuple(x.shape)}")
        e, lp = out.emitter, out.lp
        if e.ndim != 4 or e.shape[1] != 1:
            raise InputError(f"model emitter must be (B, 1, fH, fW), got {tuple(e.shape)}")
        if lp.ndim != 4 or lp.shape[0] != e.shape[0] or lp.shape[-2:] != e.shape[-2:]:
            raise InputError(
                f"model light patterns {tuple(lp.shape)} do not match the emitter "
                f"{tuple(e.shape)}; expected (B, F, fH, fW)"
            )
        b, n, h, w = x.shape
        if b != e.shape[0]:
            raise InputError(f"x has batch size {b} but the model output has {e.shape[0]}")
        if n != lp.shape[1]:
            raise InputError(
                f"x has {n} frames but the model output has {lp.shape[1]} light patterns; "
                "the data and the model must have the same number of angles x phases"
            )
        f = self.hr_factor
        if tuple(e.shape[-2:]) != (f * h, f * w):
            raise InputError(
                f"x frames are {h} x {w} pixels, so with hr_factor={f} the model output should "
                f"be {f * h} x {f * w}, but it is {e.shape[-2]} x {e.shape[-1]}; check "
                "hr_factor and that the output belongs to this input"
            )

    def _gt(self, batch: dict, key: str, like: torch.Tensor) -> torch.Tensor:
        gt = batch[key]
        if not isinstance(gt, torch.Tensor):
            gt = torch.as_tensor(gt)
        gt = gt.to(device=like.device, dtype=like.dtype)
        if key == "emitter_gt" and gt.ndim == 3:
            gt = gt[:, None]
        if gt.shape != like.shape:
            raise InputError(
                f"{key} has shape {tuple(batch[key].shape)} but the model output is "
                f"{tuple(like.shape)}; ground truth must be on the HR grid, normalised like x"
            )
        if not bool(torch.isfinite(gt).all()):
            raise InputError(f"{key} contains NaN or infinite values")
        return gt

    # -- terms ---------------------------------------------------------------------------

    def _aux(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.cfg.aux_rec_mode == "ms-ssim":
            side = min(x.shape[-2:])
            n_scales = 0
            while n_scales < len(MS_SSIM_WEIGHTS) and _MS_SSIM_WIN * 2**n_scales <= side:
                n_scales += 1
            if n_scales > 0:
                w = MS_SSIM_WEIGHTS[:n_scales]
                weights = [v / sum(w) for v in w]
                data_range = max(float((x.max() - x.min()).detach()), 1e-6)
                return 1.0 - ms_ssim(y, x, data_range, weights=weights, win_size=_MS_SSIM_WIN)
            if not self._warned_ms_ssim:
                warnings.warn(
                    f"MS-SSIM needs frames of at least {_MS_SSIM_WIN} pixels per side, got "
                    f"{x.shape[-2]} x {x.shape[-1]}: using L1 for the auxiliary term",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self._warned_ms_ssim = True
        return (x - y).abs().mean()

    def forward(self, out: SimOutput, x: torch.Tensor, batch: dict | None = None) -> LossResult:
        """Loss of the output ``out`` of the network for the normalised raw stack ``x``
        ``(B, F, H, W)``; ``batch`` may carry ``"emitter_gt"`` ``(B, 1, fH, fW)`` or
        ``(B, fH, fW)`` and ``"lp_gt"`` ``(B, F, fH, fW)`` for the supervised terms.

        Raises :class:`InputError` for mismatched shapes (or ``supervised=True`` with no
        ground truth in ``batch``) and :class:`NonFiniteLossError` for a NaN/inf term.
        """
        cfg = self.cfg
        self._check_shapes(out, x)
        if x.dtype != out.emitter.dtype:
            x = x.to(out.emitter.dtype)

        # --- propagated mean and variance of the raw frames
        var_psf = lowrank = None
        psf_sum_to_one = False
        if cfg.psf_var_weight > 0:
            if out.psf_logvar is not None:
                var_psf, lowrank = softmax_psf_covariance(out.psf, out.psf_logvar.exp())
            elif out.psf_var is not None:
                var_psf, psf_sum_to_one = out.psf_var, True
        background = 0.0 if out.background is None else out.background
        var_e, var_l = out.emitter_var, out.lp_var
        if cfg.supervised and cfg.sup_var_only and batch is not None:
            # the supervised NLL alone trains these variances (module docstring)
            if var_e is not None and "emitter_gt" in batch:
                var_e = var_e.detach()
            if var_l is not None and "lp_gt" in batch:
                var_l = var_l.detach()
        y_mean, y_var_model = forward_mean_and_variance(
            out.emitter,
            out.lp,
            out.psf,
            self.hr_factor,
            background,
            var_emitter=var_e,
            var_patterns=var_l,
            var_psf=var_psf,
            psf_var_weight=cfg.psf_var_weight,
            psf_sum_to_one=psf_sum_to_one,
            psf_lowrank=lowrank,
        )
        var_cam = self.camera(y_mean) if self.camera is not None else None
        v = y_var_model if var_cam is None else y_var_model + var_cam
        v = v + cfg.var_floor
        resid2 = (x - y_mean).square()

        losses: dict[str, torch.Tensor] = {}  # weighted into the total
        logs: dict[str, torch.Tensor] = {}  # logged only
        losses["raw_nll"] = gaussian_nll(x, y_mean, v, 0.0, cfg.beta_nll)
        logs["raw_mse"] = resid2.mean()
        logs["raw_zms"] = (resid2 / v).mean()
        weights = {"raw_nll": cfg.raw_weight}

        if cfg.aux_rec_weight > 0:
            losses["aux"] = self._aux(x, y_mean)
            weights["aux"] = cfg.aux_rec_weight

        if cfg.supervised:
            have = [k for k in ("emitter_gt", "lp_gt") if batch is not None and k in batch]
            if not have:
                raise InputError(
                    "supervised=True but the batch has no ground truth ('emitter_gt' or "
                    "'lp_gt'); use a dataset with ground truth or turn supervised off"
                )
            for name, mean, var, wt in (
                ("emitter", out.emitter, out.emitter_var, cfg.sup_emitter_weight),
                ("lp", out.lp, out.lp_var, cfg.sup_lp_weight),
            ):
                if f"{name}_gt" not in have:
                    continue
                gt = self._gt(batch, f"{name}_gt", mean)
                mse = (mean - gt).square().mean()
                if var is None:
                    losses[f"sup_{name}_mse"] = mse
                    weights[f"sup_{name}_mse"] = wt
                elif name == "emitter" and cfg.sup_structure_weight > 0:
                    nll = gaussian_nll(gt, mean, var, cfg.var_floor, cfg.beta_nll, "none")
                    w = _structure_weights(gt, cfg.sup_structure_weight)
                    losses[f"sup_{name}_nll"] = (w * nll).mean()
                    weights[f"sup_{name}_nll"] = wt
                    logs[f"sup_{name}_mse"] = mse
                else:
                    losses[f"sup_{name}_nll"] = gaussian_nll(
                        gt, mean, var, cfg.var_floor, cfg.beta_nll
                    )
                    weights[f"sup_{name}_nll"] = wt
                    logs[f"sup_{name}_mse"] = mse

        total = sum(wt * losses[k] for k, wt in weights.items())

        with torch.no_grad():
            logs["mean_var_y"] = v.mean()
            logs["mean_var_y_model"] = y_var_model.mean()
            logs["mean_var_cam"] = (
                var_cam.mean() if var_cam is not None else torch.zeros_like(v[0, 0, 0, 0])
            )
            if self.camera is not None:
                logs["camera_alpha"] = self.camera.alpha.to(v.dtype)
                logs["camera_beta"] = self.camera.beta.to(v.dtype)
            for name, var in (
                ("emitter", out.emitter_var),
                ("lp", out.lp_var),
                ("psf", out.psf_var),
            ):
                if var is not None:
                    logs[f"{name}_std"] = var.clamp_min(0).sqrt().mean()
            names = ["total", *losses, *logs]
            vals = torch.stack(
                [total.detach(), *(t.detach() for t in losses.values()), *logs.values()]
            )
            floats = vals.to(torch.float64).cpu().tolist()  # one device sync
        terms = dict(zip(names, floats, strict=True))
        if self.camera is None:
            terms["camera_alpha"] = terms["camera_beta"] = 0.0

        bad = [k for k in losses if not math.isfinite(terms[k])]
        if bad or not math.isfinite(terms["total"]):
            raise NonFiniteLossError(self._nonfinite_message(bad or ["total"], out, x), bad)

        return LossResult(
            total=total,
            terms=terms,
            y_mean=y_mean.detach(),
            y_var=v.detach(),
            y_var_model=y_var_model.detach(),
        )

    def _nonfinite_message(self, bad: list[str], out: SimOutput, x: torch.Tensor) -> str:
        culprits = []
        for name, t in out._asdict().items():
            if isinstance(t, torch.Tensor) and not bool(torch.isfinite(t).all()):
                culprits.append(f"model output '{name}'")
        if not bool(torch.isfinite(x).all()):
            culprits.append("the input x")
        if self.camera is not None:
            for p in self.camera.parameters():
                if not bool(torch.isfinite(p).all()):
                    culprits.append("the camera-noise parameters")
                    break
        where = f" ({', '.join(culprits)} contain NaN/inf)" if culprits else ""
        return (
            f"non-finite loss term {bad[0]!r}"
            + (f" (all non-finite: {bad})" if len(bad) > 1 else "")
            + f"{where}; training diverged or bad data reached the loss. Stop, keep the last "
            "checkpoint and resume with a lower learning rate."
        )
