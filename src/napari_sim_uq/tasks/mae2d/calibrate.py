"""Calibration of the masked autoencoder's std on held-out clean images (``sim-uq
calibrate-mae``).

:func:`calibrate_mae_job` hides ``mask_ratio`` of the tokens of every image (by default the
ratio the model was trained with; seeded per image), inpaints it with the model's own std
(no stored calibration applied, so calibrating twice gives the same result) and fits, over
the hidden pixels (``r`` = true - mean, normalised units):

- one factor ``s = sqrt(mean(r^2 / sigma^2))``
  (:func:`~napari_sim_uq.core.uq.calibrate.fit_sigma_scale`), stored as
  ``sigma_scale["mean"]``;
- with ``method="map-intensity"`` (the default), a monotone map of ``s * sigma`` per class
  of the predicted intensity (:class:`~napari_sim_uq.core.uq.calibrate.ClassSigmaMap`,
  ``n_classes`` equal-count classes, ``n_bins`` std bins each), or with ``method="map"`` one
  map for all pixels (:class:`~napari_sim_uq.core.uq.calibrate.SigmaMap`), stored as
  ``extra["sigma_map"]["mean"]`` and applied by
  :func:`~napari_sim_uq.tasks.mae2d.inpaint.inpaint_2d` after the scale. The same maps as
  the 2D autoencoder's ``calibrate-2d`` (shared code). A single scale left the bundled
  model's variance about 2.4 times too large on the background and 2 times too small on
  bright structures hidden in a hole (docs/benchmarks.md); ``method="scale"`` keeps the
  scale only and removes a stored map.

The checkpoint is rewritten atomically. The result holds the conditional calibration tables
(per std decile and per intensity class) before and after, on the calibration images
themselves: check held-out data with ``bench/inpaint.py``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import Event
from napari_sim_uq.core.uq.mc import image_seed

__all__ = ["calibrate_mae_job", "hidden_pixel_residuals"]

STAGE = "calibrate MAE"


def hidden_pixel_residuals(model, ck, clean: np.ndarray, **options):
    """Job: inpaint ``clean`` with ``options`` (``mask_ratio``, ``num_samples``, ``seed``,
    ...) and return ``(r, sigma, clean_n, mean_n)`` on the hidden pixels, normalised
    units."""
    from napari_sim_uq.core.data.normalization import Normalization
    from napari_sim_uq.tasks.mae2d.inpaint import inpaint_2d

    pred = yield from inpaint_2d(model, ck, clean, **options)
    if "std" not in pred.arrays:
        raise InputError("num_samples must be > 1: one pass gives no std to calibrate")
    norm = Normalization.from_dict(pred.meta["normalization"])
    missing = np.isnan(pred.arrays["masked_input"])
    clean_n = norm.apply(clean.astype(np.float64))[missing]
    mean_n = norm.apply(pred.arrays["inpainted"].astype(np.float64))[missing]
    std_n = norm.apply_std(pred.arrays["std"].astype(np.float64))[missing]
    return clean_n - mean_n, np.maximum(std_n, 1e-12), clean_n, mean_n


def calibrate_mae_job(
    checkpoint: str | os.PathLike,
    data_dir: Any,
    *,
    mask_ratio: float | None = None,
    num_samples: int = 16,
    seed: int = 0,
    device: Any = "cpu",
    max_images: int | None = None,
    method: str = "map-intensity",
    n_bins: int = 10,
    n_classes: int = 5,
):
    """Fit and store the std calibration of a masked-autoencoder checkpoint (module
    docstring); a job returning ``{"checkpoint", "n_images", "n_pixels", "mask_ratio",
    "method", "sigma_scale", "previous_sigma_scale", "sigma_map", "before", "after",
    "after_scale_only", "seconds"}``."""
    from napari_sim_uq.core.config import check_int
    from napari_sim_uq.core.data.images2d import read_image_2d
    from napari_sim_uq.core.data.loaders import resolve_files
    from napari_sim_uq.core.devices import resolve_device
    from napari_sim_uq.core.events import relay
    from napari_sim_uq.core.io.checkpoint import load_checkpoint, update_calibration
    from napari_sim_uq.core.uq.calibrate import (
        CALIBRATION_METHODS,
        conditional_calibration,
        fit_sigma_map,
        fit_sigma_scale,
        sigma_map_ratio,
    )
    from napari_sim_uq.tasks.mae2d.inpaint import load_mae_model

    if max_images is not None and (isinstance(max_images, bool) or int(max_images) < 1):
        raise InputError(f"max_images must be an integer >= 1, got {max_images!r}")
    if method not in CALIBRATION_METHODS:
        raise InputError(f"method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    check_int("n_bins", n_bins, 2)
    check_int("n_classes", n_classes, 1)
    path = Path(checkpoint)
    dev = resolve_device(str(device))
    model, ck = load_mae_model(path, dev)
    if mask_ratio is None:
        mask_ratio = float((ck.config.get("data") or {}).get("mask_ratio", 0.75))
    files = resolve_files(data_dir)[:max_images]
    t0 = time.perf_counter()
    rs, ss, cs, ms = [], [], [], []
    for i, f in enumerate(files):
        yield Event(STAGE, i, len(files), {}, f"image {i + 1}/{len(files)}: {Path(f).name}")
        clean = read_image_2d(f, min_size=model.cfg.patch_size)
        r, s, c, m = yield from relay(
            hidden_pixel_residuals(
                model,
                ck,
                clean,
                mask_ratio=mask_ratio,
                num_samples=num_samples,
                seed=image_seed(seed, i),
                device=dev,
                calibrated=False,
                what=f"'{f}'",
            ),
            f"{Path(f).name}: ",
        )
        rs.append(r)
        ss.append(s)
        cs.append(c)
        ms.append(m)
    yield Event(STAGE, len(files), len(files), {}, "done")
    r, sigma, clean = np.concatenate(rs), np.concatenate(ss), np.concatenate(cs)
    mean = np.concatenate(ms)
    scale = fit_sigma_scale(r, sigma)
    smap = fit_sigma_map(method, r, scale * sigma, mean, n_bins=n_bins, n_classes=n_classes)
    after = scale * sigma
    if smap is not None:
        after = after * sigma_map_ratio(smap, after, mean)
    previous = dict(load_checkpoint(path).sigma_scale or {})
    new = {**previous, "mean": scale}
    update_calibration(path, new, None if smap is None else {"mean": smap.to_dict()})
    return {
        "checkpoint": str(path),
        "data_dir": str(data_dir),
        "n_images": len(files),
        "n_pixels": int(r.size),
        "mask_ratio": mask_ratio,
        "num_samples": num_samples,
        "seed": seed,
        "method": method,
        "sigma_scale": new,
        "previous_sigma_scale": previous,
        "sigma_map": None if smap is None else smap.to_dict(),
        "before": conditional_calibration(r, sigma, clean),
        "after": conditional_calibration(r, after, clean),
        "after_scale_only": conditional_calibration(r, scale * sigma, clean),
        "units": "normalised (the observed pixels' percentile range to 0-1)",
        "seconds": time.perf_counter() - t0,
    }
