r"""SIM inference: tiled reconstruction with aleatoric and MC-dropout (epistemic) uncertainty.

:func:`predict_sim` is a job (DESIGN.md section 2): a generator that yields
:class:`~napari_sim_uq.core.events.Event` progress reports (stage ``"reconstruct"``) and
returns a :class:`SimPrediction`; :func:`predict_sim_sync` drives it and returns the result.
Pure PyTorch/NumPy, no Qt or napari.

Input: one normalised raw SIM stack ``(A*P, H, W)`` (angle-major; ``(A, P, H, W)`` is
accepted too); the caller loops over time points.

Uncertainty definitions
-----------------------
Without MC (``mc_samples=0``) the model runs once in eval mode; the returned variances are
the predicted (aleatoric) ones and the epistemic parts are ``None``.

With MC dropout (``mc_samples=T > 0``) the dropout modules are put in train mode and every
other module in eval mode (:func:`~napari_sim_uq.tasks.sim.net.mc_dropout_mode`). The
``T`` samples are drawn in chunks of ``mc_batch`` by repeating the input along the batch
dimension (one forward pass per chunk, not per sample); each chunk's mean and sum of
squared deviations are merged into running statistics with the parallel Welford update of
Chan et al. (:func:`~napari_sim_uq.core.uq.moments.welford_merge`,
:class:`~napari_sim_uq.core.uq.moments.RunningMoments`). For every output ``q`` with per-sample
predicted mean ``mu_t`` and variance ``v_t``:

- predictive mean ``E[q] = mean_t mu_t``;
- aleatoric variance ``mean_t v_t``;
- epistemic variance ``var_t mu_t`` (population variance, ``ddof=0``, so that the law of
  total variance ``Var(q) = mean_t v_t + var_t mu_t`` holds exactly for the empirical
  distribution of the ``T`` samples);
- total variance = aleatoric + epistemic; every ``*_std`` is the square root of a variance.

The dropout RNG is seeded per chunk with :func:`~napari_sim_uq.core.uq.mc.mc_chunk_seed`
``(seed, chunk)`` (the global torch RNG state is saved and restored around each chunk), so
the same call gives the same result, and chunk ``c`` draws the same channel dropout masks
(``Dropout2d`` draws one number per channel, independent of the tile size) in every tile
and in the pooling pass, i.e. sample ``t`` is one network applied to the whole field. The
samples depend on ``mc_batch`` (the grouping of the draws), not only on ``seed``. A model
without active dropout (``p = 0`` everywhere) gives identical samples: a ``UserWarning`` is
issued, the model runs once per tile and the epistemic variances are 0.

A deep ensemble (:class:`~napari_sim_uq.tasks.sim.ensemble.SimUQEnsemble`, ``M`` members)
is sampled the same way: every forward pass returns each member's outputs, so ``T = M``
samples without MC dropout (the members in eval mode) and ``T = M x mc_samples`` with it;
the epistemic variance is then the spread of the members (``meta["ensemble_members"]``).

Reconstruction ``rec``
----------------------
``rec = y = down_f(B(h * (e . l_i))) + b`` is the forward model
(:func:`~napari_sim_uq.tasks.sim.physics.sim_forward`) of the predicted means (the predictive means
under MC). ``rec_std`` is the model-uncertainty part of the raw-frame prediction (camera
noise is not included):

- aleatoric: ``Var(y)`` propagated exactly through the forward model
  (:func:`~napari_sim_uq.tasks.sim.physics.forward_mean_and_variance`) from the predicted emitter,
  pattern and PSF variances; the PSF covariance is the full delta-method covariance of the
  softmax PSF (:func:`~napari_sim_uq.tasks.sim.physics.softmax_psf_covariance`, from ``psf_logvar``)
  when the model returns it, else the diagonal ``psf_var``. Under MC it is the mean over
  samples of the per-sample propagated variance;
- epistemic (MC only): the mean squared deviation of the per-sample forward predictions
  ``y_t`` from ``rec``, ``var_t y_t + (mean_t y_t - rec)^2`` (the second term, which is the
  effect of the sample covariance of ``e``, ``l`` and ``h`` on the bilinear model, is
  usually negligible). Pixel correlations induced by dropout are thereby accounted for.

Tiling and blending
-------------------
With ``tile`` (LR pixels) smaller than the image, the LR stack is cut into overlapping
``tile x tile`` tiles with stride ``tile - overlap``; along each axis the last tile is flush
with the border (it may overlap its neighbour by more). An axis no longer than ``tile`` is
not cut. For a U-Net with ``depth`` strided levels (``model.cfg.depth``, alignment
``m = 2^depth``) the tile size is rounded *down* and the overlap *up* to multiples of ``m``,
and the stack is first padded to a multiple of ``m`` exactly as the model pads its input
(split evenly, reflect, replicate for tiny images), so that every tile sees the same
stride phase as the whole image; the effective values are in ``meta``.

Every tile's outputs are weighted by a separable window that is exactly 1 in the tile's
core and along image borders, and, along each edge shared with a neighbour, rises over the
``overlap`` band as ``0`` for the outer ``margin`` pixels, then a raised cosine
``0.5 - 0.5 cos(pi t)``, then 1 for the inner ``margin`` pixels. ``margin`` is the
distance an output needs to be exact, ``need = model.receptive_radius +
ceil((psf_size // 2) / f)`` (the receptive field of the per-pixel outputs plus the PSF
support that ``rec`` reads), when the overlap leaves room for it (``overlap >= 2 need + 4``;
the default ``overlap=None`` chooses ``2 need + 16``); otherwise ``overlap // 4``
(approximate tiling; ``meta["tiling_exact"]`` tells which). The ramp satisfies
``r(x) + r(overlap - 1 - x) = 1`` (the window of two neighbours sums to 1 in their overlap);
weights are in any case normalised per pixel. Consequently a tile output contributes only
at distance ``>= margin`` from the tile's cut edges: for a model whose receptive field
radius is at most ``margin`` LR pixels and whose outputs are per-pixel (no statistics over
the whole tile, see below) the tiled result equals the untiled one exactly (to rounding)
everywhere except within the receptive field of the image border.
HR maps (emitter, patterns) are blended with the window on the HR grid (``f`` times the LR
window, same shape), the raw-frame ``rec`` maps with the LR window.

Blending conventions: means are blended linearly (normalised weighted mean). Variances are
blended as the normalised weighted mean of the tile variances (a convex combination of two
predictions of the same quantity, not a mixture: the disagreement of neighbouring tiles in
the seam is a tiling artefact, not posterior uncertainty, and the mixture formula ``E[var +
mean^2] - mean^2`` cancels catastrophically in float32). Aleatoric and epistemic parts are
blended separately, so total = aleatoric + epistemic still holds. ``rec``/``rec_std`` are
computed per tile from the tile's own outputs (the forward model couples pixels over the
PSF support, and a tile's PSF belongs to its tile) and blended on the LR grid. The PSF and
the background come from the mean of the bottleneck features over the image. Tiled, a first
pass runs only the encoder (:meth:`~napari_sim_uq.tasks.sim.net.SimUQNet.bottleneck`) over
every tile (and MC chunk, with the same dropout masks) and averages the bottleneck cells
over the whole padded field, each cell taken from the tile in which it lies farthest from a
cut edge (:func:`~napari_sim_uq.core.uq.tiling.cell_owners`); the second pass gives every tile
that ``pooled`` vector, so the PSF and background of every tile are those of the whole
image. (They are still blended with the tiles' window weights, which is then the identity;
a model without ``bottleneck`` gets its per-tile values averaged that way.)

Hence, for a model whose conv blocks use a per-pixel norm or none (``SimNetConfig.norm``
``"pixel"``, the default, or ``"none"``) tiling with ``margin >= need`` reproduces the
untiled result exactly (to float rounding), borders included. ``norm="group"`` normalises
over the whole tile, so such models tile only approximately (``tiling_exact`` False).

Memory: per tile, the device holds the tile input repeated ``mc_batch`` times and the
network activations for it, plus the running statistics of one tile; the whole-field
accumulators are float32 NumPy arrays in host memory.

Small inputs
------------
A network sees its input through a receptive field (``model.receptive_radius``, 53 raw
pixels for the default depth 3) and is trained on fields of some size (``context``, the
training stacks' size stored in the checkpoint). A field smaller than that lacks context the
model relies on, and its reconstruction differs from the same region reconstructed as part
of a larger field. ``predict_sim`` therefore

- refuses fields smaller than :data:`MIN_SIM_FIELD` raw pixels on a side (one cell of the
  coarsest grid of the default depth-3 network; measured on the bundled model: a 4 x 4
  crop differs from the whole-field result by 91 % of the emitter, an 8 x 8 crop by 41 %)
  with an ``InputError``;
- for fields smaller than ``context`` on an axis, issues a :class:`SmallInputWarning`
  naming the size the model needs, pads the stack to ``context`` on that axis with
  ``pad_mode`` (default ``"replicate"``, the best of zero / reflect / replicate measured by
  ``bench/small_input.py``), reconstructs, and crops every output back to the input's
  field; ``meta["context"]`` records what was done (``limited`` is then True).

``bench/small_input.py`` measures the remaining difference (docs/user-guide.md): about half
of it comes from the percentile normalisation fitted on the small field alone, the rest from
the missing context. For a crop of a larger image, reconstruct the larger image and crop
the result.

``sigma_scale``
---------------
Recalibration factors ``{"emitter": s_e, "lp": s_l, "psf": s_h, "raw": s_r}`` (missing keys
are 1; DESIGN.md section 5, ``sigma' = s sigma``) multiply *every* std map of that quantity
(total, aleatoric and epistemic, so the parts still add up in quadrature): ``"raw"`` scales
the ``rec`` std maps. Variances are not rescaled before propagation: ``rec_std`` is scaled
by ``"raw"`` only.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import Event, run
from napari_sim_uq.core.nn.modes import eval_mode, mc_dropout_mode
from napari_sim_uq.core.uq.mc import RngStream
from napari_sim_uq.core.uq.moments import RunningMoments
from napari_sim_uq.core.uq.tiling import (
    Blender,
    cell_owners,
    pad_like_model,
    plan_tiles,
    window_1d,
)
from napari_sim_uq.tasks.sim.ensemble import ensemble_size
from napari_sim_uq.tasks.sim.pattern_model import apply_instrument
from napari_sim_uq.tasks.sim.physics import (
    forward_mean_and_variance,
    sim_forward,
    softmax_psf_covariance,
)

__all__ = [
    "MIN_SIM_FIELD",
    "PAD_MODES",
    "SIGMA_SCALE_KEYS",
    "SimPrediction",
    "SmallInputWarning",
    "predict_sim",
    "predict_sim_sync",
]

#: Keys accepted in ``sigma_scale``.
SIGMA_SCALE_KEYS = ("emitter", "lp", "psf", "raw")

STAGE = "reconstruct"

#: Smallest field (raw pixels on a side) :func:`predict_sim` reconstructs (module docstring).
MIN_SIM_FIELD = 8

#: Padding modes for fields smaller than the model's context (``"zero"`` pads with 0 in
#: normalised units).
PAD_MODES = ("replicate", "reflect", "zero")


class SmallInputWarning(UserWarning):
    """The field is smaller than the context the model was trained with."""


# --------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------


@dataclass
class SimPrediction:
    """Result of :func:`predict_sim` (float32 NumPy arrays; ``F = A*P`` frames, HR size
    ``(fH, fW)``, ``k = psf_size``).

    ``*_std`` is the total std ``sqrt(aleatoric + epistemic)``; ``None`` where neither part
    exists (no variance head and no MC). ``*_epistemic_std`` is ``None`` without MC.
    ``sigma_scale`` has been applied to all std maps (see the module docstring).
    """

    emitter: np.ndarray  # (fH, fW)
    emitter_std: np.ndarray | None
    emitter_aleatoric_std: np.ndarray | None
    emitter_epistemic_std: np.ndarray | None
    lp: np.ndarray  # (F, fH, fW)
    lp_std: np.ndarray | None
    lp_aleatoric_std: np.ndarray | None
    lp_epistemic_std: np.ndarray | None
    psf: np.ndarray  # (k, k)
    psf_std: np.ndarray | None
    psf_aleatoric_std: np.ndarray | None
    psf_epistemic_std: np.ndarray | None
    background: float
    background_std: float | None  # epistemic only (the network predicts no variance)
    rec: np.ndarray  # (F, H, W), forward model of the predicted means
    rec_std: np.ndarray | None
    rec_aleatoric_std: np.ndarray | None
    rec_epistemic_std: np.ndarray | None
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------


def _int_param(name: str, v: object, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module (SimUQNet), got {type(model).__name__}")
    for attr in ("expected_frames", "hr_factor"):
        if not hasattr(model, attr):
            raise InputError(f"model has no '{attr}'; predict_sim needs a SimUQNet-like model")
    return model


def _as_stack(frames: object, model: nn.Module) -> torch.Tensor:
    """Validate ``frames`` and return a CPU float tensor ``(F, H, W)``."""
    n = int(model.expected_frames)
    cfg = getattr(model, "cfg", None)
    if isinstance(frames, np.ndarray):
        if not (np.issubdtype(frames.dtype, np.floating)):
            raise InputError(
                f"frames must be floating point (normalised float32), got dtype {frames.dtype}; "
                "normalise the raw data first"
            )
        x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
    elif isinstance(frames, torch.Tensor):
        if not frames.is_floating_point():
            raise InputError(
                f"frames must be floating point (normalised float32), got {frames.dtype}; "
                "normalise the raw data first"
            )
        x = frames.detach().to(device="cpu", dtype=torch.float32)
    else:
        raise InputError(
            f"frames must be a NumPy array or a torch tensor, got {type(frames).__name__}"
        )
    if x.ndim == 4 and cfg is not None and tuple(x.shape[:2]) == (cfg.n_angles, cfg.n_phases):
        x = x.reshape(n, *x.shape[2:])  # (A, P, H, W) -> angle-major (A*P, H, W)
    if x.ndim != 3:
        hint = ""
        if x.ndim == 4 and x.shape[1] == n:
            hint = "; this looks like a time series: reconstruct one time point at a time"
        raise InputError(
            f"frames must be one SIM stack of shape ({n}, H, W), got shape {tuple(x.shape)}{hint}"
        )
    if x.shape[0] != n:
        desc = f" ({cfg.n_angles} angles x {cfg.n_phases} phases)" if cfg is not None else ""
        raise InputError(f"the model expects {n} frames{desc}, got {x.shape[0]}")
    if x.shape[1] < 1 or x.shape[2] < 1:
        raise InputError(f"frames have an empty image, shape {tuple(x.shape)}")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise InputError(
            f"frames contain {bad} NaN or infinite value(s) out of {x.numel()}; "
            "clean the data before reconstruction"
        )
    return x


def _check_sigma_scale(sigma_scale: object) -> dict[str, float]:
    out = dict.fromkeys(SIGMA_SCALE_KEYS, 1.0)
    if sigma_scale is None:
        return out
    if not isinstance(sigma_scale, dict):
        raise InputError(
            f"sigma_scale must be a dict like {{'emitter': s, 'lp': s, 'raw': s}}, "
            f"got {type(sigma_scale).__name__}"
        )
    unknown = sorted(str(k) for k in sigma_scale if k not in SIGMA_SCALE_KEYS)
    if unknown:
        raise InputError(f"unknown sigma_scale keys {unknown}: use {list(SIGMA_SCALE_KEYS)}")
    for k, v in sigma_scale.items():
        ok = isinstance(v, numbers.Real) and not isinstance(v, bool)
        if not ok or not math.isfinite(v) or v <= 0:
            raise InputError(f"sigma_scale['{k}'] must be a finite number > 0, got {v!r}")
        out[k] = float(v)
    return out


# --------------------------------------------------------------------------------------
# tiling
# --------------------------------------------------------------------------------------


def _pad_to_context(
    x: torch.Tensor, context: int | None, pad_mode: str, min_field: int, warn: bool
) -> tuple[torch.Tensor, dict]:
    """Refuse fields below ``min_field``; pad ``(F, H, W)`` to ``context`` on each axis that
    is shorter (split evenly, ``pad_mode``), warning if ``warn``. Returns
    ``(x, meta["context"])``."""
    _, h, w = x.shape
    if min(h, w) < min_field:
        need = f"; the model needs {context} x {context} for full quality" if context else ""
        raise InputError(
            f"the SIM field is {h} x {w} raw pixels, smaller than the minimum of {min_field} x "
            f"{min_field} that can be reconstructed{need}. Reconstruct a larger region (for a "
            "crop of a larger image: reconstruct the whole image and crop the result)."
        )
    ph = max(0, (context or 0) - h)
    pw = max(0, (context or 0) - w)
    top, left = ph // 2, pw // 2
    info = {
        "needed": context,
        "input": [int(h), int(w)],
        "padded_to": [int(h + ph), int(w + pw)],
        "pad": [top, ph - top, left, pw - left],
        "pad_mode": pad_mode if ph or pw else None,
        "limited": bool(ph or pw),
    }
    if not (ph or pw):
        return x, info
    info["message"] = (
        f"the SIM field is {h} x {w} raw pixels, smaller than the {context} x {context} the "
        f"model was trained with: it lacks context the model relies on, so the result can "
        f"differ from the same region reconstructed within a larger field (padded to "
        f"{h + ph} x {w + pw} with '{pad_mode}'). Reconstruct at least {context} x {context} "
        "pixels (for a crop: the whole image, then crop the result)."
    )
    if warn:
        warnings.warn(info["message"], SmallInputWarning, stacklevel=3)
    pad = (left, pw - left, top, ph - top)
    if pad_mode == "zero":
        xp = F.pad(x[None], pad, mode="constant", value=0.0)[0]
    elif pad_mode == "replicate":
        xp = F.pad(x[None], pad, mode="replicate")[0]
    else:  # reflect, repeated for pads longer than the field (mirror at the edge pixels)
        xp = x[:, _reflect_index(h, top, h + ph)][:, :, _reflect_index(w, left, w + pw)]
    return xp, info


def _reflect_index(n: int, before: int, total: int) -> torch.Tensor:
    """Indices of a field of length ``n`` mirrored about its edge pixels (as
    ``mode="reflect"``) extended to ``total`` with ``before`` pixels in front; any length."""
    idx = np.arange(-before, total - before)
    period = 2 * n - 2
    if period <= 0:
        return torch.zeros(total, dtype=torch.long)
    idx = np.mod(idx, period)
    return torch.from_numpy(np.where(idx >= n, period - idx, idx))


def _crop_to_field(res: dict[str, Any], info: dict, f: int) -> None:
    """Crop the HR (emitter, patterns) and LR (rec) maps of ``res`` in place to the field
    inside the context padding of :func:`_pad_to_context`."""
    top, _, left, _ = info["pad"]
    h, w = info["input"]
    for k, v in res.items():
        if not isinstance(v, np.ndarray):
            continue
        if k.startswith(("emitter", "lp")):
            res[k] = np.ascontiguousarray(
                v[..., f * top : f * (top + h), f * left : f * (left + w)]
            )
        elif k.startswith("rec"):
            res[k] = np.ascontiguousarray(v[..., top : top + h, left : left + w])


def _fov_mask(box, crop, f: int, device, dtype) -> torch.Tensor | None:
    """HR 0/1 mask ``(1, 1, fh, fw)`` of the image inside a tile of the padded grid, or
    ``None`` if the tile lies inside the image."""
    y0, y1, x0, x1 = box
    if y0 >= crop[0] and y1 <= crop[1] and x0 >= crop[2] and x1 <= crop[3]:
        return None
    mask = torch.zeros(1, 1, f * (y1 - y0), f * (x1 - x0), device=device, dtype=dtype)
    ys, ye = max(crop[0], y0) - y0, min(crop[1], y1) - y0
    xs, xe = max(crop[2], x0) - x0, min(crop[3], x1) - x0
    mask[..., f * ys : f * ye, f * xs : f * xe] = 1
    return mask


# --------------------------------------------------------------------------------------
# per-tile computation
# --------------------------------------------------------------------------------------


def _sample_outputs(
    out: Any, f: int, need_rec_var: bool, fov: torch.Tensor | None
) -> dict[str, torch.Tensor | None]:
    """Per-sample means/variances of one batched model call, incl. the forward model.

    ``fov`` (HR, 0/1) masks the emitter outside the image (padding) before the forward
    model, as the untiled forward model has no emitter outside the field of view."""
    b = out.emitter.shape[0]
    e, ve = out.emitter, out.emitter_var
    if fov is not None:
        e = e * fov
        ve = None if ve is None else ve * fov
    bg = out.background
    background = bg if bg is not None else 0.0
    d: dict[str, torch.Tensor | None] = {
        "emitter": out.emitter[:, 0],
        "emitter_var": None if out.emitter_var is None else out.emitter_var[:, 0],
        "lp": out.lp,
        "lp_var": out.lp_var,
        "psf": out.psf,
        "psf_var": out.psf_var,
        "background": bg.reshape(b) if bg is not None else out.emitter.new_zeros(b),
    }
    if need_rec_var:
        var_psf, lowrank = out.psf_var, None
        if out.psf_logvar is not None:
            var_psf, lowrank = softmax_psf_covariance(out.psf, out.psf_logvar.exp())
        y, vy = forward_mean_and_variance(
            e,
            out.lp,
            out.psf,
            f,
            background,
            var_emitter=ve,
            var_patterns=out.lp_var,
            var_psf=var_psf,
            psf_lowrank=lowrank,
        )
        d["y"], d["y_var"] = y, vy
    else:
        d["y"], d["y_var"] = sim_forward(e, out.lp, out.psf, f, background), None
    return d


_MEAN_KEYS = ("emitter", "lp", "psf", "background")


def _to_np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().to("cpu", torch.float32).numpy()


# --------------------------------------------------------------------------------------
# the job
# --------------------------------------------------------------------------------------


def predict_sim(
    model: nn.Module,
    frames: np.ndarray | torch.Tensor,
    *,
    mc_samples: int = 0,
    mc_batch: int = 4,
    tile: int | None = None,
    overlap: int | None = None,
    device: str | torch.device = "cpu",
    sigma_scale: dict[str, float] | None = None,
    seed: int = 0,
    context: int | None = None,
    pad_mode: str = "replicate",
    warn_small_input: bool = True,
) -> Generator[Event, None, SimPrediction]:
    """Reconstruct one SIM stack with uncertainty (a job: yields events, returns the result).

    Parameters
    ----------
    model : a :class:`~napari_sim_uq.tasks.sim.net.SimUQNet`. It is moved to ``device``
        (in place, as ``nn.Module.to`` does); its per-module train/eval modes are restored
        when the job ends or is closed.
    frames : ``(A*P, H, W)`` (or ``(A, P, H, W)``) normalised floating-point stack, finite,
        with ``model.expected_frames`` frames.
    mc_samples : number ``T`` of MC-dropout samples; 0 = one deterministic eval-mode pass.
    mc_batch : samples drawn per forward pass (the input is repeated along the batch).
    tile : tile size in LR pixels (``None``: whole image); ``tile > 2 * overlap``.
    overlap : overlap of neighbouring tiles in LR pixels; ``None`` (default): the smallest
        overlap for which tiling is exact (``2 * (receptive radius + PSF radius) + 16``),
        or 16 for a model that cannot tile exactly (GroupNorm).
    device : torch device for the network and the physics.
    sigma_scale : std recalibration factors, keys ``"emitter"``, ``"lp"``, ``"psf"``,
        ``"raw"`` (missing = 1); they multiply the std maps.
    seed : seed of the dropout RNG (MC only).
    context : field size (raw pixels on a side) the model was trained with
        (:func:`~napari_sim_uq.tasks.sim.reconstruct.model_context`); smaller fields are padded
        to it with ``pad_mode`` (one of :data:`PAD_MODES`) and give a
        :class:`SmallInputWarning`. ``None``: no padding. Fields below
        :data:`MIN_SIM_FIELD` are refused either way (module docstring, *Small inputs*).
    warn_small_input : issue the :class:`SmallInputWarning`s (front ends that show
        ``meta["context"]["message"]`` themselves pass False).

    Yields one ``Event("reconstruct", step, total)`` per tile and MC chunk
    (``total = n_tiles * ceil(T / mc_batch)``, 1 chunk without MC); returns a
    :class:`SimPrediction` (``StopIteration.value``). Input errors raise
    :class:`~napari_sim_uq.core.errors.InputError` at the first ``next()``. Conventions: module
    docstring.
    """
    t_start = time.perf_counter()
    model = _check_model(model)
    x = _as_stack(frames, model)
    mc_samples = _int_param("mc_samples", mc_samples, 0)
    mc_batch = _int_param("mc_batch", mc_batch, 1)
    if overlap is not None:
        overlap = _int_param("overlap", overlap, 0)
    if tile is not None:
        tile = _int_param("tile", tile, 1)
        if overlap is not None and tile <= 2 * overlap:
            raise InputError(
                f"tile ({tile}) must be larger than twice the overlap ({overlap}): "
                f"use tile >= {2 * overlap + 1} or a smaller overlap"
            )
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise InputError(f"seed must be an integer, got {seed!r}")
    scales = _check_sigma_scale(sigma_scale)
    if context is not None:
        context = _int_param("context", context, 1)
    if pad_mode not in PAD_MODES:
        raise InputError(f"pad_mode must be one of {list(PAD_MODES)}, got {pad_mode!r}")
    patterns = _stack_patterns(model, x)
    x, context_info = _pad_to_context(x, context, pad_mode, MIN_SIM_FIELD, warn_small_input)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}") from exc

    f = int(model.hr_factor)
    cfg = getattr(model, "cfg", None)
    align = 2 ** int(getattr(cfg, "depth", 0))
    _, h, w = x.shape
    radius = getattr(model, "receptive_radius", None)
    need = None
    if radius is not None and getattr(model, "tiling_exact", False):
        # rec at LR pixel p reads the emitter over the PSF support around p's HR pixels
        k = int(getattr(cfg, "psf_size", 1))
        need = int(radius) + -(-(k // 2) // f)
    plan = plan_tiles(h, w, tile, overlap, align, need)
    if plan.tiled and context and plan.tile < context and not plan.exact:
        context_info["tile_message"] = (
            f"tile {plan.tile} is smaller than the {context} x {context} raw pixels the model "
            "was trained with, and the overlap is too small for exact tiling: tiles lack "
            f"context. Use tile >= {context}, or leave the overlap at its default."
        )
        if warn_small_input:
            warnings.warn(context_info["tile_message"], SmallInputWarning, stacklevel=2)
    two_pass = plan.tiled and hasattr(model, "bottleneck")
    if plan.tiled:
        x, _, _ = pad_like_model(x, align)
    hp, wp = plan.padded_shape
    hr_shape, lr_shape = (f * hp, f * wp), (hp, wp)
    # the image inside the padded grid (LR), for cropping and for the PSF tile weights
    crop_lr = (plan.pad_top, plan.pad_top + h, plan.pad_left, plan.pad_left + w)

    param = next(model.parameters(), None)
    if param is not None and param.device != dev:
        model.to(dev)
    dtype = param.dtype if param is not None else torch.float32

    # a deep ensemble (tasks/sim/ensemble.py) returns its members' outputs as samples
    members = ensemble_size(model)
    mc = mc_samples > 0 or members > 1
    modes: Any = None
    n_pass = mc_samples
    try:
        if mc_samples > 0:
            modes = mc_dropout_mode(model)
            if modes.n_dropout == 0:
                warnings.warn(
                    "mc_samples > 0 but the model has no active dropout (p = 0): all MC samples "
                    "would be identical; running once, epistemic uncertainty is 0"
                    + (" within each ensemble member" if members > 1 else ""),
                    UserWarning,
                    stacklevel=2,
                )
                n_pass = 1
        else:
            modes = eval_mode(model)
        n_draw = max(n_pass, 1) * members  # samples: passes x members
        if n_pass > 0:
            chunks = [min(mc_batch, n_pass - i) for i in range(0, n_pass, mc_batch)]
        else:
            chunks = [1]
        n_tiles = len(plan.boxes)
        total = n_tiles * len(chunks) * (2 if two_pass else 1)
        rng = RngStream(int(seed), dev)
        step = 0
        timings = {"model_s": 0.0, "physics_s": 0.0, "pooling_s": 0.0}

        # ---- pass 1 (tiled): the whole-image mean of the bottleneck features, per chunk,
        # so every tile gets the PSF/background of the whole field (as untiled inference)
        pooled: list[torch.Tensor | None] = [None] * len(chunks)
        if two_pass:
            owners = [cell_owners(plan.spans[ax], plan.padded_shape[ax], align) for ax in (0, 1)]
            n_x = len(plan.spans[1])
            sums: list[torch.Tensor | None] = [None] * len(chunks)
            for ti, box in enumerate(plan.boxes):
                y0, y1, x0, x1 = box
                own = torch.from_numpy(np.outer(owners[0][ti // n_x], owners[1][ti % n_x])).to(dev)
                xt = x[None, :, y0:y1, x0:x1].to(device=dev, dtype=dtype)
                for ci, c in enumerate(chunks):
                    with torch.no_grad(), rng.active(ci):
                        xb = xt.expand(c, -1, -1, -1).contiguous() if c > 1 else xt
                        t0 = time.perf_counter()
                        bt = model.bottleneck(xb, check_input=False)
                        timings["pooling_s"] += time.perf_counter() - t0
                        part = bt[..., own].double().sum(dim=-1)
                    sums[ci] = part if sums[ci] is None else sums[ci] + part
                    step += 1
                    yield Event(STAGE, step, total, {}, f"pooling tile {ti + 1}/{n_tiles}")
            n_cells = (plan.padded_shape[0] // align) * (plan.padded_shape[1] // align)
            pooled = [None if t is None else (t / n_cells).to(dtype) for t in sums]

        blend = Blender()
        glob: dict[str, Any] = {}  # weighted sums of PSF/background statistics
        glob_w = 0.0
        have: dict[str, bool] = {}

        for ti, box in enumerate(plan.boxes):
            y0, y1, x0, x1 = box
            xt = x[None, :, y0:y1, x0:x1].to(device=dev, dtype=dtype)
            stats: dict[str, RunningMoments] = {}
            fov = _fov_mask(box, crop_lr, f, dev, dtype)
            optics = None
            if patterns is not None:
                k = int(getattr(cfg, "psf_size", 1))
                optics = _tile_optics(patterns, f, box, plan, context_info, crop_lr, k, dev, dtype)
            for ci, c in enumerate(chunks):
                # chunk ci draws the same dropout masks in every tile (and in pass 1)
                with torch.no_grad(), rng.active(ci):
                    t0 = time.perf_counter()
                    xb = xt.expand(c, -1, -1, -1).contiguous() if c > 1 else xt
                    if pooled[ci] is not None:
                        out = model(xb, check_input=False, pooled=pooled[ci])
                    else:
                        out = model(xb, check_input=False)
                    if optics is not None:  # the instrument's (pattern_model.py)
                        out = apply_instrument(
                            out,
                            xb.repeat(members, 1, 1, 1) if members > 1 else xb,
                            optics["lp"],
                            optics["lp_var"],
                            optics["psf"],
                            f,
                            emitter_mask=fov,
                            mask=optics["mask"],
                        )
                    t1 = time.perf_counter()
                    need_var = any(
                        v is not None for v in (out.emitter_var, out.lp_var, out.psf_var)
                    )
                    s = _sample_outputs(out, f, need_var, fov)
                    timings["model_s"] += t1 - t0
                    timings["physics_s"] += time.perf_counter() - t1
                    for k, v in s.items():
                        if v is None:
                            continue
                        track = k in _MEAN_KEYS or k == "y"
                        stats.setdefault(k, RunningMoments(track_var=track)).update(v)
                step += 1
                done = sum(chunks[: ci + 1])
                msg = f"tile {ti + 1}/{n_tiles}"
                if mc_samples > 0:
                    msg += f", MC samples {done}/{n_pass}"
                yield Event(STAGE, step, total, {}, msg)

            # ---- per-tile results (predictive means, aleatoric / epistemic variances)
            with torch.no_grad():
                t1 = time.perf_counter()
                tile_out = _tile_result(stats, f, mc, n_draw, fov)
                timings["physics_s"] += time.perf_counter() - t1
            have = {k: v is not None for k, v in tile_out.items()}
            ty, tx = y1 - y0, x1 - x0
            cut = (y0 > 0, y1 < hp, x0 > 0, x1 < wp)
            ov, mg = plan.overlap, plan.margin
            wy = window_1d(ty, cut[0], cut[1], ov, mg)
            wx = window_1d(tx, cut[2], cut[3], ov, mg)
            wy_hr = window_1d(f * ty, cut[0], cut[1], f * ov, f * mg)
            wx_hr = window_1d(f * tx, cut[2], cut[3], f * ov, f * mg)
            win_lr = np.outer(wy, wx).astype(np.float32)
            win_hr = np.outer(wy_hr, wx_hr).astype(np.float32)
            box_hr = (f * y0, f * y1, f * x0, f * x1)
            blend.add_weight(win_hr, box_hr, hr_shape)
            blend.add_weight(win_lr, box, lr_shape)
            for k, v in tile_out.items():
                if v is None or k.startswith(("psf", "background")):
                    continue
                if k.startswith("emitter"):
                    blend.add_map(k, v[None], win_hr, box_hr, hr_shape)
                elif k.startswith("lp"):
                    blend.add_map(k, v, win_hr, box_hr, hr_shape)
                else:  # rec
                    blend.add_map(k, v, win_lr, box, lr_shape)
            # tile weight of the global outputs: window mass inside the image
            cy0, cy1 = max(crop_lr[0], y0) - y0, min(crop_lr[1], y1) - y0
            cx0, cx1 = max(crop_lr[2], x0) - x0, min(crop_lr[3], x1) - x0
            tw = float(win_lr[cy0:cy1, cx0:cx1].sum()) if cy1 > cy0 and cx1 > cx0 else 0.0
            tw = max(tw, 1e-12)
            glob_w += tw
            for k, v in tile_out.items():
                if v is not None and k.startswith(("psf", "background")):
                    glob[k] = glob.get(k, 0.0) + tw * np.asarray(v, np.float64)

        # ---- assemble
        hr_crop = (slice(None), slice(f * crop_lr[0], f * crop_lr[1]))
        hr_crop += (slice(f * crop_lr[2], f * crop_lr[3]),)
        lr_crop = (slice(None), slice(crop_lr[0], crop_lr[1]), slice(crop_lr[2], crop_lr[3]))

        def field_(name: str, shape, crop) -> np.ndarray | None:
            if not have.get(name):
                return None
            return np.ascontiguousarray(blend.result(name, shape)[crop], dtype=np.float32)

        def glob_(name: str) -> np.ndarray | None:
            return None if not have.get(name) else (glob[name] / glob_w).astype(np.float32)

        res: dict[str, Any] = {}
        res["emitter"] = field_("emitter", hr_shape, hr_crop)[0]
        res["lp"] = field_("lp", hr_shape, hr_crop)
        res["rec"] = field_("rec", lr_shape, lr_crop)
        res["psf"] = glob_("psf")
        res["background"] = float(glob_("background"))
        for q, shape, crop in (("emitter", hr_shape, hr_crop), ("lp", hr_shape, hr_crop)):
            al, ep = field_(f"{q}_alea", shape, crop), field_(f"{q}_epi", shape, crop)
            if q == "emitter":
                al = None if al is None else al[0]
                ep = None if ep is None else ep[0]
            res.update(_stds(q, al, ep, scales[q]))
        res.update(
            _stds(
                "rec",
                field_("rec_alea", lr_shape, lr_crop),
                field_("rec_epi", lr_shape, lr_crop),
                scales["raw"],
            )
        )
        res.update(_stds("psf", glob_("psf_alea"), glob_("psf_epi"), scales["psf"]))
        bg_epi = glob_("background_epi")
        res["background_std"] = None if bg_epi is None else float(np.sqrt(max(bg_epi, 0.0)))

        if context_info["limited"]:
            _crop_to_field(res, context_info, f)
        timings["total_s"] = time.perf_counter() - t_start
        res["meta"] = {
            "context": context_info,
            "tile": plan.tile,
            "overlap": plan.overlap if plan.tiled else None,
            "blend_margin": plan.margin if plan.tiled else None,
            "requested_tile": tile,
            "requested_overlap": overlap,
            "tile_align": align,
            "tiling_exact": plan.exact,
            "receptive_radius": None if radius is None else int(radius),
            "n_tiles": n_tiles,
            "tile_boxes": [
                (
                    b[0] - plan.pad_top - context_info["pad"][0],
                    b[1] - plan.pad_top - context_info["pad"][0],
                    b[2] - plan.pad_left - context_info["pad"][2],
                    b[3] - plan.pad_left - context_info["pad"][2],
                )
                for b in plan.boxes
            ],
            "mc_samples": mc_samples,
            "mc_samples_drawn": n_draw if mc else 0,
            "ensemble_members": members,
            "mc_batch": mc_batch if mc else None,
            "seed": int(seed) if mc else None,
            "sigma_scale": scales,
            "device": str(dev),
            "hr_factor": f,
            "timings": timings,
            "patterns_source": "network" if patterns is None else "estimated",
            "pattern_estimate": None if patterns is None else patterns[1].to_dict(),
        }
        return SimPrediction(**res)
    finally:
        if modes is not None:
            modes.restore()


def _stack_patterns(model: nn.Module, x: torch.Tensor):
    """``(instrument, the stack's pattern estimate)`` for a model whose patterns come from
    its instrument (:mod:`napari_sim_uq.tasks.sim.pattern_model`), else ``None``."""
    cfg = getattr(model, "cfg", None)
    if getattr(cfg, "patterns", "network") != "estimated":
        return None
    instrument = getattr(model, "instrument", None)
    if instrument is None:
        raise InputError(
            "this model takes its light patterns from the instrument, but it carries no "
            "instrument: load it with load_sim_model from its checkpoint"
        )
    from napari_sim_uq.tasks.sim.pattern_model import stack_patterns

    return instrument, stack_patterns(instrument, x.detach().cpu().numpy())


def _tile_optics(
    patterns: tuple,
    f: int,
    box,
    plan: Any,
    context_info: dict,
    crop_lr,
    psf_size: int,
    device,
    dtype,
) -> dict:
    """The instrument's optics for the tile ``box`` (LR, padded coordinates), computed once
    per tile: the parametric patterns of the stack's estimate on the tile's HR grid (a
    cosine continues beyond the field) with their variance, the instrument's PSF and the
    tile's pixels inside the field (where the background is fitted); ``patterns`` is what
    :func:`_stack_patterns` returned."""
    from napari_sim_uq.tasks.sim.classical.patterns import parametric_patterns
    from napari_sim_uq.tasks.sim.pattern_model import instrument_psf

    instrument, est = patterns
    y0, y1, x0, x1 = box
    oy = y0 - plan.pad_top - context_info["pad"][0]
    ox = x0 - plan.pad_left - context_info["pad"][2]
    mean, std = parametric_patterns(est, f, (y1 - y0, x1 - x0), (oy, ox))
    like = torch.empty(0, device=device, dtype=dtype)
    mask = torch.zeros((y1 - y0, x1 - x0), dtype=dtype, device=device)
    mask[
        max(crop_lr[0], y0) - y0 : min(crop_lr[1], y1) - y0,
        max(crop_lr[2], x0) - x0 : min(crop_lr[3], x1) - x0,
    ] = 1
    return {
        "lp": torch.from_numpy(mean).to(like)[None],
        "lp_var": torch.from_numpy(np.square(std)).to(like)[None],
        "psf": instrument_psf(instrument, psf_size, f, like),
        "mask": mask,
    }


def _tile_result(
    stats: dict[str, RunningMoments], f: int, mc: bool, n_draw: int, fov: torch.Tensor | None
) -> dict[str, np.ndarray | None]:
    """Predictive means, aleatoric and epistemic variances of one tile (NumPy, float32)."""
    out: dict[str, np.ndarray | None] = {}
    for q in ("emitter", "lp", "psf", "background"):
        m = stats[q]
        out[q] = _to_np(m.mean)
        vs = stats.get(f"{q}_var")
        out[f"{q}_alea"] = None if vs is None else _to_np(vs.mean)
        out[f"{q}_epi"] = _to_np(m.variance().clamp_min(0)) if mc else None
    out["background_alea"] = None
    vy = stats.get("y_var")
    out["rec_alea"] = None if vy is None else _to_np(vy.mean)
    if not mc:
        out["rec"] = _to_np(stats["y"].mean)
        out["rec_epi"] = None
        return out
    # rec from the predictive means; epistemic: mean squared deviation of the sample y_t
    e, lp, psf, bg = (stats[k].mean for k in ("emitter", "lp", "psf", "background"))
    e = e[None, None] if fov is None else e[None, None] * fov
    rec = sim_forward(e, lp[None], psf[None], f, bg.reshape(1, 1, 1, 1))[0]
    ys = stats["y"]
    epi = ys.variance() + (ys.mean - rec).square()
    out["rec"] = _to_np(rec)
    out["rec_epi"] = _to_np(epi.clamp_min(0))
    if n_draw == 1:  # a single sample (model without dropout): epistemic exactly 0
        out["rec_epi"] = np.zeros_like(out["rec_epi"])
    return out


def _stds(
    name: str, alea: np.ndarray | None, epi: np.ndarray | None, scale: float
) -> dict[str, Any]:
    """``{name}_std`` (total), ``{name}_aleatoric_std``, ``{name}_epistemic_std``, scaled."""

    def sd(v: np.ndarray | None) -> np.ndarray | None:
        if v is None:
            return None
        return (np.sqrt(np.maximum(v, 0.0)) * np.float32(scale)).astype(np.float32)

    total = None
    if alea is not None or epi is not None:
        total = (alea if alea is not None else 0.0) + (epi if epi is not None else 0.0)
    return {
        f"{name}_std": sd(total),
        f"{name}_aleatoric_std": sd(alea),
        f"{name}_epistemic_std": sd(epi),
    }


def predict_sim_sync(
    model: nn.Module, frames: np.ndarray | torch.Tensor, **kwargs
) -> SimPrediction:
    """Run :func:`predict_sim` to the end and return its :class:`SimPrediction` (same
    keyword arguments)."""
    return run(predict_sim(model, frames, **kwargs))
