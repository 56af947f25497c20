r"""A small convolutional VAE for grey image patches (the generative model of the posterior).

:class:`ConvVAE` maps a patch ``x`` of shape ``(B, 1, P, P)`` (``P = VAEConfig.patch``) to
the mean and log-variance of a diagonal Gaussian ``q(z|x)`` over ``K = latent_dim`` latent
variables (:meth:`ConvVAE.encode`) and a latent ``z`` of shape ``(..., K)`` back to a patch
``G(z)`` of shape ``(..., P, P)`` (:meth:`ConvVAE.decode`). The prior is ``N(0, I)``.

Design choices
--------------
- **Smooth activations (SiLU) everywhere.** The posterior machinery takes the exact Hessian
  of ``|x - G(z)|^2`` in ``z`` (:mod:`.posterior`); with ReLU the decoder is piecewise linear
  and its curvature is zero almost everywhere but jumps between linear pieces.
- **No batch statistics.** No BatchNorm/GroupNorm: the decoder of one latent must not
  depend on the other latents of a batch (the posterior optimises many starts, tiles and
  images in one batch; ``torch.func`` vmaps over them).
- **Upsampling by bilinear resize + 3x3 convolution**, not transposed convolutions (no
  checkerboard); the mean output is linear (normalised data are not confined to ``[0, 1]``).
- **Cheap decoder.** The posterior evaluates the decoder hundreds of times per image (starts
  x optimiser steps, then ``K`` Hessian columns per mode); the full-resolution stage has
  ``channels`` feature maps only.

Channels: encoder stage ``i`` (of ``depth`` stride-2 stages) has
``channels * 2^min(i + 1, 2)`` maps; the decoder mirrors it. The patch must be a multiple
of ``2^depth``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from napari_sim_uq.core.config import JsonConfig, check_int, option
from napari_sim_uq.core.errors import InputError

__all__ = ["ConvVAE", "VAEConfig", "build_vae"]


@dataclass
class VAEConfig(JsonConfig):
    """The VAE network (stored in checkpoints under ``config["model"]``)."""

    _what = "VAE options"

    patch: int = option(64, help="side of the square patches the VAE models (pixels)", minimum=8)
    latent_dim: int = option(16, help="latent dimension K", minimum=1, maximum=256)
    channels: int = option(16, help="feature maps of the full-resolution stage", minimum=4)
    depth: int = option(4, help="stride-2 stages of the encoder (and decoder)", minimum=1)

    def validate(self) -> None:
        check_int("patch", self.patch, 8)
        check_int("latent_dim", self.latent_dim, 1, 256)
        check_int("channels", self.channels, 4)
        check_int("depth", self.depth, 1, 6)
        if self.patch % (2**self.depth):
            raise InputError(f"patch={self.patch} must be a multiple of 2^depth = {2**self.depth}")

    def stage_channels(self) -> list[int]:
        return [self.channels * 2 ** min(i + 1, 2) for i in range(self.depth)]


class ConvVAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.patch = cfg.patch
        self.latent_dim = cfg.latent_dim
        chans = cfg.stage_channels()
        self.low = cfg.patch // 2**cfg.depth
        # encoder
        enc: list[nn.Module] = [nn.Conv2d(1, cfg.channels, 3, padding=1), nn.SiLU()]
        c_prev = cfg.channels
        for c in chans:
            enc += [nn.Conv2d(c_prev, c, 3, stride=2, padding=1), nn.SiLU()]
            enc += [nn.Conv2d(c, c, 3, padding=1), nn.SiLU()]
            c_prev = c
        self.encoder = nn.Sequential(*enc)
        n_flat = c_prev * self.low * self.low
        self.to_latent = nn.Linear(n_flat, 2 * cfg.latent_dim)
        # decoder: linear -> (C, low, low), then depth x (resize x2, conv3x3, SiLU)
        self.c_low = chans[-1]
        self.from_latent = nn.Linear(cfg.latent_dim, self.c_low * self.low * self.low)
        dec: list[nn.Module] = []
        c_prev = self.c_low
        for c in [*reversed(chans[:-1]), cfg.channels]:
            dec.append(nn.Conv2d(c_prev, c, 3, padding=1))
            c_prev = c
        self.dec_convs = nn.ModuleList(dec)
        self.head = nn.Conv2d(c_prev, 1, 3, padding=1)
        # start with a small posterior variance: log-variance bias -2 (std 0.37)
        with torch.no_grad():
            self.to_latent.bias[cfg.latent_dim :].fill_(-2.0)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of ``q(z|x)``, each ``(B, K)``, for patches ``(B, 1, P, P)``."""
        h = self.encoder(x).flatten(1)
        mu, logvar = self.to_latent(h).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 6.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``G(z)``: latents ``(..., K)`` to patches ``(..., P, P)``."""
        lead = z.shape[:-1]
        h = self.from_latent(z.reshape(-1, self.latent_dim))
        h = F.silu(h).view(-1, self.c_low, self.low, self.low)
        for conv in self.dec_convs:
            h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
            h = F.silu(conv(h))
        out = self.head(h)
        return out.view(*lead, self.patch, self.patch)

    def forward(self, x: torch.Tensor, sample: bool = True):
        """``(reconstruction (B, 1, P, P), mu, logvar)``; ``sample=False`` decodes the mean."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        return self.decode(z)[:, None], mu, logvar


def build_vae(cfg: VAEConfig | dict | None = None) -> ConvVAE:
    if cfg is None:
        cfg = VAEConfig()
    elif isinstance(cfg, dict):
        cfg = VAEConfig.from_dict(cfg)
    return ConvVAE(cfg)
