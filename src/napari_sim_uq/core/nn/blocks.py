"""Convolutional building blocks shared by the networks (PyTorch ``nn.Module`` only).

:class:`PixelNorm` normalises the channels of each pixel (so outputs depend on a bounded
neighbourhood and tiled inference can be exact); :class:`ConvBlock` is
``(Conv3x3 - norm - SiLU) x 2`` with optional dropout, :class:`UpBlock` a bilinear x2 upsampling
followed by a skip connection and a :class:`ConvBlock`; :func:`icnr_` initialises a
sub-pixel (PixelShuffle) convolution without checkerboard artefacts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBlock", "PixelNorm", "UpBlock", "icnr_", "norm_layer"]


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class PixelNorm(nn.Module):
    """LayerNorm over the channels of each pixel (``(B, C, H, W)``), with a per-channel
    affine map. Unlike GroupNorm it uses no statistics over the image, so an output pixel
    depends only on its receptive field (tiling-exact)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        var = (x - mean).square().mean(dim=1, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        return y * self.weight[:, None, None] + self.bias[:, None, None]


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(_groups(channels), channels)
    if kind == "pixel":
        return PixelNorm(channels)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """``(Conv3x3 - norm - SiLU) x 2`` (first conv optionally strided), then optional
    ``Dropout2d``."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int = 1,
        dropout: float | None = None,
        norm: str = "pixel",
    ):
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
            norm_layer(norm, c_out),
            nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            norm_layer(norm, c_out),
            nn.SiLU(),
        ]
        if dropout is not None:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class UpBlock(nn.Module):
    """Bilinear x2 upsampling, 1x1 conv to ``c_out``, concatenation with the skip, block."""

    def __init__(self, c_in: int, c_out: int, dropout: float, norm: str = "pixel"):
        super().__init__()
        self.reduce = nn.Conv2d(c_in, c_out, 1)
        self.block = ConvBlock(2 * c_out, c_out, dropout=dropout, norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([self.reduce(x), skip], dim=1))


def icnr_(conv: nn.Conv2d, factor: int) -> None:
    """ICNR init for a conv followed by ``PixelShuffle(factor)``: the ``factor^2`` sub-pixel
    outputs of each channel start identical (no checkerboard at initialisation)."""
    n = factor * factor
    c_out = conv.out_channels // n
    base = nn.Conv2d(conv.in_channels, c_out, conv.kernel_size, padding=conv.padding)
    with torch.no_grad():
        conv.weight.copy_(base.weight.repeat_interleave(n, dim=0))
        conv.bias.copy_(base.bias.repeat_interleave(n, dim=0))
