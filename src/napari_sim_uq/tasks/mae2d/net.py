r"""A compact masked autoencoder for grey images, with a ViT or an Energy Transformer block.

An image of ``S x S`` pixels (``MAEConfig.img_size``, 32 by default) is cut into
``N = (S / p)^2`` square patches of ``p`` pixels (``patch_size``, 4), the tokens. A boolean
``visible`` map ``(B, N)`` says which tokens the model sees; it predicts the pixels of every
token, and training scores the hidden ones (:mod:`.train`).

``block="vit"`` (the MAE of He et al. 2022): the visible tokens alone (embedded linearly, plus
fixed 2D sine-cosine position codes) pass ``depth`` pre-norm transformer blocks (the
encoder); a light decoder puts a learned mask token at every hidden position, adds position
codes and runs ``decoder_depth`` narrower blocks, then a linear layer gives each token's
``p x p`` pixels. Images with different numbers of visible tokens share a batch: the encoder
pads the shorter token lists and masks the padding out of the attention.

``block="energy"`` (the Energy Transformer of Hoover et al. 2023): every token (visible
ones embedded, hidden ones the mask token, all with position codes) is updated by ``T``
steps of gradient descent on an energy, in each of ``depth`` blocks::

    g = LayerNorm(x)   (a scalar gain gamma and a bias vector delta)
    E(g) = -(1/beta) sum_h sum_C log sum_{B != C} exp(beta K_hB . Q_hC)     (attention)
           -(1/2) sum_B sum_mu relu(xi_mu . g_B)^2                          (Hopfield)
    x <- x - alpha dE/dg

with ``K = W_K g``, ``Q = W_Q g`` per head (``num_heads`` heads of ``head_dim``) and
``mlp_ratio * embed_dim`` Hopfield memories ``xi``. Because ``g`` is the gradient of a convex
Lagrangian of ``x`` (the layer norm), the continuous dynamics never increase ``E``; the
discrete steps do so for steps that are small against the energy's curvature
(:meth:`EnergyBlock.descend` records the energy at every step; the tests check that it
decreases on random tokens and on a trained model). The gradient is taken with autograd (a
double backward in training), also under ``torch.no_grad()``. A layer norm, dropout
(``dropout``, also the MC-dropout of :mod:`.inpaint`) and a linear layer decode the tokens.

Both decoders output pixel values in the normalised units of the input (no output
activation: normalised images are not confined to ``[0, 1]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from napari_sim_uq.core.config import JsonConfig, check_int, option
from napari_sim_uq.core.errors import InputError

__all__ = [
    "BLOCKS",
    "EnergyBlock",
    "MAEConfig",
    "MaskedAutoencoder",
    "ViTBlock",
    "build_mae",
    "patchify",
    "random_visible",
    "sincos_position_codes",
    "unpatchify",
]

BLOCKS = ("vit", "energy")


@dataclass
class MAEConfig(JsonConfig):
    """The masked autoencoder (stored in checkpoints under ``config["model"]``). The
    defaults of the energy block are those of the source documents (embedding 256, 12
    heads, MLP ratio 4, 1 layer, T = 12, alpha = 10, beta = 0.125)."""

    _what = "masked-autoencoder options"

    img_size: int = option(32, help="side of the square images the model sees (pixels)", minimum=8)
    patch_size: int = option(4, help="side of the square patches (tokens), pixels", minimum=1)
    block: str = option(
        "vit", help="vit: MAE transformer blocks; energy: Energy Transformer", choices=BLOCKS
    )
    embed_dim: int = option(256, help="token embedding width", minimum=8)
    depth: int = option(1, help="blocks of the encoder (energy: energy blocks)", minimum=1)
    num_heads: int = option(12, help="attention heads", minimum=1)
    mlp_ratio: float = option(
        4.0, help="MLP width (vit) or Hopfield memories (energy) per embedding unit", minimum=0.25
    )
    head_dim: int = option(
        64, help="energy block: width of each head's keys and queries", minimum=1
    )
    decoder_dim: int = option(128, help="vit: decoder width", minimum=8)
    decoder_depth: int = option(1, help="vit: decoder blocks", minimum=1)
    decoder_heads: int = option(4, help="vit: decoder attention heads", minimum=1)
    dropout: float = option(
        0.1, help="dropout in the decoder (training and MC passes)", minimum=0.0, maximum=0.9
    )
    steps: int = option(12, help="energy block: gradient steps T", minimum=1)
    alpha: float = option(10.0, help="energy block: step size alpha", minimum=0.0)
    beta: float = option(0.125, help="energy block: inverse temperature beta", minimum=0.0)
    init_gain: float = option(
        0.0,
        help="energy block: 0 initialises W_Q, W_K and xi with std 0.002; g > 0 sets W_Q = W_K "
        "to g times orthonormal rows (every head starts with a positional, local attention)",
        minimum=0.0,
    )
    pos_scale: float = option(1.0, help="scale of the sine-cosine position codes", minimum=0.0)

    def validate(self) -> None:
        check_int("img_size", self.img_size, 8)
        check_int("patch_size", self.patch_size, 1)
        for name in ("embed_dim", "decoder_dim"):
            check_int(name, getattr(self, name), 8)
        for name in ("depth", "num_heads", "head_dim", "decoder_depth", "decoder_heads", "steps"):
            check_int(name, getattr(self, name), 1)
        if self.block not in BLOCKS:
            raise InputError(f"block must be one of {BLOCKS}, got {self.block!r}")
        if self.img_size % self.patch_size:
            raise InputError(
                f"img_size={self.img_size} must be a multiple of patch_size={self.patch_size}"
            )
        if self.block == "vit" and self.embed_dim % self.num_heads:
            raise InputError(
                f"embed_dim={self.embed_dim} must be a multiple of num_heads={self.num_heads}"
            )
        if self.decoder_dim % self.decoder_heads:
            raise InputError(
                f"decoder_dim={self.decoder_dim} must be a multiple of "
                f"decoder_heads={self.decoder_heads}"
            )
        for name, lo, hi in (
            ("init_gain", 0.0, 100.0),
            ("pos_scale", 0.0, 100.0),
            ("mlp_ratio", 0.25, 64.0),
            ("dropout", 0.0, 0.9),
            ("alpha", 0.0, 1e4),
            ("beta", 1e-6, 1e4),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise InputError(f"{name} must be a number in [{lo}, {hi}], got {v!r}")

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def n_tokens(self) -> int:
        return self.grid**2


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, 1, H, W)`` -> ``(B, N, p*p)`` tokens in row-major patch order."""
    b, c, h, w = x.shape
    if c != 1 or h % p or w % p:
        raise InputError(f"patchify: need (B, 1, H, W) with H, W multiples of {p}, got {x.shape}")
    t = x.reshape(b, h // p, p, w // p, p).permute(0, 1, 3, 2, 4)
    return t.reshape(b, (h // p) * (w // p), p * p)


def unpatchify(t: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, N, p*p)`` -> ``(B, 1, H, W)``."""
    b = t.shape[0]
    x = t.reshape(b, h // p, w // p, p, p).permute(0, 1, 3, 2, 4)
    return x.reshape(b, 1, h, w)


def sincos_position_codes(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2D sine-cosine position codes ``(grid^2, dim)``: half the channels code the
    row, half the column, each with ``dim / 4`` frequencies (geometric, 1 to 1/10000)."""
    quarter = max(dim // 4, 1)
    freq = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def code(v):
        a = v.reshape(-1, 1) * freq[None]
        return torch.cat([torch.sin(a), torch.cos(a)], dim=1)

    out = torch.cat([code(rows), code(cols)], dim=1)
    if out.shape[1] < dim:
        out = F.pad(out, (0, dim - out.shape[1]))
    return out[:, :dim].float()


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + Attn(LN x)``, then ``x + MLP(LN x)`` (GELU), with
    dropout ``p`` after the MLP's hidden layer and its output."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, p: float = 0.0) -> None:
        super().__init__()
        hidden = max(int(round(dim * mlp_ratio)), 1)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(p), nn.Linear(hidden, dim), nn.Dropout(p)
        )

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


class EnergyLayerNorm(nn.Module):
    """``g = gamma (x - mean) / sqrt(var + eps) + delta`` with a *scalar* gain ``gamma``
    (so that ``g`` is the gradient of a convex function of ``x``) and a bias vector."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(()))
        self.delta = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xc = x - x.mean(-1, keepdim=True)
        return (
            self.gamma * xc / torch.sqrt((xc * xc).mean(-1, keepdim=True) + self.eps) + self.delta
        )


class EnergyBlock(nn.Module):
    """One Energy Transformer block (module docstring): attention and Hopfield energies of
    the layer-normalised tokens, minimised by ``steps`` gradient steps of size ``alpha``."""

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        mlp_ratio: float,
        steps: int,
        alpha: float,
        beta: float,
        init_gain: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm = EnergyLayerNorm(dim)
        self.wq = nn.Parameter(torch.randn(heads, head_dim, dim) * 0.002)
        self.wk = nn.Parameter(torch.randn(heads, head_dim, dim) * 0.002)
        if init_gain > 0:
            with torch.no_grad():
                for h in range(heads):  # rows of a random orthonormal basis, cycled
                    q, _ = torch.linalg.qr(torch.randn(dim, max(dim, head_dim)))
                    rows = q.t()[: min(head_dim, dim)]
                    self.wq[h, : rows.shape[0]] = init_gain * rows
                    self.wk[h, : rows.shape[0]] = init_gain * rows
        n_mem = max(int(round(dim * mlp_ratio)), 1)
        self.xi = nn.Parameter(torch.randn(n_mem, dim) * 0.002)
        self.steps, self.alpha, self.beta = int(steps), float(alpha), float(beta)

    def energy(self, g: torch.Tensor) -> torch.Tensor:
        """The energy of normalised tokens ``g (B, N, D)``, one value per image ``(B,)``."""
        q = torch.einsum("bnd,hyd->bhny", g, self.wq)
        k = torch.einsum("bnd,hyd->bhny", g, self.wk)
        a = self.beta * torch.einsum("bhcy,bhky->bhck", q, k)  # query C, key B
        n = g.shape[1]
        if n > 1:
            eye = torch.eye(n, dtype=torch.bool, device=g.device)
            a = a.masked_fill(eye, float("-inf"))
            e_att = -torch.logsumexp(a, dim=-1).sum(dim=(1, 2)) / self.beta
        else:
            e_att = g.new_zeros(g.shape[0])
        e_hop = -0.5 * (F.relu(g @ self.xi.t()) ** 2).sum(dim=(1, 2))
        return e_att + e_hop

    def descend(self, x: torch.Tensor, record: bool = False):
        """``T`` steps ``x <- x - alpha dE/dg``; returns ``x`` (and, with ``record``, the
        energies ``(T + 1, B)`` before each step and after the last)."""
        create = self.training and torch.is_grad_enabled()
        energies = []
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            for _ in range(self.steps):
                g = self.norm(x)
                e = self.energy(g)
                if record:
                    energies.append(e.detach())
                (grad,) = torch.autograd.grad(e.sum(), g, create_graph=create)
                x = x - self.alpha * grad
            if record:
                energies.append(self.energy(self.norm(x)).detach())
        if not create:
            x = x.detach()
        return (x, torch.stack(energies)) if record else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.descend(x)


class MaskedAutoencoder(nn.Module):
    """The masked autoencoder (module docstring). ``forward(x, visible)``: ``x (B, 1, S, S)``
    normalised images, ``visible (B, N)`` bool -> predicted pixels of every token
    ``(B, N, p*p)`` (use :meth:`reconstruct` for images)."""

    def __init__(self, cfg: MAEConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        p, d = cfg.patch_size, cfg.embed_dim
        self.embed = nn.Linear(p * p, d)
        self.register_buffer(
            "pos", cfg.pos_scale * sincos_position_codes(cfg.grid, d), persistent=False
        )
        self.mask_token = nn.Parameter(torch.randn(d) * 0.02)
        if cfg.block == "vit":
            self.blocks = nn.ModuleList(
                ViTBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)
            )
            self.norm = nn.LayerNorm(d)
            dd = cfg.decoder_dim
            self.dec_embed = nn.Linear(d, dd)
            self.dec_mask_token = nn.Parameter(torch.randn(dd) * 0.02)
            self.register_buffer("dec_pos", sincos_position_codes(cfg.grid, dd), persistent=False)
            self.dec_blocks = nn.ModuleList(
                ViTBlock(dd, cfg.decoder_heads, cfg.mlp_ratio, cfg.dropout)
                for _ in range(cfg.decoder_depth)
            )
            self.dec_norm = nn.LayerNorm(dd)
            self.drop = nn.Identity()
            self.head = nn.Linear(dd, p * p)
        else:
            self.blocks = nn.ModuleList(
                EnergyBlock(
                    d,
                    cfg.num_heads,
                    cfg.head_dim,
                    cfg.mlp_ratio,
                    cfg.steps,
                    cfg.alpha,
                    cfg.beta,
                    cfg.init_gain,
                )
                for _ in range(cfg.depth)
            )
            self.norm = nn.LayerNorm(d)
            self.drop = nn.Dropout(cfg.dropout)
            self.head = nn.Linear(d, p * p)

    @property
    def min_size(self) -> int:
        return self.cfg.patch_size

    def _check(self, x: torch.Tensor, visible: torch.Tensor) -> None:
        s, n = self.cfg.img_size, self.cfg.n_tokens
        if x.ndim != 4 or x.shape[1:] != (1, s, s):
            raise InputError(
                f"the masked autoencoder takes (B, 1, {s}, {s}) images, got {tuple(x.shape)}"
            )
        if visible.shape != (x.shape[0], n) or visible.dtype != torch.bool:
            raise InputError(
                f"visible must be a bool (B, {n}) token map, got "
                f"{visible.dtype} {tuple(visible.shape)}"
            )

    def forward(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        self._check(x, visible)
        tokens = self.embed(patchify(x, self.cfg.patch_size)) + self.pos
        if self.cfg.block == "energy":
            t = torch.where(visible[..., None], tokens, self.mask_token + self.pos)
            for blk in self.blocks:
                t = blk(t)
            return self.head(self.drop(self.norm(t)))
        return self._vit(tokens, visible)

    def _vit(self, tokens: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        b, n, d = tokens.shape
        n_vis = visible.sum(1)
        length = max(int(n_vis.max()), 1)
        # visible tokens first (stable: in patch order), padded to the longest list
        order = torch.argsort((~visible).to(torch.int8), dim=1, stable=True)[:, :length]
        keep = torch.arange(length, device=tokens.device)[None] < n_vis[:, None]
        # an image without visible tokens attends to its padding (its encoder output is
        # discarded below) instead of to nothing (NaN)
        key_mask = keep | (n_vis == 0)[:, None]
        h = torch.gather(tokens, 1, order[..., None].expand(-1, -1, d))
        for blk in self.blocks:
            h = blk(h, key_mask)
        h = self.dec_embed(self.norm(h))
        dd = h.shape[-1]
        full = self.dec_mask_token.expand(b, n, dd)
        src = torch.where(keep[..., None], h, self.dec_mask_token)
        full = full.scatter(1, order[..., None].expand(-1, -1, dd), src) + self.dec_pos
        for blk in self.dec_blocks:
            full = blk(full)
        return self.head(self.dec_norm(full))

    def reconstruct(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Predicted images ``(B, 1, S, S)``."""
        s = self.cfg.img_size
        return unpatchify(self.forward(x, visible), self.cfg.patch_size, s, s)


def build_mae(model_cfg: dict | MAEConfig) -> MaskedAutoencoder:
    cfg = model_cfg if isinstance(model_cfg, MAEConfig) else MAEConfig.from_dict(dict(model_cfg))
    return MaskedAutoencoder(cfg)


def random_visible(
    batch: int, n_tokens: int, mask_ratio: float, device=None, generator=None
) -> torch.Tensor:
    """``(batch, n_tokens)`` bool: exactly ``round(mask_ratio * n_tokens)`` hidden tokens per
    row (at least one visible), uniformly at random."""
    n_hide = min(int(round(mask_ratio * n_tokens)), n_tokens - 1)
    noise = torch.rand(batch, n_tokens, device=device, generator=generator)
    rank = noise.argsort(dim=1).argsort(dim=1)
    return rank >= n_hide
