"""Recalibration of a 2D autoencoder's predicted std on held-out clean images.

:func:`calibrate_2d_job` (a job) takes each clean image of a calibration folder, normalises
it with the checkpoint's rule, degrades it (seeded per image; by default with the
degradation the model was trained for), reconstructs it with MC dropout
(:func:`~napari_sim_uq.tasks.ae2d.predict.predict_2d`) and collects, in normalised units,
the residual ``r = clean - mean`` and the model's own total std (no stored calibration
applied, so calibrating twice gives the same result). It then fits

- ``method="scale"``: one factor ``s = sqrt(mean(r^2 / sigma^2))``
  (:func:`~napari_sim_uq.core.uq.calibrate.fit_sigma_scale`), stored as
  ``sigma_scale["mean"]``;
- ``method="map"``: that factor and, on ``s * sigma``, a monotone per-quantile map
  (:class:`~napari_sim_uq.core.uq.calibrate.SigmaMap`) stored in ``extra["sigma_map"]
  ["mean"]``; :func:`~napari_sim_uq.tasks.ae2d.predict.predict_2d` applies it after the
  scale. One scale fixes the average only; the map also fixes a std that is too wide for
  small and too narrow for large predicted stds.
- ``method="map-intensity"``: that factor and one such map per class of the *predicted*
  intensity (``n_classes`` equal-count classes, normalised units;
  :class:`~napari_sim_uq.core.uq.calibrate.ClassSigmaMap`), for models whose std is about
  the same on the background and on dim structures while their errors are not (the map
  sees only what is known at prediction time).

The checkpoint is rewritten atomically (temporary file + rename: an interrupted write
leaves the old file). ``method="scale"`` removes a map stored by an earlier ``"map"`` run.
The result holds the conditional calibration tables
(:func:`~napari_sim_uq.core.uq.calibrate.conditional_calibration`) before (the model's own
std) and after (the stored calibration), on the calibration images themselves (in-sample:
check on held-out data with :func:`~napari_sim_uq.tasks.ae2d.infer.infer_2d_job`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import Event
from napari_sim_uq.core.uq.calibrate import CALIBRATION_METHODS
from napari_sim_uq.core.uq.mc import image_seed

__all__ = ["METHODS", "calibrate_2d_job", "image_seed", "reconstruct_clean_images"]

METHODS = CALIBRATION_METHODS
STAGE = "calibrate 2D"
#: At most this many pixels of each image enter the calibration fit (a seeded random
#: subset of larger images; bounds memory on big calibration sets).
MAX_PIXELS_PER_IMAGE = 1 << 18


def _count(v: Any, name: str, minimum: int, allow_none: bool = False) -> int | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _degradation(ck, degrade: Any):
    """The degradation to apply: ``degrade`` or, if ``None``, the checkpoint's training one."""
    from napari_sim_uq.core.data.degrade import parse_degradations

    if degrade is None:
        degrade = (ck.config.get("data") or {}).get("degrade")
    return parse_degradations(degrade)


def uncalibrated(ck):
    """A copy of the checkpoint ``ck`` without its sigma-scale and sigma map (the model's
    own std), everything else shared."""
    extra = {k: v for k, v in (ck.extra or {}).items() if k != "sigma_map"}
    return dataclasses.replace(ck, sigma_scale={}, extra=extra)


def reconstruct_clean_images(
    model,
    ck,
    files: list[Path],
    *,
    mc_samples: int,
    degradation,
    seed: int,
    device: Any,
    stage: str,
) -> Generator[Event, None, None]:
    """For each clean image file: normalise, degrade (seed :func:`image_seed`), reconstruct.

    A generator of progress :class:`Event` s and, after each image, a ``dict`` with
    ``file``, ``index``, ``clean`` (image units), ``norm`` (its Normalization), ``clean_n``,
    ``degraded_n``, ``mean_n``, ``std_n`` (normalised units, float64), ``prediction`` (the
    :class:`~napari_sim_uq.core.task.Prediction`, image units). Callers tell the two apart
    by type.
    """
    from napari_sim_uq.core.data.images2d import read_image_2d
    from napari_sim_uq.core.data.normalization import Normalization
    from napari_sim_uq.core.events import relay
    from napari_sim_uq.tasks.ae2d.predict import predict_2d

    spec = None if len(degradation) == 0 else degradation
    for i, path in enumerate(files):
        yield Event(stage, i, len(files), {}, f"image {i + 1}/{len(files)}: {Path(path).name}")
        clean = read_image_2d(path, min_size=model.min_size)
        s = image_seed(seed, i)
        pred = yield from relay(
            predict_2d(
                model,
                ck,
                clean,
                mc_samples=mc_samples,
                seed=s,
                device=device,
                degrade=spec,
                degrade_seed=s,
                what=f"'{path}'",
            ),
            f"{Path(path).name}: ",
        )
        if pred.arrays.get("std") is None:
            raise InputError(
                "this model predicts no std with mc_samples=1: use a model with a variance "
                "head (--model hetero, or mc-dropout with its aleatoric head) or mc_samples > 1"
            )
        norm = Normalization.from_dict(pred.meta["normalization"])
        as64 = np.float64
        degraded = pred.arrays.get("degraded")
        yield {
            "file": Path(path),
            "index": i,
            "clean": clean,
            "norm": norm,
            "clean_n": norm.apply(clean.astype(as64)),
            "degraded_n": norm.apply((clean if degraded is None else degraded).astype(as64)),
            "mean_n": norm.apply(pred.arrays["mean"].astype(as64)),
            "std_n": norm.apply_std(pred.arrays["std"].astype(as64)),
            "prediction": pred,
        }
    yield Event(stage, len(files), len(files), {}, "done")


def calibrate_2d_job(
    checkpoint: str | os.PathLike,
    data_dir: Any,
    *,
    mc_samples: int = 30,
    degrade: Any = None,
    seed: int = 0,
    method: str = "scale",
    device: Any = "cpu",
    n_bins: int = 10,
    n_classes: int = 5,
    max_images: int | None = None,
) -> Generator[Event, None, dict]:
    """Fit the std calibration of a 2D checkpoint on the clean images in ``data_dir`` (a
    folder or a glob) and store it in the checkpoint (module docstring).

    ``degrade``: a degradation spec, or ``None`` for the one the model was trained with
    (``"none"``: reconstruct the clean images themselves). ``method``: ``"scale"``,
    ``"map"`` or ``"map-intensity"`` (``n_bins`` equal-count bins of sigma per map;
    ``n_classes`` classes of the predicted intensity).
    ``max_images``: use only the first N.

    Returns ``{"checkpoint", "data_dir", "n_images", "n_pixels", "mc_samples", "degrade",
    "method", "sigma_scale", "previous_sigma_scale", "sigma_map", "before", "after",
    "after_scale_only", "seconds"}``: ``before`` / ``after`` are conditional calibration
    tables (normalised units) with the model's own std and with the fitted calibration.
    """
    from napari_sim_uq.core.data.loaders import resolve_files
    from napari_sim_uq.core.devices import resolve_device
    from napari_sim_uq.core.io.checkpoint import load_checkpoint, update_calibration
    from napari_sim_uq.core.uq.calibrate import (
        conditional_calibration,
        fit_sigma_map,
        fit_sigma_scale,
        sigma_map_ratio,
    )
    from napari_sim_uq.tasks.ae2d.predict import load_ae2d_model

    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    mc_samples = _count(mc_samples, "mc_samples", 1)
    n_bins = _count(n_bins, "n_bins", 2)
    n_classes = _count(n_classes, "n_classes", 1)
    max_images = _count(max_images, "max_images", 1, allow_none=True)
    seed = _count(seed, "seed", 0)
    path = Path(checkpoint)
    dev = resolve_device(str(device))
    model, ck = load_ae2d_model(path, dev)
    degradation = _degradation(ck, degrade)
    files = resolve_files(data_dir)[:max_images]
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    rs, ss, cs, ms = [], [], [], []
    for item in reconstruct_clean_images(
        model,
        uncalibrated(ck),
        files,
        mc_samples=mc_samples,
        degradation=degradation,
        seed=seed,
        device=dev,
        stage=STAGE,
    ):
        if isinstance(item, Event):
            yield item
            continue
        r = (item["clean_n"] - item["mean_n"]).ravel()
        s = item["std_n"].ravel()
        c = item["clean_n"].ravel()
        m = item["mean_n"].ravel()
        if r.size > MAX_PIXELS_PER_IMAGE:
            keep = np.sort(rng.choice(r.size, MAX_PIXELS_PER_IMAGE, replace=False))
            r, s, c, m = r[keep], s[keep], c[keep], m[keep]
        rs.append(r)
        ss.append(np.maximum(s, 1e-12))
        cs.append(c)
        ms.append(m)
    r, sigma, clean = np.concatenate(rs), np.concatenate(ss), np.concatenate(cs)
    mean = np.concatenate(ms)
    scale = fit_sigma_scale(r, sigma)
    smap = fit_sigma_map(method, r, scale * sigma, mean, n_bins=n_bins, n_classes=n_classes)
    after_sigma = scale * sigma
    if smap is not None:
        after_sigma = after_sigma * sigma_map_ratio(smap, after_sigma, mean)

    # store (atomically), keeping everything else in the file
    previous = dict(load_checkpoint(path).sigma_scale or {})
    new_scales = {**previous, "mean": scale}
    update_calibration(path, new_scales, None if smap is None else {"mean": smap.to_dict()})

    return {
        "checkpoint": str(path),
        "data_dir": str(data_dir),
        "n_images": len(files),
        "n_pixels": int(r.size),
        "mc_samples": mc_samples,
        "seed": seed,
        "degrade": degradation.spec() if len(degradation) else "none",
        "method": method,
        "sigma_scale": new_scales,
        "previous_sigma_scale": previous,
        "sigma_map": None if smap is None else smap.to_dict(),
        "before": conditional_calibration(r, sigma, clean),
        "after": conditional_calibration(r, after_sigma, clean),
        "after_scale_only": conditional_calibration(r, scale * sigma, clean)
        if smap is not None
        else None,
        "units": "normalised (the checkpoint's per-image normalisation of the clean image)",
        "seconds": time.perf_counter() - t0,
    }
