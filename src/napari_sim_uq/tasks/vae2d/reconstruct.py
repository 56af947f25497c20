r"""Posterior reconstruction of a corrupted 2D image with a trained VAE (DeepUQ).

:func:`posterior_2d` (a job) takes an image with missing pixels (a mask, or NaN) and/or
noise and returns the MAP image, the posterior mean and std, a stack of posterior samples
and, for an image that fits in one patch, the image of every posterior mode with its weight
(:mod:`.posterior` holds the maths).

Steps
-----
1. **Observed pixels**: ``mask`` (1 / True = observed) and the finite pixels of the image.
2. **Normalisation**: the checkpoint's rule (e.g. 0.1-99.9 percentiles to 0-1), fitted on
   the observed pixels after a Gaussian smoothing of 1 pixel (a normalised convolution that
   ignores missing pixels), so that noise does not widen the percentiles: the VAE was trained
   on clean images normalised by their own percentiles.
3. **Noise**: ``noise_sigma`` in the image's units, or estimated from the observed pixels
   (:func:`~napari_sim_uq.core.data.noise.estimate_noise_sigma`); the likelihood variance is
   ``s^2 = sigma_noise^2 + sigma_model^2`` with the checkpoint's ``sigma_model`` (the VAE's
   reconstruction error on validation images).
4. **Tiles**: the VAE models ``P x P`` patches (its training patch). A smaller image is
   padded with *unobserved* pixels (exact: the posterior simply knows nothing there); a larger
   one is cut into ``P x P`` tiles overlapping by ``overlap`` pixels, and each tile gets its
   own posterior (all tiles and starts are optimised as one batch). Tiles are blended with
   raised-cosine weights ``w``: the MAP as ``sum w MAP_t / sum w``; mean and variance as the
   moments of the ``w``-weighted mixture of the tile posteriors (so an overlap is as
   uncertain as its tiles, not less); each pixel of a *sample* comes from the one tile whose
   centre is nearest (a sample is then a valid draw at every pixel, with seams where tiles
   disagree). Per-mode images are given for single-tile images only.
5. **Samples of the clean image**: ``G(z)`` for latents drawn from the Laplace mixture, plus
   the model error ``e ~ N(0, sigma_model^2)`` conditioned on the data: on an observed pixel
   with residual ``r = x - G(z)``, ``e ~ N(k r, k sigma_noise^2)`` with
   ``k = sigma_model^2 / s^2`` (the Gaussian conditional); on a missing pixel
   ``e ~ N(0, sigma_model^2)``. The MAP gets the same conditional mean ``k r``. With
   ``model_error=False`` both are the decoder's output alone.

All outputs are in the image's units. ``meta`` holds the mode weights, the chi^2 per
observed pixel at each mode, the noise level used, the timings (optimisation, Hessians,
sampling) and ``warnings``: a self-check without ground truth, chi^2 per observed pixel at
the MAP outside ``CHI2_WARN`` (the VAE does not explain the observed pixels, or the noise
level is wrong). On held-out images like the training data it is 0.8-1.0; on nuclei of
another generator 1.7 on average (bench/posterior.py).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from napari_sim_uq.core.data.observed import fit_observed_normalization, observed_mask
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.io.outputs import OutputSpec
from napari_sim_uq.core.task import Prediction

__all__ = ["POSTERIOR_OUTPUTS", "load_vae_model", "observed_mask", "posterior_2d"]

POSTERIOR_OUTPUTS = (
    OutputSpec("map", "MAP", "gray", "raw", visible=True),
    OutputSpec("posterior_mean", "posterior mean", "gray", "raw"),
    OutputSpec("posterior_std", "posterior std", "magma", "raw", visible=True),
    OutputSpec("samples", "samples", "gray", "raw", frame_axis=True),
    OutputSpec("modes", "modes", "gray", "raw", frame_axis=True),
)

STAGE = "posterior"

#: chi^2 per observed pixel at the MAP outside this range gives a warning in ``meta``
CHI2_WARN = (0.5, 1.5)


def load_vae_model(checkpoint: Any, device: Any = "cpu"):
    """``(model in eval mode, Checkpoint)`` of a VAE checkpoint; a clear error for a
    missing, damaged or another task's checkpoint."""
    from napari_sim_uq.tasks import load_task_model
    from napari_sim_uq.tasks.vae2d.net import build_vae

    model, ck = load_task_model(checkpoint, "vae2d", build_vae, device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, ck


def _tile_plan(h: int, w: int, patch: int, overlap: int):
    from napari_sim_uq.core.uq.tiling import cell_owners, tile_starts, window_1d

    hp, wp = max(h, patch), max(w, patch)
    axes = []
    for length in (hp, wp):
        starts = tile_starts(length, patch, patch - overlap)
        spans = [(s, s + patch) for s in starts]
        owners = cell_owners(spans, length, 1)
        windows = [
            window_1d(patch, s > 0, s + patch < length, overlap if len(spans) > 1 else 0, 0)
            for s in starts
        ]
        axes.append((starts, owners, windows))
    return (hp, wp), axes


def posterior_2d(
    model,
    ck,
    image: Any,
    *,
    mask: Any = None,
    noise_sigma: float | None = None,
    n_samples: int = 64,
    n_starts: int = 10,
    seed: int = 0,
    overlap: int = 16,
    model_error: bool = True,
    adam_steps: int = 60,
    lbfgs_steps: int = 60,
    merge_tol: float = 1.0,
    tile_batch: int = 8,
    max_tiles: int = 1024,
    normalization: Any = None,
    calibrated: bool = True,
    device: Any = "cpu",
    what: str = "image",
):
    """The posterior of a corrupted image (module docstring); a job returning a
    :class:`~napari_sim_uq.core.task.Prediction` with arrays ``map``, ``posterior_mean``,
    ``posterior_std``, ``samples (n_samples, H, W)`` and, for a single-tile image, ``modes
    (M, H, W)``; ``meta`` as described there.

    ``normalization``: a fitted :class:`~napari_sim_uq.core.data.normalization.
    Normalization` (or its dict) to use instead of fitting one on this image, e.g. the one
    of the whole acquisition when ``image`` is a crop of it (the VAE was trained on whole
    images normalised by their own percentiles). ``calibrated``: apply the checkpoint's
    posterior calibration (:mod:`.calibrate`) when it has one."""
    import torch

    from napari_sim_uq.core.config import check_int
    from napari_sim_uq.core.data.noise import estimate_noise_sigma
    from napari_sim_uq.core.events import Event
    from napari_sim_uq.tasks.vae2d.posterior import find_modes, sample_mixture

    t_start = time.perf_counter()
    check_int("n_samples", n_samples, 1, 100_000)
    check_int("n_starts", n_starts, 1, 1000)
    check_int("adam_steps", adam_steps, 0)
    check_int("lbfgs_steps", lbfgs_steps, 0)
    check_int("overlap", overlap, 0)
    P = int(model.patch)
    img, observed = observed_mask(image, mask, what)
    H, W = img.shape
    if max(H, W) > P and overlap > P // 2:
        raise InputError(
            f"overlap={overlap} is too large for tiles of {P} x {P} (the VAE's patch): use at "
            f"most {P // 2}"
        )
    if normalization is None:
        mode = (ck.normalization or {}).get("mode", "percentile")
        norm = fit_observed_normalization(mode, img, observed, what)
    else:
        from napari_sim_uq.core.data.normalization import Normalization

        norm = (
            normalization
            if isinstance(normalization, Normalization)
            else Normalization.from_dict(dict(normalization))
        )
    x_n = np.where(observed, norm.apply(img), 0.0).astype(np.float32)

    sigma_model = float((ck.extra or {}).get("sigma_model", float("nan")))
    if not math.isfinite(sigma_model) or sigma_model < 0:
        raise InputError(
            "this checkpoint stores no sigma_model (the VAE's validation error); retrain it "
            "with `sim-uq train-vae` of this version"
        )
    sigma_model = sigma_model if model_error else 0.0
    estimated = noise_sigma is None
    if estimated:
        sn = estimate_noise_sigma(np.where(observed, x_n, np.nan), observed)
        if not math.isfinite(sn):
            raise InputError(
                f"{what}: too few observed 3 x 3 neighbourhoods to estimate the noise level; "
                "give the noise std (noise_sigma / --noise-sigma)"
            )
    else:
        if (
            isinstance(noise_sigma, bool)
            or not (isinstance(noise_sigma, (int, float)) and math.isfinite(noise_sigma))
            or noise_sigma < 0
        ):
            raise InputError(f"noise_sigma must be a number >= 0, got {noise_sigma!r}")
        sn = float(norm.apply_std(float(noise_sigma)))
    s2 = sn * sn + sigma_model * sigma_model
    if s2 <= 0:
        raise InputError(
            "noise_sigma is 0 and the model has no error term: the posterior is not defined; "
            "give a positive noise level"
        )

    (hp, wp), axes = _tile_plan(H, W, P, overlap)
    n_tiles = len(axes[0][0]) * len(axes[1][0])
    if n_tiles > max_tiles:
        raise InputError(
            f"{what} is {H} x {W} pixels: {n_tiles} tiles of {P} x {P} (more than "
            f"max_tiles={max_tiles}); crop a region of interest or raise max_tiles"
        )
    xp = np.zeros((hp, wp), np.float32)
    mp = np.zeros((hp, wp), bool)
    xp[:H, :W], mp[:H, :W] = x_n, observed
    boxes = [(y, x) for y in axes[0][0] for x in axes[1][0]]
    dev = torch.device(device)
    model = model.to(dev).eval()
    gen = torch.Generator().manual_seed(int(seed))

    tiles_x = torch.from_numpy(np.stack([xp[y : y + P, x : x + P] for y, x in boxes]))
    tiles_m = torch.from_numpy(np.stack([mp[y : y + P, x : x + P] for y, x in boxes])).float()
    K = model.latent_dim
    timings = {"optimisation_s": 0.0, "hessians_s": 0.0, "sampling_s": 0.0}
    fits = []
    n_chunks = -(-n_tiles // tile_batch)
    for c in range(n_chunks):
        sl = slice(c * tile_batch, min((c + 1) * tile_batch, n_tiles))
        xb, mb = tiles_x[sl].to(dev), tiles_m[sl].to(dev)
        with torch.no_grad():
            n_obs = mb.flatten(1).sum(1).clamp_min(1)
            fill = (xb * mb).flatten(1).sum(1) / n_obs
            filled = torch.where(mb > 0, xb, fill[:, None, None])
            mu, _ = model.encode(filled[:, None])
        prior = torch.randn(xb.shape[0], n_starts - 1, K, generator=gen).to(dev)
        starts = torch.cat([mu[:, None], prior], 1)
        job = find_modes(
            model.decode,
            xb,
            mb / s2,
            starts,
            adam_steps=adam_steps,
            lbfgs_steps=lbfgs_steps,
            merge_tol=merge_tol,
        )
        while True:
            try:
                stage, step, total = next(job)
            except StopIteration as stop:
                chunk_fits, chunk_t = stop.value
                break
            frac = (c + (step / max(total, 1)) * (0.85 if stage == "optimise" else 1.0)) / n_chunks
            yield Event(
                STAGE,
                int(round(1000 * frac)),
                1000,
                {},
                f"tiles {sl.start + 1}-{sl.stop} of {n_tiles}: {stage}",
            )
        fits += chunk_fits
        for k in ("optimisation_s", "hessians_s"):
            timings[k] += chunk_t[k]

    # samples, MAP and moments per tile, blended into the image
    t_sample = time.perf_counter()
    k_gain = sigma_model**2 / s2
    cond_std = math.sqrt(k_gain) * sn
    map_sum = np.zeros((hp, wp), np.float64)
    m1 = np.zeros((hp, wp), np.float64)
    m2 = np.zeros((hp, wp), np.float64)
    wsum = np.zeros((hp, wp), np.float64)
    samples = np.zeros((n_samples, hp, wp), np.float32)
    map_decoded = np.zeros((hp, wp), np.float64)
    for t, ((y, x), fit) in enumerate(zip(boxes, fits, strict=True)):
        iy, ix = axes[0][0].index(y), axes[1][0].index(x)
        win = np.outer(axes[0][2][iy], axes[1][2][ix])
        own = np.outer(axes[0][1][iy], axes[1][1][ix])
        xt, mt = tiles_x[t].to(dev), tiles_m[t].to(dev)
        z, _ = sample_mixture(fit, n_samples, gen)
        with torch.no_grad():
            g = torch.cat([model.decode(z[i : i + 64]) for i in range(0, n_samples, 64)])
            g_map = model.decode(fit.z_map[None])[0]
            eps = torch.randn(g.shape, generator=gen).to(dev)
            if sigma_model > 0:
                e_obs = k_gain * (xt - g) + cond_std * eps
                g = g + torch.where(mt > 0, e_obs, sigma_model * eps)
                g_map_c = g_map + torch.where(mt > 0, k_gain * (xt - g_map), 0.0)
            else:
                g_map_c = g_map
        g_np = g.cpu().numpy().astype(np.float64)
        mean_t, var_t = g_np.mean(0), g_np.var(0)
        ys, xs_ = slice(y, y + P), slice(x, x + P)
        map_sum[ys, xs_] += win * g_map_c.cpu().numpy()
        map_decoded[ys, xs_] += win * g_map.cpu().numpy()
        m1[ys, xs_] += win * mean_t
        m2[ys, xs_] += win * (var_t + mean_t**2)
        wsum[ys, xs_] += win
        samples[:, ys, xs_][:, own] = g_np[:, own]
        if t % 16 == 15:
            yield Event("sample", t + 1, n_tiles, {}, "posterior samples")
    table = (ck.extra or {}).get("posterior_calibration") if calibrated else None
    if table is not None:
        from napari_sim_uq.tasks.vae2d.scales import apply_calibration, pixel_scales

        mean_tmp = m1 / wsum
        scales = pixel_scales(table, mp, mean_tmp)  # the padding is missing too
        apply_calibration(samples, scales)
        # the moments of the stretched mixture: the variance about the mean scales by s^2
        m2 = wsum * (mean_tmp**2 + scales**2 * np.maximum(m2 / wsum - mean_tmp**2, 0.0))
    mean = m1 / wsum
    var = np.maximum(m2 / wsum - mean**2, 0.0)
    map_img = map_sum / wsum
    map_dec = map_decoded / wsum
    timings["sampling_s"] = time.perf_counter() - t_sample

    crop = (slice(0, H), slice(0, W))
    r = (x_n - map_dec[crop])[observed]
    chi2_map = float(np.mean(r * r) / s2)
    arrays = {
        "map": norm.invert(map_img[crop]).astype(np.float32),
        "posterior_mean": norm.invert(mean[crop]).astype(np.float32),
        "posterior_std": norm.invert_std(np.sqrt(var[crop])).astype(np.float32),
        "samples": norm.invert(samples[:, :H, :W]).astype(np.float32),
    }
    modes_meta = [f.summary() for f in fits]
    if n_tiles == 1:
        with torch.no_grad():
            g_modes = model.decode(fits[0].z).cpu().numpy()
        arrays["modes"] = norm.invert(g_modes[:, :H, :W]).astype(np.float32)
    timings["total_s"] = time.perf_counter() - t_start
    warnings = []
    if chi2_map > CHI2_WARN[1]:
        warnings.append(
            f"chi^2 per observed pixel at the MAP is {chi2_map:.2f} (about 1 when the VAE "
            "explains the data): this VAE does not represent this image well, so its "
            "posterior is not reliable; train it on images like this one"
            + ("" if estimated else ", or check the noise level")
        )
    elif chi2_map < CHI2_WARN[0]:
        warnings.append(
            f"chi^2 per observed pixel at the MAP is {chi2_map:.2f} (about 1 when the VAE "
            "explains the data): the noise level is probably overestimated"
        )
    meta = {
        "task": "vae2d",
        "n_tiles": n_tiles,
        "patch": P,
        "overlap": overlap if n_tiles > 1 else 0,
        "observed_fraction": float(observed.mean()),
        "noise_sigma": float(norm.invert_std(sn)),
        "noise_sigma_normalised": float(sn),
        "noise_sigma_estimated": bool(estimated),
        "sigma_model_normalised": float(sigma_model),
        "likelihood_std_normalised": math.sqrt(s2),
        "chi2_per_observed_pixel_at_map": chi2_map,
        "n_starts": n_starts,
        "n_samples": n_samples,
        "model_error": bool(model_error),
        "calibration": None
        if table is None
        else {k: table[k] for k in ("scales", "distance_edges", "intensity_threshold")},
        "normalization": norm.to_dict(),
        "modes": modes_meta[0] if n_tiles == 1 else None,
        "modes_per_tile": [m["n_modes"] for m in modes_meta],
        "mode_weights": modes_meta[0]["weights"] if n_tiles == 1 else None,
        "timings": timings,
        "seed": int(seed),
        "warnings": warnings,
    }
    return Prediction(arrays, meta)
