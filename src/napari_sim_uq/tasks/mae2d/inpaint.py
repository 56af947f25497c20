r"""Masked reconstruction (inpainting) of a 2D image with a trained masked autoencoder, with a
per-pixel uncertainty.

:func:`inpaint_2d` (a job) takes an image whose missing pixels are given by a mask, by NaN,
or drawn at random (``mask_ratio``: that fraction of the tokens hidden, for a test on an
image whose every pixel is known) and returns the reconstruction and its std.

Steps
-----
1. **Observed pixels**: ``mask`` (1 / True = observed), the finite pixels, and, with
   ``mask_ratio``, the pixels of ``round(mask_ratio * n)`` of the ``n`` tokens of the image's
   token grid (squares of ``patch_size`` pixels from the top-left corner) chosen at random
   (``seed``). A token the model sees must be complete: a token with any missing pixel is
   hidden from the model as a whole (its observed pixels stay in ``inpainted``).
2. **Normalisation**: the checkpoint's rule fitted on the observed pixels
   (:func:`~napari_sim_uq.core.data.observed.fit_observed_normalization`).
3. **Tiles**: the model sees ``S x S`` images (its ``img_size``). The image is padded with
   hidden pixels to a multiple of the token size and at least ``S``, and cut into tiles of
   ``S`` overlapping by ``overlap`` pixels (a multiple of the token size below ``S / 2``,
   by default the largest: 12 for ``S = 32``, ``p = 4``),
   blended with raised-cosine weights (:func:`~napari_sim_uq.core.uq.predict.
   mc_tiled_predict`).
4. **Mean and stochastic passes**: the reconstruction is one deterministic pass that sees
   every visible token (dropout off). With ``num_samples > 1``, ``num_samples`` more passes
   each hide, in addition, every visible token with probability ``drop_visible`` and run
   the decoder with dropout active (MC dropout); a pixel's std is the spread of the
   predictions of the passes in which the model did not see it: every pass for a missing
   pixel (how much its prediction depends on which of the context the model happens to
   see); for an observed pixel the passes that dropped it (a leave-out prediction of a
   known value; NaN if no pass dropped it). The passes' own mean is not used for missing
   pixels: each pass sees less context, and their mean is measurably worse than the
   deterministic pass (``bench/inpaint.py``). ``augment=True`` averages the deterministic
   pass over the 8 rotations and reflections of each tile (tokens map onto tokens), which
   makes the mean equivariant to them; the stochastic passes are unchanged.
5. **Adaptation to the image** (``adapt=True``): the spread of the passes ranks pixels but
   its level varies from image to image (an image with more structure than its spread
   suggests is under-covered). The observed pixels tell by how much: their leave-out
   predictions (passes that dropped them) miss the observed values by ``ratio`` = RMS error
   / RMS spread (``meta["leave_out_check"]``). Every std of the image is multiplied by this
   ratio. On held-out images this took the 95 % coverage of a single fitted scale from
   0.995 (ZMS 0.3: most images over-covered, a few under-covered) to 0.97 (ZMS 0.86).
6. **Calibration**: the std is multiplied by the checkpoint's ``sigma_scale["mean"]``
   (fitted by ``sim-uq calibrate-mae`` on hidden pixels of held-out images, on the adapted
   std; 1 if never calibrated) and, where the checkpoint holds one, mapped by its monotone
   sigma map (per class of the predicted intensity, :mod:`.calibrate`), unless
   ``calibrated=False``.

Outputs (image units): ``inpainted`` (observed pixels kept, the mean elsewhere), ``std``
(calibrated; on observed pixels the leave-out std) and ``masked_input`` (NaN at missing
pixels). ``meta`` holds the numbers of hidden tokens and pixels, the mean std of the missing
pixels, the normalisation, timings, ``leave_out_check`` (a check without ground truth: the
RMS error of the leave-out predictions of observed pixels next to their RMS std) and, when
the true image is known (``reference``, or the input itself with ``mask_ratio``),
``metrics``: MSE/PSNR/SSIM of the missing pixels in units of the true image normalised by
its own percentiles (data range 1),
calibration of the std on them (ZMS, 95 % coverage, Spearman(std, |err|)) and, with
``baseline=True``, the PSNR of biharmonic inpainting (scikit-image) of the same pixels.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.io.outputs import OutputSpec
from napari_sim_uq.core.task import Prediction

__all__ = ["INPAINT_OUTPUTS", "inpaint_2d", "load_mae_model", "random_token_mask"]

INPAINT_OUTPUTS = (
    OutputSpec("inpainted", "inpainted", "gray", "raw", visible=True),
    OutputSpec("std", "MAE std", "magma", "raw", visible=True),
    OutputSpec("masked_input", "masked input", "gray", "raw"),
)

STAGE = "inpaint"
#: at most this many tiles per image (about 3000 x 3000 pixels with 32-pixel tiles)
MAX_TILES = 40_000


def load_mae_model(checkpoint: Any, device: Any = "cpu"):
    """``(model in eval mode, Checkpoint)`` of a masked-autoencoder checkpoint; a clear error
    for a missing, damaged or another task's checkpoint."""
    from napari_sim_uq.tasks import load_task_model
    from napari_sim_uq.tasks.mae2d.net import build_mae

    model, ck = load_task_model(checkpoint, "mae2d", build_mae, device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, ck


def random_token_mask(shape: tuple[int, int], token: int, ratio: float, seed: int) -> np.ndarray:
    """``(H, W)`` bool, True on the pixels of ``round(ratio * n)`` of the ``n`` tokens (squares
    of ``token`` pixels from the top-left corner; partial ones at the right and bottom edges
    count) chosen uniformly at random."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise InputError(f"mask_ratio must be a number in [0, 1), got {ratio!r}")
    h, w = shape
    gh, gw = -(-h // token), -(-w // token)
    n = gh * gw
    hide = np.zeros(n, bool)
    k = min(int(round(ratio * n)), n - 1)
    hide[np.random.default_rng(seed).choice(n, size=k, replace=False)] = True
    grid = hide.reshape(gh, gw)
    return np.kron(grid, np.ones((token, token), bool))[:h, :w]


def _reference(reference: Any, shape: tuple[int, int]) -> np.ndarray:
    r = np.asarray(reference, dtype=np.float64)
    while r.ndim > 2 and r.shape[0] == 1:
        r = r[0]
    if r.shape != shape:
        raise InputError(f"the reference image has shape {r.shape}, the image {shape}")
    if not np.isfinite(r).all():
        raise InputError("the reference image contains NaN or infinite values")
    return r


def inpaint_2d(
    model,
    ck,
    image: Any,
    *,
    mask: Any = None,
    mask_ratio: float | None = None,
    num_samples: int = 16,
    drop_visible: float = 0.25,
    overlap: int | None = None,
    seed: int = 0,
    device: Any = "cpu",
    calibrated: bool = True,
    adapt: bool = True,
    reference: Any = None,
    baseline: bool = False,
    what: str = "image",
    augment: bool = False,
):
    """Inpaint one image (module docstring); a job returning a
    :class:`~napari_sim_uq.core.task.Prediction`."""
    import torch

    from napari_sim_uq.core.config import check_int
    from napari_sim_uq.core.data.observed import fit_observed_normalization, observed_mask
    from napari_sim_uq.core.events import Event
    from napari_sim_uq.core.uq.calibrate import sigma_map_ratio, stored_sigma_map
    from napari_sim_uq.core.uq.predict import mc_tiled_predict
    from napari_sim_uq.tasks.mae2d.net import patchify, unpatchify

    check_int("num_samples", num_samples, 1)
    if not isinstance(augment, bool):
        raise InputError(f"augment must be True or False, got {augment!r}")
    check_int("seed", seed, 0)
    if isinstance(drop_visible, bool) or not (
        isinstance(drop_visible, (int, float)) and 0 <= drop_visible < 1
    ):
        raise InputError(f"drop_visible must be a number in [0, 1), got {drop_visible!r}")
    cfg = model.cfg
    S, p = cfg.img_size, cfg.patch_size
    if overlap is None:  # the largest multiple of the token below half a tile
        overlap = (S // 2 - 1) // p * p
    check_int("overlap", overlap, 0)
    if overlap % p or 2 * overlap >= S:
        raise InputError(
            f"overlap must be a multiple of the token size {p} below half the model's image "
            f"size {S}, got {overlap}"
        )
    t0 = time.perf_counter()
    img, observed = observed_mask(image, mask, what)
    H, W = img.shape
    if mask_ratio is not None:
        hidden = random_token_mask((H, W), p, mask_ratio, seed)
        if reference is None and mask is None and bool(np.isfinite(np.asarray(image)).all()):
            reference = img.copy()
        observed = observed & ~hidden
        if not observed.any():
            raise InputError(f"{what}: mask_ratio={mask_ratio} leaves no observed pixel")
    ref = None if reference is None else _reference(reference, (H, W))
    mode = (ck.normalization or {}).get("mode", "percentile")
    norm = fit_observed_normalization(mode, img, observed, what)
    x_n = np.where(observed, norm.apply(img.astype(np.float64)), 0.0).astype(np.float32)

    # pad (hidden pixels) to a multiple of the token and at least one model image
    hp = max(-(-H // p) * p, S)
    wp = max(-(-W // p) * p, S)
    n_tiles = math.prod(1 if n <= S else -(-(n - S) // (S - overlap)) + 1 for n in (hp, wp))
    if n_tiles > MAX_TILES:
        raise InputError(
            f"{what} is {H} x {W} pixels: {n_tiles} tiles of {S} x {S} (more than {MAX_TILES});"
            " crop a region of interest"
        )
    xp = np.zeros((2, hp, wp), np.float32)
    xp[0, :H, :W] = x_n
    xp[1, :H, :W] = observed
    dev = torch.device(device)
    model = model.to(dev)
    stochastic = num_samples > 1
    keep_p = 1.0

    def one_pass(xb):
        tok_obs = patchify(xb[:, 1:2], p).amin(-1) > 0.5  # (c, N): complete tokens
        visible = tok_obs
        if keep_p < 1.0:
            visible = tok_obs & (torch.rand(tok_obs.shape, device=xb.device) < keep_p)
        pred = model.reconstruct(xb[:, :1], visible)
        # a prediction counts where the model did not see the token (hidden or dropped)
        h = unpatchify((~visible)[..., None].expand(-1, -1, p * p).to(pred.dtype), p, S, S)
        return {"h": h, "hp": h * pred, "hp2": h * pred * pred}

    def pass_fn(xb):
        if not (augment and keep_p == 1.0):
            return {k: (v, None) for k, v in one_pass(xb).items()}
        # the deterministic pass, averaged over the 8 rotations / reflections of the tile
        # (tokens map onto tokens: square tiles of whole tokens)
        acc: dict = {}
        for k in range(4):
            for flip in (False, True):
                xt = torch.rot90(xb, k, dims=(-2, -1))
                xt = xt.flip(-1) if flip else xt
                for name, v in one_pass(xt).items():
                    v = v.flip(-1) if flip else v
                    acc[name] = acc.get(name, 0) + torch.rot90(v, -k, dims=(-2, -1)) / 8
        return {k: (v, None) for k, v in acc.items()}

    def tiled(n_passes: int):
        return mc_tiled_predict(
            pass_fn,
            xp,
            model=model,
            multiple=p,
            tile=S,
            overlap=overlap,
            mc_samples=n_passes,
            mc_batch=min(n_passes, 32),
            seed=seed,
            device=dev,
            stage=STAGE,
        )

    # the mean: one deterministic pass that sees every visible token (dropout off)
    keep_p = 1.0
    det, pmeta = yield from tiled(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_n = (det["hp"][0, :H, :W] / det["h"][0, :H, :W]).astype(np.float64)
    var_n = None
    if stochastic:
        # the spread: passes that hide extra visible tokens, with dropout
        keep_p = 1.0 - float(drop_visible)
        arrays, _ = yield from tiled(num_samples)
        with np.errstate(invalid="ignore", divide="ignore"):
            h = arrays["h"][0, :H, :W].astype(np.float64)
            loo_mean = arrays["hp"][0, :H, :W] / h
            var_n = arrays["hp2"][0, :H, :W] / h - loo_mean**2
        # a pixel hidden in every pass: the running (Welford) variance over the passes,
        # free of the rounding of E[p^2] - E[p]^2 in float32
        always = h > 1.0 - 1e-6
        var_n = np.where(always, arrays["hp_epi_var"][0, :H, :W], var_n)
        # an observed pixel: its leave-out prediction (NaN if no pass dropped it)
        mean_n = np.where(observed, loo_mean, mean_n)
    missing = ~observed
    scale = float((ck.sigma_scale or {}).get("mean", 1.0)) if calibrated else 1.0
    smap = stored_sigma_map(ck, "mean") if calibrated else None
    std_n = None
    loo = None
    if stochastic:
        # NaN: an observed pixel that no pass dropped
        spread = np.sqrt(np.maximum(var_n, 0.0))
        loo = _leave_out_check(x_n, mean_n, spread, observed, norm)
        # this image's own error ratio: how far the leave-out predictions of its observed
        # pixels are off, in units of their spread (1 when it cannot be measured)
        ratio = loo["ratio"] if loo is not None and adapt else 1.0
        std_n = scale * ratio * spread
        if smap is not None:  # the stored conditional map, on the scaled std
            std_n = std_n * sigma_map_ratio(smap, std_n, mean_n)
        std_n[missing] = np.maximum(std_n[missing], 1e-12)
    yield Event(STAGE, 1, 1, {}, "done")

    mean = norm.invert(mean_n).astype(np.float32)
    out = {
        "inpainted": np.where(observed, img, mean).astype(np.float32),
        "std": None if std_n is None else norm.invert_std(std_n).astype(np.float32),
        "masked_input": np.where(observed, img, np.nan).astype(np.float32),
    }
    meta: dict[str, Any] = {
        "task": "mae2d",
        "model": "mae2d",
        "block": cfg.block,
        "img_size": S,
        "patch_size": p,
        "num_samples": num_samples,
        "augment": bool(augment),
        "drop_visible": float(drop_visible) if stochastic else 0.0,
        "mask_ratio": mask_ratio,
        "seed": seed,
        "n_missing": int(missing.sum()),
        "fraction_missing": float(missing.mean()),
        "sigma_scale": scale,
        "sigma_map": None if smap is None else smap.to_dict()["kind"],
        "calibrated": bool(calibrated),
        "normalization": norm.to_dict(),
        "tiles": pmeta["n_tiles"],
        "overlap": overlap,
        "device": str(dev),
        "seconds": time.perf_counter() - t0,
    }
    if std_n is not None:
        meta["std_mean_missing"] = float(norm.invert_std(float(std_n[missing].mean())))
        meta["leave_out_check"] = loo
        meta["adapt"] = bool(adapt and loo is not None)
    if ref is not None and missing.any():
        meta["metrics"] = missing_pixel_metrics(
            ref, mean.astype(np.float64), out["std"], missing, mode=mode, baseline=baseline
        )
    return Prediction(arrays={k: v for k, v in out.items() if v is not None}, meta=meta)


def _leave_out_check(x_n, mean_n, spread, observed, norm) -> dict | None:
    """A check without ground truth: on observed pixels that some passes dropped, the
    predictions of those passes against the observed values: their RMS error, RMS spread
    (image units) and ``ratio`` = RMS error / RMS spread (``None`` without such pixels)."""
    sel = observed & np.isfinite(spread) & np.isfinite(mean_n)
    if not sel.any():
        return None
    err = x_n[sel] - mean_n[sel]
    rmse = float(np.sqrt(np.mean(err**2)))
    rms = float(np.sqrt(np.mean(spread[sel] ** 2)))
    if not rms > 0:
        return None
    return {
        "n_pixels": int(sel.sum()),
        "rmse": float(norm.invert_std(rmse)),
        "rms_std": float(norm.invert_std(rms)),
        "ratio": rmse / rms,
    }


def missing_pixel_metrics(
    ref: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray | None,
    missing: np.ndarray,
    *,
    mode: str = "percentile",
    baseline: bool = False,
) -> dict:
    """Quality and calibration of a reconstruction on the missing pixels, in units of the
    true image normalised by its own rule ``mode`` (data range 1: e.g. its 0.1-99.9
    percentile range), so that the numbers do not depend on what the mask left visible;
    ``baseline``: the same PSNR for biharmonic inpainting of the observed pixels."""
    from napari_sim_uq.core.data.normalization import Normalization
    from napari_sim_uq.core.uq import metrics as M

    tn = Normalization(mode).fit(ref, "the reference image")
    ref_n = tn.apply(np.asarray(ref, np.float64))
    mean_n = tn.apply(np.asarray(mean, np.float64))
    composite = np.where(missing, mean_n, ref_n)
    err = (ref_n - mean_n)[missing]
    mse = float(np.mean(err**2))
    out: dict[str, Any] = {
        "units": "the true image normalised to 0-1 by its own percentiles",
        "mse_missing": mse,
        "psnr_missing": 10 * math.log10(1.0 / mse) if mse > 0 else math.inf,
        "ssim_inpainted": M.ssim(composite, ref_n, 1.0) if min(ref_n.shape) >= 7 else None,
    }
    if std is not None:
        s = np.maximum(tn.apply_std(np.asarray(std, np.float64))[missing], 1e-12)
        out.update(
            zms_missing=M.zms(err, s),
            coverage95_missing=M.coverage(err, s, 0.95),
            spearman_missing=M.spearman(s, np.abs(err)) if err.size > 2 else None,
        )
    if baseline:
        from skimage.restoration import inpaint_biharmonic

        base = inpaint_biharmonic(np.where(missing, 0.0, ref_n), missing)
        b_mse = float(np.mean((ref_n - base)[missing] ** 2))
        out["psnr_missing_biharmonic"] = 10 * math.log10(1.0 / b_mse) if b_mse > 0 else math.inf
    return out
