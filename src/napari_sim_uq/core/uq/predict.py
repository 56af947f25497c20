"""Tiled Monte Carlo prediction for dense image-to-image models (every task's predictor for
outputs on the input's pixel grid).

``mc_tiled_predict(pass_fn, x, ...)`` is a job (a generator of progress Events that returns
the result). For each overlapping tile (:mod:`.tiling`) it draws the ``T`` Monte Carlo
samples *batched*: the tile is repeated ``c`` times along the batch axis (``c <= mc_batch``,
the memory bound) so one forward pass gives ``c`` dropout samples, and the chunks are merged
with running moments (:class:`.moments.RunningMoments`, Welford), never a Python loop of
``T`` single passes. Chunk ``k`` uses the same dropout seed in every tile
(:class:`.mc.RngStream`), so neighbouring tiles blend samples of the same network.

``pass_fn(xb)`` maps a batch ``(c, C, h, w)`` to ``{name: (mean, var)}``: per-sample means
``(c, C', h, w)`` and, for outputs with an aleatoric (variance) head, per-sample variances
(``None`` otherwise). The result holds, per name, ``(C', H, W)`` float32 arrays:

- ``name``: the predictive mean (mean over samples of the per-sample means);
- ``name + "_epi_var"``: the epistemic variance (variance over samples of the means; only
  with ``mc_samples > 1``);
- ``name + "_alea_var"``: the aleatoric variance (mean over samples of the variances).

The total predictive variance is their sum (law of total variance). Where tiles overlap,
means and variances are blended with the same weights (a convex combination), which is
exact for the mean and an approximation for the variances.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import Event
from napari_sim_uq.core.nn.modes import eval_mode, mc_dropout_mode
from napari_sim_uq.core.uq.mc import RngStream
from napari_sim_uq.core.uq.moments import RunningMoments
from napari_sim_uq.core.uq.tiling import Blender, pad_like_model, plan_tiles, window_1d

__all__ = ["mc_tiled_predict", "total_std"]

PassFn = Callable[[torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor | None]]]


def _positive(name: str, v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def mc_tiled_predict(
    pass_fn: PassFn,
    x: Any,
    *,
    model: torch.nn.Module,
    multiple: int = 1,
    tile: int | None = None,
    overlap: int | None = None,
    mc_samples: int = 1,
    mc_batch: int | None = None,
    seed: int = 0,
    device: Any = "cpu",
    stage: str = "predict",
):
    """Predict ``x`` (``(C, H, W)`` or ``(H, W)``, any real dtype) tile by tile with
    ``mc_samples`` MC-dropout samples (``1``: one deterministic pass in eval mode).

    ``model`` is put in MC-dropout mode (dropout active, everything else in eval mode) or
    eval mode for the call and restored afterwards. ``multiple``: the model's size multiple
    (inputs and tiles are padded/aligned to it). ``tile``/``overlap``: tile size and overlap
    in pixels (``None``: the whole image at once). ``mc_batch``: samples per forward pass
    (``None``: 8 on a GPU, 1 on a CPU, where ``bench/mc_sampling.py`` measured batches to
    cost 1.3-1.5x more CPU time than single passes and memory grows with the chunk).
    Returns ``(arrays, meta)``."""
    mc_samples = _positive("mc_samples", mc_samples)
    if mc_batch is None:
        mc_batch = 8 if torch.device(device).type == "cuda" else 1
    mc_batch = _positive("mc_batch", mc_batch)
    multiple = _positive("multiple", multiple)
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise InputError(f"expected an image (H, W) or (C, H, W), got shape {tuple(t.shape)}")
    t = t.detach().to("cpu", torch.float32)
    if not torch.isfinite(t).all():
        raise InputError("the image contains NaN or infinite values")
    dev = torch.device(device)
    h, w = t.shape[-2:]
    xp, top, left = pad_like_model(t, multiple)
    hp, wp = xp.shape[-2:]
    # plan on the padded image (already a multiple of the model's grid)
    plan = plan_tiles(hp, wp, tile, overlap, multiple, None)
    mc = mc_samples > 1
    chunks = [min(mc_batch, mc_samples - i) for i in range(0, mc_samples, mc_batch)]
    rng = RngStream(int(seed), dev)
    modes = mc_dropout_mode(model) if mc else eval_mode(model)
    blend = Blender()
    names: list[str] = []
    has_var: dict[str, bool] = {}
    total = len(plan.boxes) * len(chunks)
    step = 0
    t0 = time.perf_counter()
    try:
        for ti, box in enumerate(plan.boxes):
            y0, y1, x0, x1 = box
            xt = xp[None, :, y0:y1, x0:x1].to(dev)
            means: dict[str, RunningMoments] = {}
            vars_: dict[str, RunningMoments] = {}
            for ci, c in enumerate(chunks):
                with torch.no_grad(), rng.active(ci):
                    xb = xt.expand(c, -1, -1, -1).contiguous() if c > 1 else xt
                    out = pass_fn(xb)
                    for k, (m, v) in out.items():
                        means.setdefault(k, RunningMoments(track_var=mc)).update(m.float())
                        if v is not None:
                            vars_.setdefault(k, RunningMoments(track_var=False)).update(v.float())
                step += 1
                msg = f"tile {ti + 1}/{len(plan.boxes)}"
                if mc:
                    msg += f", MC samples {sum(chunks[: ci + 1])}/{mc_samples}"
                yield Event(stage, step, total, {}, msg)
            cut = (y0 > 0, y1 < hp, x0 > 0, x1 < wp)
            wy = window_1d(y1 - y0, cut[0], cut[1], plan.overlap, plan.margin)
            wx = window_1d(x1 - x0, cut[2], cut[3], plan.overlap, plan.margin)
            win = np.outer(wy, wx).astype(np.float32)
            blend.add_weight(win, box, (hp, wp))
            for k, rm in means.items():
                if k not in names:
                    names.append(k)
                blend.add_map(k, rm.mean.cpu().numpy(), win, box, (hp, wp))
                if mc:
                    blend.add_map(k + "_epi_var", rm.variance().cpu().numpy(), win, box, (hp, wp))
                if k in vars_:
                    has_var[k] = True
                    blend.add_map(k + "_alea_var", vars_[k].mean.cpu().numpy(), win, box, (hp, wp))
    finally:
        modes.restore()
    crop = (slice(None), slice(top, top + h), slice(left, left + w))
    arrays: dict[str, np.ndarray] = {}
    for k in names:
        keys = (
            [k] + ([k + "_epi_var"] if mc else []) + ([k + "_alea_var"] if has_var.get(k) else [])
        )
        for key in keys:
            arrays[key] = np.ascontiguousarray(blend.result(key, (hp, wp))[crop], np.float32)
    meta = {
        "tile": plan.tile,
        "overlap": plan.overlap if plan.tiled else None,
        "n_tiles": len(plan.boxes),
        "mc_samples": mc_samples,
        "mc_batch": mc_batch if mc else None,
        "seed": int(seed) if mc else None,
        "device": str(dev),
        "seconds": time.perf_counter() - t0,
    }
    return arrays, meta


def total_std(arrays: dict[str, np.ndarray], name: str, scale: float = 1.0) -> dict[str, Any]:
    """``{name}_std`` (total), ``{name}_epistemic_std``, ``{name}_aleatoric_std`` from the
    variances of :func:`mc_tiled_predict` (missing parts are ``None``), each multiplied by
    the sigma-scale ``scale``. Total variance = aleatoric + epistemic."""
    epi = arrays.get(name + "_epi_var")
    alea = arrays.get(name + "_alea_var")
    parts = [v for v in (epi, alea) if v is not None]
    tot = sum(parts) if parts else None

    def sd(v):
        return None if v is None else (scale * np.sqrt(np.maximum(v, 0.0))).astype(np.float32)

    return {"std": sd(tot), "epistemic_std": sd(epi), "aleatoric_std": sd(alea)}
