"""Tiles with overlap for large images, and their blending (NumPy/PyTorch, no model code).

:func:`plan_tiles` cuts a field into overlapping tiles aligned to a model's grid, chooses the
blend margin (the receptive field when the overlap leaves room for it, so that tiling is
exact), :func:`window_1d` / :func:`blend_ramp` give each tile's separable weights, and
:class:`Blender` accumulates the weighted tile outputs into whole-field arrays. The SIM
prediction (:mod:`napari_sim_uq.tasks.sim.predict`) documents the conventions in full.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_sim_uq.core.errors import InputError

__all__ = [
    "AUTO_RAMP",
    "Blender",
    "TilePlan",
    "blend_ramp",
    "cell_owners",
    "pad_amounts",
    "pad_like_model",
    "plan_tiles",
    "tile_starts",
    "window_1d",
]


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` and step ``stride`` covering ``[0, length)``,
    the last one flush with the end (``[0]`` if ``length <= tile``)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def blend_ramp(overlap: int, margin: int | None = None) -> np.ndarray:
    """Rising blend ramp over an overlap band of ``overlap`` pixels (float64).

    0 for the first ``margin`` pixels (default ``overlap // 4``), a raised cosine
    ``0.5 - 0.5 cos(pi t)`` over the middle, 1 for the last ``margin`` pixels; it satisfies
    ``r[x] + r[overlap - 1 - x] = 1``.
    """
    if overlap <= 0:
        return np.ones(0)
    if margin is None:
        margin = overlap // 4
    width = overlap - 2 * margin
    if width <= 0:
        raise ValueError(f"margin {margin} leaves no ramp in an overlap of {overlap}")
    t = (np.arange(overlap) - margin + 0.5) / width
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(t, 0.0, 1.0))


def window_1d(size: int, lo_cut: bool, hi_cut: bool, overlap: int, margin: int) -> np.ndarray:
    w = np.ones(size)
    if overlap > 0:
        ramp = blend_ramp(overlap, margin)
        if lo_cut:
            w[:overlap] *= ramp
        if hi_cut:
            w[size - overlap :] *= ramp[::-1]
    return w


def pad_amounts(length: int, m: int) -> tuple[int, int]:
    p = -length % m
    return p // 2, p - p // 2


def pad_like_model(x: torch.Tensor, m: int) -> tuple[torch.Tensor, int, int]:
    """Pad ``(F, H, W)`` to multiples of ``m`` the way ``SimUQNet`` pads its input (split
    evenly, reflect, replicate where the image is too small). Returns ``(x, top, left)``."""
    h, w = x.shape[-2:]
    top, bottom = pad_amounts(h, m)
    left, right = pad_amounts(w, m)
    if top == bottom == left == right == 0:
        return x, 0, 0
    mode = "reflect" if max(top, bottom) < h and max(left, right) < w else "replicate"
    return F.pad(x[None], (left, right, top, bottom), mode=mode)[0], top, left


#: Width of the blend ramp (LR pixels) kept inside the overlap by the automatic overlap.
AUTO_RAMP = 16


@dataclass
class TilePlan:
    tiled: bool
    tile: int | None  # effective tile size (aligned), None when untiled
    overlap: int
    margin: int
    align: int
    pad_top: int
    pad_left: int
    padded_shape: tuple[int, int]
    spans: list[list[tuple[int, int]]]  # per axis (y, x): tile extents on the padded grid
    boxes: list[tuple[int, int, int, int]]  # (y0, y1, x0, x1), y outer, x inner
    exact: bool = False  # tiled result equals the untiled one (away from image borders)


def plan_tiles(
    h: int, w: int, tile: int | None, overlap: int | None, align: int, need: int | None
) -> TilePlan:
    """Tiles for an ``h x w`` image. ``need``: the blend margin (LR px) that makes tiling
    exact for this model (receptive field incl. PSF support), ``None`` if it cannot be
    exact. ``overlap=None``: the smallest overlap that is exact (``2 need + AUTO_RAMP``),
    or 16 for a model that cannot be exact."""
    if tile is None or (h <= tile and w <= tile):
        return TilePlan(
            False, None, 0, 0, align, 0, 0, (h, w), [[(0, h)], [(0, w)]], [(0, h, 0, w)], exact=True
        )
    auto = overlap is None
    if auto:
        overlap = 2 * need + AUTO_RAMP if need is not None else 16
    t_eff = tile // align * align
    ov_eff = -(-overlap // align) * align
    if t_eff <= 2 * ov_eff:
        if auto and need is not None:
            raise InputError(
                f"tile={tile} is too small for exact tiling with this model: its receptive "
                f"field ({need} raw pixels incl. the PSF) needs an overlap of {ov_eff}, so "
                f"tiles of at least {2 * ov_eff + align} pixels; use a larger tile, or pass a "
                "smaller overlap for approximate tiling"
            )
        raise InputError(
            f"tile={tile}, overlap={overlap}: this model needs tile sizes and strides that are "
            f"multiples of {align} (2^depth), which gives tile {t_eff} and overlap {ov_eff}, "
            f"but the tile must be larger than twice the overlap; use tile >= "
            f"{2 * ov_eff + align} or a smaller overlap"
        )
    # blend margin: the receptive field when the overlap leaves room for it and a ramp of
    # at least 4 pixels, else a quarter of the overlap (approximate tiling)
    exact = need is not None and ov_eff >= 2 * need + 4
    margin = need if exact else ov_eff // 4
    stride = t_eff - ov_eff
    top, bottom = pad_amounts(h, align)
    left, right = pad_amounts(w, align)
    hp, wp = h + top + bottom, w + left + right
    spans = []
    for length, padded in ((h, hp), (w, wp)):
        if length <= tile:  # this axis is not cut
            spans.append([(0, padded)])
        else:
            spans.append([(s, s + t_eff) for s in tile_starts(padded, t_eff, stride)])
    boxes = [(y0, y1, x0, x1) for (y0, y1) in spans[0] for (x0, x1) in spans[1]]
    return TilePlan(True, t_eff, ov_eff, margin, align, top, left, (hp, wp), spans, boxes, exact)


def cell_owners(spans: list[tuple[int, int]], length: int, m: int) -> list[np.ndarray]:
    """Per tile span along one axis: a boolean mask over its ``m``-pixel cells marking the
    cells it owns. Every cell of ``[0, length)`` is owned by exactly one span: the one in
    which the cell centre is farthest from a cut edge (image borders are not cuts)."""
    n = length // m
    centre = (np.arange(n) + 0.5) * m
    dist = np.full((len(spans), n), -np.inf)
    for i, (s, e) in enumerate(spans):
        inside = (centre > s) & (centre < e)
        d_lo = centre - s if s > 0 else np.inf
        d_hi = e - centre if e < length else np.inf
        dist[i] = np.where(inside, np.minimum(d_lo, d_hi), -np.inf)
    owner = np.argmax(dist, axis=0)  # first maximum: ties go to the earlier tile
    return [(owner == i)[s // m : e // m] for i, (s, e) in enumerate(spans)]


class Blender:
    """Weighted accumulation of tile outputs into whole-field float32 NumPy arrays."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.wsum: dict[str, np.ndarray] = {}

    def add_map(self, name: str, value: np.ndarray, window: np.ndarray, box, shape) -> None:
        """``value (C, h, w)`` weighted by ``window (h, w)`` into a field of ``shape``."""
        y0, y1, x0, x1 = box
        if name not in self.sums:
            self.sums[name] = np.zeros((value.shape[0], *shape), np.float32)
        self.sums[name][:, y0:y1, x0:x1] += value * window

    def add_weight(self, window: np.ndarray, box, shape) -> None:
        y0, y1, x0, x1 = box
        key = f"w{shape}"
        if key not in self.wsum:
            self.wsum[key] = np.zeros(shape, np.float32)
        self.wsum[key][y0:y1, x0:x1] += window

    def result(self, name: str, shape) -> np.ndarray:
        """The normalised blend (in place: the accumulator is consumed)."""
        out = self.sums.pop(name)
        out /= self.wsum[f"w{shape}"]
        return out
