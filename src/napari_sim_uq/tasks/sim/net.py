r"""SIM reconstruction network with per-pixel uncertainty (``SimUQNet``).

The network maps a normalised raw SIM stack ``x`` of shape ``(B, A*P, H, W)`` (angle-major
frames, DESIGN.md section 3) to the quantities of the forward model of DESIGN.md section 4,
``y_i = down_f(B(h * (e . l_i))) + b``, each with a variance:

- ``emitter`` ``(B, 1, fH, fW)``: ``softplus(a)``, ``>= 0``;
- ``lp`` ``(B, F, fH, fW)``: ``1 + tanh(a)``, in ``[0, 2]`` (a pattern ``1 + m cos(...)`` with
  modulation ``m <= 1`` lies in ``[1 - m, 1 + m]``; ``a = 0`` is uniform illumination 1);
- ``psf`` ``(B, k, k)``: softmax over the ``k*k`` logits, ``>= 0``, sums to 1 (one PSF per
  sample, shared by all frames, as :func:`napari_sim_uq.tasks.sim.physics.sim_forward` takes it);
- ``background`` ``(B, 1, 1, 1)``: ``softplus``, ``>= 0`` (``None`` if not predicted).

Variance convention
-------------------
The returned ``*_var`` tensors are the variances of the **post-activation** quantities
that enter the forward model (DESIGN.md section 4, item 5). With ``var_space="output"``
(the default) the emitter and pattern heads predict the log-variance ``s`` of those values
directly: ``emitter_var = exp(s)``, ``lp_var = exp(s)``. With ``var_space="logit"`` (and
always for the PSF) a head predicts the log-variance of the **pre-activation** value ``a``
(the logit), mapped by the first-order delta method ``Var(g(a)) ~ g'(mu_a)^2 Var(a)``.
That collapses to zero with the emitter where it is dark, which makes missed dim structures
absurdly over-confident (docs/method.md); it remains for checkpoints trained that way:

- emitter: ``Var(softplus(a)) = sigmoid(a)^2 exp(s)`` (:func:`softplus_variance`);
- light pattern: ``Var(1 + tanh(a)) = sech(a)^4 exp(s)`` with ``sech^2 a`` evaluated as
  ``4 sigmoid(2a) sigmoid(-2a)`` (no cancellation for large ``|a|``)
  (:func:`bounded_tanh_variance`);
- PSF: ``Var(p_i) = sum_j J_ij^2 exp(s_j)`` with the softmax Jacobian
  ``J = diag(p) - p p^T`` (:func:`softmax_variance`; only the diagonal is returned: the full
  covariance ``J diag(v) J^T`` has zero row sums because ``sum(p) = 1``; it is the diagonal
  plus rank-2 matrix ``diag(w) - w p^T - p w^T + c p p^T`` with ``w = p^2 v``,
  ``c = sum(w)``, see :func:`softmax_covariance_factors`, should exact propagation of the
  PSF covariance be wanted).

The raw (clamped) log-variances are returned too (``emitter_logvar``, ``lp_logvar``,
``psf_logvar``), for plots and debugging; they are log-variances of the *logits*, not of
the outputs. Where an activation saturates (very dark emitter, pattern at 0 or 2) the
post-activation variance goes to 0 (and may underflow in float32): the loss must put a
floor on the total variance (DESIGN.md section 4, item 7). Targets not listed in
``SimNetConfig.uq_targets`` get no log-variance head and their ``*_var`` / ``*_logvar``
outputs are ``None``.

Log-variance clamp
------------------
A *soft* clamp (:func:`soft_clamp`) maps the raw head output ``r`` into
``[logvar_min, logvar_max]``::

    t = max - softplus(max - r);   s = min + softplus(t - min)

It is the identity up to ``O(exp(-distance to a bound))`` inside the interval, smooth, and
its gradient is never exactly zero (it decays exponentially beyond a bound). A hard clamp
gives zero gradient outside the interval, so a head that overshoots gets stuck there;
``min + (max - min) sigmoid(r)`` is bounded but distorts the whole range (its slope is 4.5
at the centre for the defaults and the bias no longer reads as a log-variance). A final
hard clamp only removes the rounding-level overshoot (at most
``log1p(exp(-(max - min)))``) and is inactive otherwise. The log-variance heads start with
zero weights and a bias set so that the clamped log-variance equals ``logvar_init``
exactly (the bias is ``logvar_init`` up to ~1e-3 for the defaults; it is corrected through
the inverse of the soft clamp).

Architecture
------------
U-Net at LR resolution: a stem block, ``depth`` strided encoder blocks (the last one is
the bottleneck), ``depth`` decoder blocks (bilinear x2 upsampling, 1x1 conv, concatenation
with the skip, block). A block is ``(Conv3x3 - norm - SiLU) x 2``; decoder blocks and
the bottleneck end with ``Dropout2d(dropout)`` (the layers used for MC dropout, see
:func:`mc_dropout_mode`). Channels ``base * 2^min(level, 3)``. The LR features are brought
to HR by ``Conv3x3 (ICNR init) - PixelShuffle(f)`` (skipped for ``f = 1``) and one more
``Conv3x3 - norm - SiLU``; 1x1 convolutions give the emitter and pattern means and
log-variances. The PSF comes from the global average of the bottleneck features through an
MLP (``Linear - SiLU``, then one linear layer for the ``k*k`` logits and one for their
log-variances); its logits start as a centred Gaussian of standard deviation
``max(1, (k - 1) / 6)`` HR pixels. The background is ``softplus(Linear(pooled))``, starting
at 0.1 (normalised units). ``forward(x, pooled=...)`` accepts the pooled vector from outside
(tiled inference passes the whole image's, see :meth:`SimUQNet.bottleneck`).

``norm`` (``SimNetConfig.norm``) is ``"pixel"`` by default: a LayerNorm over the channels of
each pixel (:class:`PixelNorm`), so that apart from the pooled heads every output depends
only on the inputs within :func:`receptive_radius` LR pixels (53 for depth 3), which makes
tiled inference exact. ``"group"`` (GroupNorm, 8 groups) normalises with statistics of the
whole image (not tiling-exact); ``"none"`` has no normalisation.

Inputs of any ``H, W`` are accepted: they are padded (reflect, or replicate when the image
is smaller than the padding) to a multiple of ``2^depth`` and the HR outputs cropped back to
``(f H, f W)``, the padding being split evenly between both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from napari_sim_uq.core.config import JsonConfig, check_dropout_and_logvar_range, option
from napari_sim_uq.core.config import check_int as _check_int
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.nn.activations import (
    bounded_tanh_variance,
    inv_soft_clamp,
    inv_softplus,
    soft_clamp,
    softmax_variance,
    softplus_variance,
)
from napari_sim_uq.core.nn.blocks import ConvBlock, UpBlock, icnr_, norm_layer

__all__ = [
    "NORMS",
    "UQ_TARGETS",
    "VAR_SPACES",
    "SimNetConfig",
    "SimOutput",
    "SimUQNet",
    "receptive_radius",
]

#: The quantities that can carry a predicted variance.
UQ_TARGETS = ("emitter", "lp", "psf")

#: Feature normalisations of the conv blocks (``SimNetConfig.norm``).
NORMS = ("pixel", "group", "none")

#: What the emitter/pattern log-variance heads predict (``SimNetConfig.var_space``).
VAR_SPACES = ("output", "logit")

#: Values of options added after the first release, for stored model configs that lack
#: them (the behaviour those checkpoints were trained with); see
#: :meth:`SimNetConfig.from_stored`.
STORED_DEFAULTS = {"var_space": "logit"}

_BACKGROUND_INIT = 0.1  # initial background, normalised intensity units
_EMITTER_INIT_LOGIT = -3.0  # emitter head bias with estimated patterns: softplus = 0.049


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------


@dataclass
class SimNetConfig(JsonConfig):
    """Hyper-parameters of :class:`SimUQNet` (JSON round trip: :meth:`to_dict` /
    :meth:`from_dict`). Invalid values raise :class:`~napari_sim_uq.core.errors.InputError`."""

    _what = "SIM network parameters"

    n_angles: int = 3
    n_phases: int = 3
    hr_factor: int = option(
        2, help="the HR grid is this many times finer than the camera grid", minimum=1, maximum=16
    )
    base_channels: int = option(32, help="channels of the first U-Net level", minimum=4)
    depth: int = option(
        3,
        help="number of U-Net downsamplings (levels below the input resolution)",
        minimum=1,
        maximum=8,
    )
    dropout: float = option(
        0.1,
        help="probability of the Dropout2d layers (decoder blocks, bottleneck), in [0, 1)",
        minimum=0.0,
        maximum=1.0,
    )
    psf_size: int = option(15, help="the PSF is k x k HR pixels, k odd", minimum=1, maximum=101)
    uq_targets: tuple[str, ...] = option(
        UQ_TARGETS,
        help="which outputs carry a log-variance (comma-separated)",
        choices=UQ_TARGETS,
        sep=",",
    )
    logvar_init: float = option(
        -4.0, help="initial log-variance of every head", flag="--uq-logvar-init"
    )
    logvar_min: float = option(
        -12.0, help="lower soft clamp of the log-variances", flag="--uq-logvar-min"
    )
    logvar_max: float = option(
        6.0, help="upper soft clamp of the log-variances", flag="--uq-logvar-max"
    )
    predict_background: bool = True
    # feature normalisation in the conv blocks: "pixel" (LayerNorm over the channels of each
    # pixel), "group" (GroupNorm: statistics over the whole image) or "none". "pixel" and
    # "none" keep every output a function of a bounded neighbourhood, so tiled inference
    # equals whole-image inference exactly; "group" does not.
    norm: str = "pixel"
    # what the emitter and pattern log-variance heads predict: "output" (the log-variance of
    # the emitter / pattern value itself) or "logit" (of the pre-activation, mapped through
    # the activation by the delta method; it collapses to ~0 where the emitter is dark, so a
    # missed dim structure gets an absurdly small sigma). Checkpoints written before this
    # option existed are "logit" (see STORED_DEFAULTS).
    var_space: str = option(
        "output",
        help="emitter/pattern log-variance heads predict the log-variance of the value "
        "(output) or of its logit, via the delta method",
        choices=VAR_SPACES,
        flag="--uq-var-space",
    )

    # where the light patterns of the forward model come from: the network's pattern head,
    # or the instrument's parametric patterns estimated from the raw data (tasks/sim/
    # pattern_model.py; the head is then ignored). Not a network hyper-parameter, but it
    # decides what the outputs mean, so it travels with the model config.
    patterns: str = option(
        "network",
        help="optics of the forward model: the network's pattern and PSF heads, or the "
        "instrument's cosine patterns and Gaussian PSF estimated from the raw stacks, with a "
        "least-squares background (needs stacks of one instrument; makes self-supervised "
        "training identifiable)",
        choices=("network", "estimated"),
    )

    def __post_init__(self) -> None:
        targets = self.uq_targets
        if isinstance(targets, str):
            targets = (targets,)
        try:
            targets = tuple(targets)
        except TypeError:
            raise InputError(
                f"uq_targets must be a list of names from {list(UQ_TARGETS)}, got {targets!r}"
            ) from None
        unknown = [t for t in targets if t not in UQ_TARGETS]
        if unknown:
            raise InputError(f"unknown uq_targets {unknown}: choose any of {list(UQ_TARGETS)}")
        # canonical order, no duplicates (the config hash must not depend on the order)
        self.uq_targets = tuple(t for t in UQ_TARGETS if t in targets)
        self.validate()

    @classmethod
    def from_stored(cls, d: dict) -> SimNetConfig:
        """:meth:`from_dict` for a model config read from a checkpoint: options the file
        predates take the value it was trained with (:data:`STORED_DEFAULTS`)."""
        if not isinstance(d, dict):
            return cls.from_dict(d)
        return cls.from_dict({**STORED_DEFAULTS, **d})

    @property
    def n_frames(self) -> int:
        """Number of raw frames the model expects, ``n_angles * n_phases``."""
        return self.n_angles * self.n_phases

    def validate(self) -> None:
        """Raise :class:`InputError` on the first invalid value."""
        _check_int("n_angles", self.n_angles, 1)
        _check_int("n_phases", self.n_phases, 1)
        _check_int("hr_factor", self.hr_factor, 1, 16)
        _check_int("base_channels", self.base_channels, 4)
        _check_int("depth", self.depth, 1, 8)
        _check_int("psf_size", self.psf_size, 1, 101)
        if self.psf_size % 2 == 0:
            raise InputError(f"psf_size must be odd (the PSF is centred), got {self.psf_size}")
        check_dropout_and_logvar_range(self)
        if self.var_space not in VAR_SPACES:
            raise InputError(f"var_space must be one of {list(VAR_SPACES)}, got {self.var_space!r}")
        if self.patterns not in ("network", "estimated"):
            raise InputError(f"patterns must be 'network' or 'estimated', got {self.patterns!r}")
        if self.norm not in NORMS:
            raise InputError(f"norm must be one of {list(NORMS)}, got {self.norm!r}")
        if not isinstance(self.predict_background, bool):
            raise InputError(
                f"predict_background must be true or false, got {self.predict_background!r}"
            )


# --------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------


class SimOutput(NamedTuple):
    """What :meth:`SimUQNet.forward` returns (``F = A*P`` frames, ``k = psf_size``).

    Means are post-activation; ``*_var`` are delta-method variances of the post-activation
    quantities; ``*_logvar`` are the clamped log-variances of the pre-activation logits.
    Uncertainty outputs of targets not in ``uq_targets`` are ``None``, as is
    ``background`` when it is not predicted.
    """

    emitter: torch.Tensor  # (B, 1, fH, fW) >= 0
    emitter_var: torch.Tensor | None  # (B, 1, fH, fW)
    lp: torch.Tensor  # (B, F, fH, fW) in [0, 2]
    lp_var: torch.Tensor | None  # (B, F, fH, fW)
    psf: torch.Tensor  # (B, k, k), >= 0, sums to 1
    psf_var: torch.Tensor | None  # (B, k, k)
    background: torch.Tensor | None = None  # (B, 1, 1, 1) >= 0
    emitter_logvar: torch.Tensor | None = None  # (B, 1, fH, fW)
    lp_logvar: torch.Tensor | None = None  # (B, F, fH, fW)
    psf_logvar: torch.Tensor | None = None  # (B, k, k)


# --------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------


class SimUQNet(nn.Module):
    """U-Net SIM reconstruction with emitter, light-pattern, PSF and background outputs and
    their (delta-method, post-activation) variances. See the module docstring."""

    def __init__(self, cfg: SimNetConfig | dict | None = None):
        super().__init__()
        cfg = SimNetConfig.coerce(cfg)  # validated private copy
        self.cfg = cfg
        n_frames = cfg.n_frames
        depth = cfg.depth
        p = float(cfg.dropout)
        ch = [cfg.base_channels * 2 ** min(level, 3) for level in range(depth + 1)]
        c0, c_bottom = ch[0], ch[-1]
        k, f = cfg.psf_size, cfg.hr_factor

        # U-Net at LR resolution
        norm = cfg.norm
        self.stem = ConvBlock(n_frames, c0, norm=norm)
        self.down = nn.ModuleList(
            ConvBlock(ch[i], ch[i + 1], stride=2, dropout=p if i == depth - 1 else None, norm=norm)
            for i in range(depth)
        )
        self.up = nn.ModuleList(
            UpBlock(ch[i + 1], ch[i], dropout=p, norm=norm) for i in reversed(range(depth))
        )

        # LR -> HR
        hr_layers: list[nn.Module] = []
        if f > 1:
            shuffle_conv = nn.Conv2d(c0, c0 * f * f, 3, padding=1)
            icnr_(shuffle_conv, f)
            hr_layers += [shuffle_conv, nn.PixelShuffle(f)]
        hr_layers += [
            nn.Conv2d(c0, c0, 3, padding=1),
            norm_layer(norm, c0),
            nn.SiLU(),
        ]
        self.to_hr = nn.Sequential(*hr_layers)

        # pixel heads
        self.emitter_head = nn.Conv2d(c0, 1, 1)
        if cfg.patterns == "estimated":
            # start from a dim emitter (softplus(-3) = 0.05 of the normalised range) rather
            # than softplus(0) = 0.69: trained on raw frames alone, a model started bright
            # kept a constant offset that the background gave back (docs/classical-sim.md:
            # emitter PSNR 24.9 -> 26.7 dB on the same data); models with the network's
            # patterns keep the default start they were measured with
            with torch.no_grad():
                self.emitter_head.bias.fill_(_EMITTER_INIT_LOGIT)
        self.lp_head = nn.Conv2d(c0, n_frames, 1)
        with torch.no_grad():
            self.lp_head.weight.mul_(0.1)  # start near uniform illumination (lp ~ 1)
            self.lp_head.bias.zero_()
        self.emitter_logvar_head = self._logvar_conv(c0, 1) if "emitter" in cfg.uq_targets else None
        self.lp_logvar_head = self._logvar_conv(c0, n_frames) if "lp" in cfg.uq_targets else None

        # PSF from pooled bottleneck features
        hidden = max(64, c_bottom)
        self.psf_mlp = nn.Sequential(nn.Linear(c_bottom, hidden), nn.SiLU())
        self.psf_logits = nn.Linear(hidden, k * k)
        with torch.no_grad():
            self.psf_logits.weight.mul_(0.1)
            self.psf_logits.bias.copy_(_gaussian_logits(k))
        self.psf_logvar_head = None
        if "psf" in cfg.uq_targets:
            self.psf_logvar_head = nn.Linear(hidden, k * k)
            self._init_logvar(self.psf_logvar_head)

        self.background_head = None
        if cfg.predict_background:
            self.background_head = nn.Linear(c_bottom, 1)
            with torch.no_grad():
                self.background_head.weight.mul_(0.1)
                self.background_head.bias.fill_(inv_softplus(_BACKGROUND_INIT))

    # -- construction helpers ------------------------------------------------------------

    def _init_logvar(self, layer: nn.Conv2d | nn.Linear) -> None:
        cfg = self.cfg
        with torch.no_grad():
            layer.weight.zero_()
            layer.bias.fill_(inv_soft_clamp(cfg.logvar_init, cfg.logvar_min, cfg.logvar_max))

    def _logvar_conv(self, c_in: int, c_out: int) -> nn.Conv2d:
        conv = nn.Conv2d(c_in, c_out, 1)
        self._init_logvar(conv)
        return conv

    # -- properties ----------------------------------------------------------------------

    @property
    def expected_frames(self) -> int:
        """Number of raw frames per stack, ``n_angles * n_phases`` (angle-major)."""
        return self.cfg.n_frames

    @property
    def hr_factor(self) -> int:
        return self.cfg.hr_factor

    # -- forward -------------------------------------------------------------------------

    def check_input(self, x: object) -> None:
        """Raise :class:`InputError` unless ``x`` is a finite float tensor
        ``(B, A*P, H, W)`` with the expected number of frames."""
        cfg = self.cfg
        n = cfg.n_frames
        if not isinstance(x, torch.Tensor):
            raise InputError(f"model input must be a torch tensor, got {type(x).__name__}")
        if x.ndim != 4:
            hint = "; add a batch dimension (x[None])" if x.ndim == 3 else ""
            raise InputError(
                f"model expects a batch of SIM stacks of shape (B, {n}, H, W), got shape "
                f"{tuple(x.shape)}{hint}"
            )
        if x.shape[1] != n:
            raise InputError(
                f"model expects {n} frames ({cfg.n_angles} angles x {cfg.n_phases} phases), "
                f"got {x.shape[1]}"
            )
        if x.shape[-2] < 1 or x.shape[-1] < 1:
            raise InputError(f"model input has an empty image, shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise InputError(
                f"model input must be floating point (normalised float32), got {x.dtype}"
            )
        if not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise InputError(
                f"model input contains {bad} NaN or infinite value(s) out of {x.numel()}; "
                "clean the data before reconstruction"
            )

    @property
    def receptive_radius(self) -> int:
        """Receptive-field radius of the per-pixel outputs in LR (camera) pixels: an HR
        output pixel inside LR pixel ``p`` depends only on input pixels within this distance
        of ``p`` (an upper bound from the architecture, :func:`receptive_radius`). The pooled
        PSF/background and ``norm="group"`` see the whole image regardless."""
        return receptive_radius(self.cfg)

    @property
    def tiling_exact(self) -> bool:
        """Whether per-pixel outputs depend only on a bounded neighbourhood (no GroupNorm),
        so that tiled inference with enough overlap equals whole-image inference."""
        return self.cfg.norm != "group"

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        bottom = skips.pop()
        return bottom, skips

    def bottleneck(self, x: torch.Tensor, *, check_input: bool = True) -> torch.Tensor:
        """Bottleneck features ``(B, C, H'/m, W'/m)`` of ``x`` after the model's padding to a
        multiple of ``m = 2^depth`` (``H' >= H``); their mean over the grid is the pooled
        vector the PSF and background heads read (see ``pooled`` in :meth:`forward`)."""
        if check_input:
            self.check_input(x)
        dtype = self.stem[0].weight.dtype
        x, _, _ = _pad_to_multiple(x.to(dtype), 2**self.cfg.depth)
        return self._features(x)[0]

    def forward(
        self,
        x: torch.Tensor,
        *,
        check_input: bool = True,
        pooled: torch.Tensor | None = None,
    ) -> SimOutput:
        """Reconstruct ``x`` ``(B, A*P, H, W)`` (normalised). ``check_input=False`` skips the
        shape/finiteness checks (the finiteness check synchronises a GPU). Floating inputs of
        another dtype are cast to the model's dtype.

        ``pooled`` ``(B, C)`` replaces the mean of this input's bottleneck features as the
        input of the PSF and background heads: tiled inference passes the mean over the
        whole image, so that every tile gets the PSF/background of the whole field."""
        if check_input:
            self.check_input(x)
        cfg = self.cfg
        f, k, lo, hi = cfg.hr_factor, cfg.psf_size, cfg.logvar_min, cfg.logvar_max
        dtype = self.stem[0].weight.dtype
        if x.dtype != dtype:
            x = x.to(dtype)
        b, _, h, w = x.shape
        x, top, left = _pad_to_multiple(x, 2**cfg.depth)

        # U-Net
        bottom, skips = self._features(x)
        feat = bottom
        for up in self.up:
            feat = up(feat, skips.pop())
        feat = self.to_hr(feat)
        feat = feat[..., f * top : f * (top + h), f * left : f * (left + w)]
        if pooled is None:
            pooled = bottom.mean(dim=(-2, -1))
        elif pooled.shape != (b, bottom.shape[1]):
            raise InputError(
                f"pooled must have shape ({b}, {bottom.shape[1]}), got {tuple(pooled.shape)}"
            )
        else:
            pooled = pooled.to(dtype)

        # emitter, light patterns
        a_e = self.emitter_head(feat)
        emitter = F.softplus(a_e)
        emitter_var = emitter_logvar = None
        if self.emitter_logvar_head is not None:
            emitter_logvar = soft_clamp(self.emitter_logvar_head(feat), lo, hi)
            v = emitter_logvar.exp()
            emitter_var = v if cfg.var_space == "output" else softplus_variance(a_e, v)
        a_l = self.lp_head(feat)
        lp = 1.0 + torch.tanh(a_l)
        lp_var = lp_logvar = None
        if self.lp_logvar_head is not None:
            lp_logvar = soft_clamp(self.lp_logvar_head(feat), lo, hi)
            v = lp_logvar.exp()
            lp_var = v if cfg.var_space == "output" else bounded_tanh_variance(a_l, v)

        # PSF, background (pooled bottleneck)
        hid = self.psf_mlp(pooled)
        psf_flat = torch.softmax(self.psf_logits(hid), dim=-1)
        psf = psf_flat.view(b, k, k)
        psf_var = psf_logvar = None
        if self.psf_logvar_head is not None:
            s = soft_clamp(self.psf_logvar_head(hid), lo, hi)
            psf_var = softmax_variance(psf_flat, s.exp()).view(b, k, k)
            psf_logvar = s.view(b, k, k)
        background = None
        if self.background_head is not None:
            background = F.softplus(self.background_head(pooled)).view(b, 1, 1, 1)

        return SimOutput(
            emitter=emitter,
            emitter_var=emitter_var,
            lp=lp,
            lp_var=lp_var,
            psf=psf,
            psf_var=psf_var,
            background=background,
            emitter_logvar=emitter_logvar,
            lp_logvar=lp_logvar,
            psf_logvar=psf_logvar,
        )


def receptive_radius(cfg: SimNetConfig) -> int:
    """Upper bound, in LR pixels, of the distance between an output pixel and the input
    pixels it depends on, for :class:`SimUQNet` with ``cfg`` (``norm`` other than
    ``"group"``; the pooled PSF/background heads excepted).

    Computed by propagating the index interval of one output pixel backwards through the
    layers (3x3 convolutions widen it by 1 at their level, a stride-2 convolution maps
    level-``l+1`` index ``c`` to ``2c - 1 .. 2c + 1``, bilinear x2 upsampling maps fine index
    ``p`` to coarse ``floor((p - 1) / 2) .. floor((p - 1) / 2) + 1``), maximised over the
    positions of the output pixel relative to the ``2^depth`` grid."""
    depth = cfg.depth
    m = 2**depth
    worst = 0
    for p in range(2 * m, 4 * m):
        lo, hi = p - 1, p + 1  # HR 3x3 conv (f > 1: neighbouring LR pixels) or LR conv
        if cfg.hr_factor > 1:
            lo, hi = lo - 1, hi + 1  # the LR conv before PixelShuffle
        # decoder, level 0 up to depth - 1: block (2 convs), then upsampling from level + 1
        # (the skip connections reach less far than this deepest path)
        for _level in range(depth):
            lo, hi = lo - 2, hi + 2  # the block's two 3x3 convolutions
            lo, hi = (lo - 1) // 2, (hi - 1) // 2 + 1  # bilinear x2 from the coarser level
        # (lo, hi) is now an interval of bottleneck (level depth) indices; go down the
        # encoder: second conv of each down block at level l+1, then the strided conv
        for _level in reversed(range(depth)):
            lo, hi = lo - 1, hi + 1
            lo, hi = 2 * lo - 1, 2 * hi + 1
        lo, hi = lo - 2, hi + 2  # stem
        worst = max(worst, p - lo, hi - p)
    return int(worst)


def _gaussian_logits(k: int) -> torch.Tensor:
    """Logits ``-r^2 / (2 sigma^2)`` of a centred Gaussian, ``sigma = max(1, (k - 1) / 6)``."""
    sigma = max(1.0, (k - 1) / 6.0)
    r = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
    r2 = r[:, None] ** 2 + r[None, :] ** 2
    return (-r2 / (2 * sigma**2)).flatten()


def _pad_to_multiple(x: torch.Tensor, m: int) -> tuple[torch.Tensor, int, int]:
    """Pad ``(..., H, W)`` to multiples of ``m`` (split evenly, reflect; replicate when the
    image is too small to reflect). Returns the padded tensor and the top/left offsets."""
    h, w = x.shape[-2:]
    ph, pw = -h % m, -w % m
    if ph == 0 and pw == 0:
        return x, 0, 0
    top, left = ph // 2, pw // 2
    pad = (left, pw - left, top, ph - top)
    mode = "reflect" if max(top, ph - top) < h and max(left, pw - left) < w else "replicate"
    return F.pad(x, pad, mode=mode), top, left
