r"""Calibration of the VAE posterior's std on held-out clean images (``sim-uq calibrate-vae``).

Why: the latent posterior is exact *for the model*, but the model is misspecified. A VAE
with ``K`` latents ties every pixel to a few numbers, so the observed pixels pin ``z`` down
and with it the guess inside a missing region, while the true content there is far less
predictable; and the model error is spatially correlated, so counting observed pixels as
independent overstates their evidence. Measured on held-out images with the bundled VAE:
the posterior std on masked pixels was about 3x too small (ZMS 7-15).

What: corrupted versions of held-out clean images (``P x P`` windows at random places,
normalised like their whole image, one missing box of random size and Gaussian noise of a
random level, the noise std given) go through :func:`~.reconstruct.posterior_2d`
(uncalibrated), in two passes:

1. on the first third of the windows, ``sigma_model`` is refitted so that chi^2 per
   observed pixel at the MAP is 1 on average (mean squared residual ``= chi^2 s^2``, so
   ``sigma_model^2 = mean(chi^2 s^2 - sigma_noise^2)``): the validation RMS of encoder
   reconstructions stored by training overestimates the error of a MAP fit (chi^2 was 0.8);
2. on all windows, with that ``sigma_model``, the residuals of the posterior mean against
   the clean image give one std scale per class of pixels: ``q95(|z|) / 1.96``, the scale
   that makes the central 95 % interval cover 95 % of the class (robust: the errors are
   heavy-tailed, and a ZMS-based scale was dominated by a few windows where a nucleus hides
   in a hole, over-widening the rest). ZMS before calibration is reported too.

The classes cross two things the posterior gets wrong in different directions:

- where the pixel is: observed, or missing at a distance to the nearest observed pixel in
  bins ``1-2, 3-4, 5-8, 9-16, > 16`` pixels;
- its predicted intensity: background or structure, by the (uncalibrated) posterior mean
  in normalised units below or above ``INTENSITY_THRESHOLD`` (one ``sigma_model`` for all
  pixels is too wide on background and too narrow on structures).

A class with fewer than ``min_pixels`` pixels takes the scale of the nearer distance bin
(or the pooled one), and per intensity class the missing scales are made non-decreasing
with distance (a pixel farther from the data is never more certain).

The table is stored in the checkpoint (``extra["posterior_calibration"]``, written
atomically) and applied by :func:`~.reconstruct.posterior_2d`: each pixel's samples are
stretched about their mean by its scale, so the samples, the std and the intervals stay
consistent; the MAP and the mean do not change.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.tasks.vae2d.scales import (
    DISTANCE_EDGES,
    INTENSITY_THRESHOLD,
    N_BINS,
    pixel_classes,
)

STAGE = "calibrate VAE"

__all__ = ["calibrate_vae_job", "fit_table"]


def fit_table(z2: dict[tuple[int, int], list[np.ndarray]], min_pixels: int = 200) -> dict:
    """The scale table from squared z-scores per class ``(where, level)`` (see
    :func:`pixel_classes`); ``scales[where][level]`` (module docstring). ``table`` below
    holds squared scales."""

    def squared_scale(keys) -> tuple[float, int]:
        """The squared scale of a class: ``(q95(|z|) / 1.96)^2``, and its pixel count."""
        v = [a for k in keys for a in z2.get(k, [])]
        v = np.concatenate(v) if v else np.zeros(0)
        if v.size < min_pixels:
            return math.nan, int(v.size)
        return float(np.quantile(v, 0.95) / 1.96**2), int(v.size)

    if math.isnan(squared_scale([(0, 0), (0, 1)])[0]):
        raise InputError("too few observed pixels to calibrate; use more or larger images")
    missing_keys = [(w, c) for w in range(1, N_BINS + 1) for c in (0, 1)]
    if math.isnan(squared_scale(missing_keys)[0]):
        raise InputError("too few missing pixels to calibrate; use more or larger images")
    table = np.full((N_BINS + 1, 2), math.nan)
    counts = np.zeros((N_BINS + 1, 2), int)
    for w in range(N_BINS + 1):
        pooled = squared_scale([(w, 0), (w, 1)])[0]
        for c in (0, 1):
            v, counts[w, c] = squared_scale([(w, c)])
            table[w, c] = pooled if math.isnan(v) else v
    for c in (0, 1):
        col = table[1:, c]  # missing bins: fill from the nearer bin, then the farther one
        for b in range(1, N_BINS):
            if math.isnan(col[b]):
                col[b] = col[b - 1]
        for b in range(N_BINS - 2, -1, -1):
            if math.isnan(col[b]):
                col[b] = col[b + 1]
    scales = np.sqrt(table)
    scales[1:] = np.maximum.accumulate(scales[1:], axis=0)
    return {
        "scales": scales.tolist(),
        "distance_edges": list(DISTANCE_EDGES),
        "intensity_threshold": INTENSITY_THRESHOLD,
        "zms_before": [
            [_mean_or_nan(z2.get((w, c), []), min_pixels) for c in (0, 1)]
            for w in range(N_BINS + 1)
        ],
        "pixels": counts.tolist(),
        "rows": ["observed"] + [f"missing, distance bin {b}" for b in range(N_BINS)],
        "columns": ["background", "structure"],
    }


def _mean_or_nan(parts: list[np.ndarray], min_pixels: int) -> float:
    v = np.concatenate(parts) if parts else np.zeros(0)
    return float(v.mean()) if v.size >= min_pixels else math.nan


def corrupted_windows(
    images: list[np.ndarray], n: int, patch: int, seed: int, noise=(0.02, 0.1)
) -> list[dict]:
    """``n`` corrupted windows of clean images (module docstring); each a dict with the
    ``clean`` and ``noisy`` window, ``observed``, ``sigma`` (image units) and the whole
    image's normalisation."""
    from napari_sim_uq.core.data.normalization import Normalization

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = images[i % len(images)]
        norm = Normalization("percentile").fit(img, "calibration image")
        h, w = img.shape
        y, x = rng.integers(0, h - patch + 1), rng.integers(0, w - patch + 1)
        clean = img[y : y + patch, x : x + patch].astype(np.float32)
        sigma = float(np.exp(rng.uniform(np.log(noise[0]), np.log(noise[1])))) * norm.scale
        noisy = clean + rng.normal(0, sigma, clean.shape).astype(np.float32)
        observed = np.ones(clean.shape, bool)
        bh = int(rng.integers(patch // 8, patch // 2 + 1))
        bw = int(rng.integers(patch // 8, patch // 2 + 1))
        by, bx = rng.integers(0, patch - bh + 1), rng.integers(0, patch - bw + 1)
        observed[by : by + bh, bx : bx + bw] = False
        out.append(
            {"clean": clean, "noisy": noisy, "observed": observed, "sigma": sigma, "norm": norm}
        )
    return out


def calibrate_vae_job(
    checkpoint: Any,
    data_dir: Any,
    *,
    n_windows: int = 48,
    seed: int = 0,
    device: Any = "cpu",
    **posterior_options: Any,
):
    """Fit the posterior std calibration of a VAE checkpoint on held-out clean images
    (module docstring) and store it in the checkpoint; a job returning the table."""
    from napari_sim_uq.core.config import check_int
    from napari_sim_uq.core.data.images2d import read_image_2d
    from napari_sim_uq.core.data.loaders import resolve_files
    from napari_sim_uq.core.devices import resolve_device
    from napari_sim_uq.core.events import Event, relay
    from napari_sim_uq.core.io.checkpoint import load_checkpoint
    from napari_sim_uq.tasks.vae2d.reconstruct import load_vae_model, posterior_2d

    check_int("n_windows", n_windows, 1)
    files = resolve_files(data_dir)
    dev = resolve_device(device)
    model, ck = load_vae_model(checkpoint, dev)
    P = int(model.patch)
    images = [read_image_2d(f, min_size=P) for f in files]
    windows = corrupted_windows(images, n_windows, P, seed)
    t0 = time.perf_counter()

    def posteriors(group: list[dict], what: str):
        for i, w in enumerate(group):
            pred = yield from relay(
                posterior_2d(
                    model,
                    ck,
                    w["noisy"],
                    mask=w["observed"],
                    noise_sigma=w["sigma"],
                    normalization=w["norm"],
                    seed=seed + i,
                    device=dev,
                    calibrated=False,
                    **posterior_options,
                ),
                f"{what}, window {i + 1} of {len(group)}: ",
            )
            yield Event(STAGE, i + 1, len(group), {}, f"{what}: window {i + 1} of {len(group)}")
            yield pred

    # pass 1: sigma_model such that chi^2 per observed pixel at the MAP is 1 on average
    # (the validation RMS of encoder reconstructions overestimates the error of a MAP fit):
    # mean residual^2 = chi^2 s^2 = chi^2 (sigma_noise^2 + sigma_model^2)
    first = windows[: max(1, n_windows // 3)]
    excess = []
    for item in posteriors(first, "model error"):
        if isinstance(item, Event):
            yield item
            continue
        m = item.meta
        sn2 = m["noise_sigma_normalised"] ** 2
        excess.append(
            m["chi2_per_observed_pixel_at_map"] * m["likelihood_std_normalised"] ** 2 - sn2
        )
    sigma_validation = float(ck.extra["sigma_model"])
    sigma_model = math.sqrt(max(float(np.mean(excess)), (0.1 * sigma_validation) ** 2))
    ck.extra = {**ck.extra, "sigma_model": sigma_model}

    # pass 2: the std scales, with that sigma_model
    z2: dict[tuple[int, int], list[np.ndarray]] = {}
    chi2 = []
    k = 0
    for item in posteriors(windows, "std scales"):
        if isinstance(item, Event):
            yield item
            continue
        w = windows[k]
        k += 1
        err = item.arrays["posterior_mean"] - w["clean"]
        z = (err / item.arrays["posterior_std"]) ** 2
        where, level = pixel_classes(w["observed"], w["norm"].apply(item.arrays["posterior_mean"]))
        for key in set(zip(where.ravel().tolist(), level.ravel().tolist(), strict=True)):
            z2.setdefault(key, []).append(z[(where == key[0]) & (level == key[1])])
        chi2.append(item.meta["chi2_per_observed_pixel_at_map"])
    table = fit_table(z2)
    table.update(
        {
            "n_windows": n_windows,
            "data": str(data_dir),
            "chi2_at_map_mean": float(np.mean(chi2)),
            "sigma_model": sigma_model,
            "sigma_model_validation": sigma_validation,
            "seconds": time.perf_counter() - t0,
        }
    )
    full = load_checkpoint(Path(checkpoint))
    full.extra = {
        **full.extra,
        "posterior_calibration": table,
        "sigma_model": sigma_model,
        "sigma_model_validation": sigma_validation,
    }
    full.save(Path(checkpoint), overwrite=True)
    return table
