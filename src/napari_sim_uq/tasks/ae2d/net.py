r"""2D autoencoders with per-pixel uncertainty: a U-Net and a plain convolutional AE.

Both networks map an image ``x`` of shape ``(B, C, H, W)`` (``C = in_channels``, 1 for
grey images) to its reconstruction, an :class:`AEOutput` ``(mean, logvar)`` with ``mean``
and ``logvar`` of shape ``(B, C, H, W)``; ``logvar`` (the log-variance ``s`` of each pixel,
the aleatoric uncertainty, ``sigma^2 = exp(s)``) is ``None`` without a variance head.
Epistemic uncertainty comes from MC dropout: run the model under
:func:`napari_sim_uq.core.nn.modes.mc_dropout_mode` and take the mean and variance over the
samples (DESIGN.md section 5).

``AE2DConfig.model`` selects how the model is trained (:mod:`.loss`): ``"mc-dropout"``
(MSE, or with ``aleatoric`` the Gaussian NLL with a variance floor) or ``"hetero"`` (the
heteroscedastic / UPAE loss, always with a log-variance head).

Architectures
-------------
``"unet"`` (:class:`UNet2D`): a stem block and ``depth`` stride-2 encoder blocks (the last
one is the bottleneck), ``depth`` decoder blocks (bilinear x2 resize, 1x1 conv, concatenation
with the skip, block), 1x1 heads. A block is ``(Conv3x3 - PixelNorm - SiLU) x 2`` followed by
``Dropout2d(p)`` (core :class:`ConvBlock` / :class:`UpBlock`), in every encoder and decoder
block. Channels ``base_channels * 2^min(level, 3)``.

- Upsampling is a resize followed by convolutions, never a transposed convolution: a
  stride-2 ``ConvTranspose2d`` whose kernel overlaps unevenly paints a 2-periodic
  checkerboard, already at initialisation, which in an anomaly score looks like structure.
- ``Dropout2d`` (whole feature maps) rather than element-wise ``Dropout``: neighbouring
  activations of a conv layer are strongly correlated, so dropping single pixels is nearly
  undone by the next 3x3 conv (weak regularisation, and MC samples that differ mostly by
  pixel noise); dropping channels makes the MC samples differ by plausible, spatially
  coherent alternatives.
- The mean head is linear, without a sigmoid: the data are normalised but not confined to
  ``[0, 1]`` (percentile normalisation leaves values outside), and a sigmoid has vanishing
  gradients exactly where microscopy images live most (dark background near 0, saturated
  structures near 1), which biases the mean there and inflates its residuals.
- ``PixelNorm`` uses no image statistics, so every output pixel depends only on its
  receptive field (tiled inference is exact).

Note that the full-resolution skip connection lets a U-Net learn a near-identity map; as
an anomaly detector that reconstructs anomalies too well, which dropout only partly
prevents. ``"conv-ae"`` has no skips.

``"conv-ae"`` (:class:`ConvAE`), the familiar design: an encoder of three
``Conv3x3 - ReLU - Dropout`` layers with ``4b -> 2b -> b`` channels (``b = base_channels``,
so 128 -> 64 -> 32 for the default 32), the first two with stride 2; a decoder of two
``ConvTranspose2d(k=4, s=2) - ReLU`` (``b -> 2b -> 4b``), a smoothing ``Conv3x3 - ReLU``
and 1x1 heads; the mean is ``sigmoid`` (data normalised to ``[0, 1]``). Dropout
(element-wise, as in the familiar design) is in the encoder only. A kernel divisible by the
stride evens out the overlap of the transposed convolutions, but the four output phases
still have their own weights: at initialisation this design does paint a 2-periodic
pattern, which training (and the smoothing conv) must remove. Its convolutions get He
initialisation (see :func:`_he_init_`).

Options of the conv AE (defaults give the design above): ``conv_depth`` stride-2 encoder
stages (channels ``4b, ..., 4b, 2b``, then the bottleneck conv to ``latent_channels``,
default ``b``; the decoder mirrors them with transposed convs), so inputs must be multiples
of ``2^conv_depth``; ``mean_activation="linear"`` drops the sigmoid. The heteroscedastic
loss on mostly dark images (synthetic images are about 60 % exact zeros) drives a sigmoid
mean into saturation at 0, where it stops learning; a linear head does not saturate.

Log-variance
------------
The log-variance head is a 1x1 convolution with zero weights and a bias set so that it
starts at ``logvar_init`` exactly; its output ``r`` is soft-clamped
(:func:`~napari_sim_uq.core.nn.activations.soft_clamp`) into ``[logvar_min, logvar_max]``:
the identity inside the range, smooth, with a gradient that never vanishes. Without the
clamp the heteroscedastic loss lets ``s -> -inf`` on pixels the mean fits exactly.

Input size
----------
``H`` and ``W`` must be multiples of ``model.multiple`` (``2^depth`` for the U-Net, 4 for the
conv AE) and at least ``model.min_size``; the caller pads other sizes (for example with
:func:`napari_sim_uq.core.uq.tiling.pad_like_model`) and crops the outputs back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from napari_sim_uq.core.config import JsonConfig, check_dropout_and_logvar_range, option
from napari_sim_uq.core.config import check_int as _check_int
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.nn.activations import inv_soft_clamp, soft_clamp
from napari_sim_uq.core.nn.blocks import ConvBlock, UpBlock

__all__ = [
    "ARCHS",
    "MODELS",
    "AE2DConfig",
    "AEOutput",
    "ConvAE",
    "UNet2D",
    "build_model",
]

#: Network architectures (``AE2DConfig.arch``).
ARCHS = ("unet", "conv-ae")

#: Models, i.e. how the network is trained (``AE2DConfig.model``, see :mod:`.loss`).
MODELS = ("mc-dropout", "hetero")

#: Output activations of the conv-ae mean head (``AE2DConfig.mean_activation``).
MEAN_ACTIVATIONS = ("sigmoid", "linear")

_MAX_DEPTH = 8


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------


@dataclass
class AE2DConfig(JsonConfig):
    """Hyper-parameters of the 2D autoencoders (JSON round trip: :meth:`to_dict` /
    :meth:`from_dict`). Invalid values raise :class:`~napari_sim_uq.core.errors.InputError`
    (on construction and from :meth:`validate`)."""

    _what = "autoencoder parameters"

    arch: str = option(
        "unet",
        help="network: a U-Net with skip connections (unet) or a plain convolutional "
        "autoencoder without skips (conv-ae)",
        choices=ARCHS,
    )
    model: str = option(
        "mc-dropout",
        help="uncertainty model: MC dropout, with an optional log-variance head trained by "
        "the Gaussian NLL (mc-dropout), or a heteroscedastic autoencoder trained by the "
        "UPAE loss (hetero)",
        choices=MODELS,
    )
    aleatoric: bool = option(
        True,
        help="the mc-dropout model predicts a per-pixel log-variance (aleatoric "
        "uncertainty) besides the mean; the hetero model always does",
        flag="--no-aleatoric",
    )
    base_channels: int = option(
        32,
        help="channels of the first U-Net level; the conv-ae encoder has 4x, 2x, 1x this",
        minimum=4,
    )
    depth: int = option(
        3,
        help="number of U-Net downsamplings (inputs must be multiples of 2^depth); "
        "the conv-ae always has 2",
        minimum=1,
        maximum=_MAX_DEPTH,
    )
    dropout: float = option(
        0.1,
        help="dropout probability p, in [0, 1): Dropout2d in every U-Net block, "
        "element-wise Dropout in the conv-ae encoder",
        minimum=0.0,
        maximum=0.99,
    )
    in_channels: int = option(
        1, help="channels of the input images (the reconstruction has as many)", minimum=1
    )
    conv_depth: int = option(
        2,
        help="conv-ae: stride-2 encoder stages (inputs must be multiples of 2^conv_depth); "
        "more stages make a coarser, real bottleneck (anomaly detection)",
        minimum=2,
        maximum=_MAX_DEPTH,
    )
    latent_channels: int = option(
        0,
        help="conv-ae: channels of the bottleneck (0: base_channels)",
        minimum=0,
    )
    mean_activation: str = option(
        "sigmoid",
        help="conv-ae: output activation of the mean head: sigmoid (the familiar design) or "
        "linear (no saturation: a sigmoid pushed to 0 on a dark background stops learning)",
        choices=MEAN_ACTIVATIONS,
    )
    logvar_init: float = option(-4.0, help="initial log-variance of the variance head")
    logvar_min: float = option(-12.0, help="lower soft clamp of the predicted log-variance")
    logvar_max: float = option(4.0, help="upper soft clamp of the predicted log-variance")

    def __post_init__(self) -> None:
        self.validate()

    @property
    def has_logvar(self) -> bool:
        """Whether the network has a log-variance head (``hetero``, or ``aleatoric``)."""
        return self.model == "hetero" or bool(self.aleatoric)

    @property
    def multiple(self) -> int:
        """Input sizes must be multiples of this (``2^depth``, or ``2^conv_depth`` for the
        conv AE)."""
        return 2**self.conv_depth if self.arch == "conv-ae" else 2**self.depth

    def validate(self) -> None:
        """Raise :class:`InputError` on the first invalid value."""
        if self.arch not in ARCHS:
            raise InputError(f"arch must be one of {list(ARCHS)}, got {self.arch!r}")
        if self.model not in MODELS:
            raise InputError(f"model must be one of {list(MODELS)}, got {self.model!r}")
        if not isinstance(self.aleatoric, bool):
            raise InputError(f"aleatoric must be true or false, got {self.aleatoric!r}")
        # PixelNorm normalises over the channels: with 1 or 2 channels it erases the signal
        _check_int("base_channels", self.base_channels, 4)
        _check_int("depth", self.depth, 1, _MAX_DEPTH)
        _check_int("in_channels", self.in_channels, 1)
        _check_int("conv_depth", self.conv_depth, 2, _MAX_DEPTH)
        _check_int("latent_channels", self.latent_channels, 0)
        if self.mean_activation not in MEAN_ACTIVATIONS:
            raise InputError(
                f"mean_activation must be one of {list(MEAN_ACTIVATIONS)}, "
                f"got {self.mean_activation!r}"
            )
        check_dropout_and_logvar_range(self)


# --------------------------------------------------------------------------------------
# output and shared parts
# --------------------------------------------------------------------------------------


class AEOutput(NamedTuple):
    """What the autoencoders return: the reconstruction ``mean`` ``(B, C, H, W)`` and its
    clamped log-variance ``logvar`` (same shape), ``None`` without a variance head."""

    mean: torch.Tensor
    logvar: torch.Tensor | None = None

    @property
    def var(self) -> torch.Tensor | None:
        """The predicted (aleatoric) variance ``exp(logvar)``, or ``None``."""
        return None if self.logvar is None else torch.exp(self.logvar)


class _LogVarHead(nn.Module):
    """1x1 conv, soft-clamped into ``[lo, hi]``; starts at ``init`` everywhere."""

    def __init__(self, c_in: int, c_out: int, init: float, lo: float, hi: float):
        super().__init__()
        self.lo, self.hi = float(lo), float(hi)
        self.conv = nn.Conv2d(c_in, c_out, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.fill_(inv_soft_clamp(float(init), self.lo, self.hi))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return soft_clamp(self.conv(h), self.lo, self.hi)


class _AEBase(nn.Module):
    """Config handling and input checks shared by both networks."""

    cfg: AE2DConfig

    @property
    def multiple(self) -> int:
        """``H`` and ``W`` must be multiples of this; pad other sizes before the call."""
        return self.cfg.multiple

    @property
    def min_size(self) -> int:
        """Smallest accepted ``H`` and ``W`` (one pixel at the coarsest level)."""
        return self.cfg.multiple

    def check_input(self, x: object) -> None:
        """Raise :class:`InputError` unless ``x`` is a ``(B, in_channels, H, W)`` float
        tensor with ``H, W`` multiples of :attr:`multiple` (at least :attr:`min_size`)."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise InputError(f"{name} needs a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4:
            raise InputError(
                f"{name} needs images of shape (B, C, H, W), got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise InputError(f"{name} needs a floating-point tensor, got {x.dtype}")
        c, h, w = x.shape[1:]
        if c != self.cfg.in_channels:
            raise InputError(
                f"{name} was built for {self.cfg.in_channels} input channel(s), got {c} "
                f"(shape {tuple(x.shape)}); images are (B, C, H, W)"
            )
        m = self.multiple
        if h < self.min_size or w < self.min_size:
            raise InputError(
                f"{name}: the image is too small ({h} x {w} pixels); this model needs at "
                f"least {self.min_size} x {self.min_size}"
            )
        if h % m or w % m:
            raise InputError(
                f"{name}: image height and width must be multiples of {m}, got {h} x {w}; "
                f"pad the image (e.g. to {-(-h // m) * m} x {-(-w // m) * m}) and crop the output"
            )


# --------------------------------------------------------------------------------------
# the networks
# --------------------------------------------------------------------------------------


class UNet2D(_AEBase):
    """U-Net autoencoder with Dropout2d in every block, resize + conv upsampling, a linear
    mean head and an optional soft-clamped log-variance head (see the module docstring)."""

    def __init__(self, cfg: AE2DConfig | dict | None = None):
        super().__init__()
        cfg = AE2DConfig.coerce(cfg)
        self.cfg = cfg
        p = float(cfg.dropout)
        ch = [cfg.base_channels * 2 ** min(level, 3) for level in range(cfg.depth + 1)]
        self.stem = ConvBlock(cfg.in_channels, ch[0], dropout=p)
        self.down = nn.ModuleList(
            ConvBlock(ch[i], ch[i + 1], stride=2, dropout=p) for i in range(cfg.depth)
        )
        # up[i] brings level i + 1 to level i (applied from the bottom)
        self.up = nn.ModuleList(UpBlock(ch[i + 1], ch[i], dropout=p) for i in range(cfg.depth))
        self.mean_head = nn.Conv2d(ch[0], cfg.in_channels, 1)
        self.logvar_head = (
            _LogVarHead(ch[0], cfg.in_channels, cfg.logvar_init, cfg.logvar_min, cfg.logvar_max)
            if cfg.has_logvar
            else None
        )

    def forward(self, x: torch.Tensor) -> AEOutput:
        self.check_input(x)
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(skips[-1]))
        h = skips.pop()
        for block in reversed(self.up):
            h = block(h, skips.pop())
        logvar = None if self.logvar_head is None else self.logvar_head(h)
        return AEOutput(self.mean_head(h), logvar)


def _he_init_(conv: nn.Conv2d | nn.ConvTranspose2d) -> None:
    """He (Kaiming) normal init for a conv followed by ReLU, zero bias.

    PyTorch's default init scales the weight variance by ``1 / (3 fan_in)``; with ReLU
    halving the second moment, the signal shrinks about 6x per layer, and after the seven
    layers of :class:`ConvAE` the initial output is constant to ~1e-4 (so are the MC-dropout
    samples). He init (``2 / fan_in``) keeps the scale. A stride-``s`` transposed conv with
    a ``k x k`` kernel sums ``c_in (k / s)^2`` products per output pixel; that is its fan-in
    (``torch.nn.init`` would count ``c_out k^2``).
    """
    w = conv.weight
    if isinstance(conv, nn.ConvTranspose2d):
        taps = zip(w.shape[2:], conv.stride, strict=True)
        fan_in = w.shape[0] * math.prod(max(k // s, 1) for k, s in taps)
    else:
        fan_in = w.shape[1] * math.prod(w.shape[2:])
    with torch.no_grad():
        w.normal_(0.0, math.sqrt(2.0 / fan_in))
        conv.bias.zero_()


class ConvAE(_AEBase):
    """Convolutional autoencoder without skips: dropout in the encoder only, transposed-conv
    decoder with a smoothing conv, sigmoid mean (see the module docstring)."""

    def __init__(self, cfg: AE2DConfig | dict | None = None):
        super().__init__()
        cfg = AE2DConfig.coerce(cfg)
        self.cfg = cfg
        p = float(cfg.dropout)
        b = cfg.base_channels
        c_in = cfg.in_channels
        depth = cfg.conv_depth
        latent = cfg.latent_channels or b
        # stage channels 4b, ..., 4b, 2b (conv_depth 2: 4b, 2b, the familiar design)
        ch = [b * 2 ** min(depth - i, 2) for i in range(depth)]
        enc: list[nn.Module] = []
        for c0, c1 in zip([c_in, *ch[:-1]], ch, strict=True):
            enc += [nn.Conv2d(c0, c1, 3, stride=2, padding=1), nn.ReLU(), nn.Dropout(p)]
        enc += [nn.Conv2d(ch[-1], latent, 3, padding=1), nn.ReLU(), nn.Dropout(p)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = []
        for c0, c1 in zip([latent, *ch[:0:-1]], ch[::-1], strict=True):
            dec += [nn.ConvTranspose2d(c0, c1, 4, stride=2, padding=1), nn.ReLU()]
        dec += [nn.Conv2d(ch[0], b, 3, padding=1), nn.ReLU()]  # smoothing
        self.decoder = nn.Sequential(*dec)
        for m in [*self.encoder, *self.decoder]:
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                _he_init_(m)
        self.mean_head = nn.Conv2d(b, c_in, 1)
        self.logvar_head = (
            _LogVarHead(b, c_in, cfg.logvar_init, cfg.logvar_min, cfg.logvar_max)
            if cfg.has_logvar
            else None
        )

    def forward(self, x: torch.Tensor) -> AEOutput:
        self.check_input(x)
        h = self.decoder(self.encoder(x))
        logvar = None if self.logvar_head is None else self.logvar_head(h)
        mean = self.mean_head(h)
        if self.cfg.mean_activation == "sigmoid":
            mean = torch.sigmoid(mean)
        return AEOutput(mean, logvar)


def build_model(cfg: AE2DConfig | dict | None = None) -> nn.Module:
    """The network ``cfg.arch`` names (:class:`UNet2D` or :class:`ConvAE`), freshly
    initialised; ``cfg`` may be a config, its dict or ``None`` (defaults)."""
    cfg = AE2DConfig.coerce(cfg)
    if cfg.arch == "conv-ae":
        return ConvAE(cfg)
    return UNet2D(cfg)
