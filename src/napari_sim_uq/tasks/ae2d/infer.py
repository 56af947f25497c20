"""``sim-uq infer-2d``: reconstruct a folder of clean images after degrading them, write the
results and score them against the clean images.

:func:`infer_2d_job` (a job) takes each clean image of ``data_dir``, degrades it (seeded
per image with :func:`~napari_sim_uq.tasks.ae2d.calibrate.image_seed`; by default with the
degradation the model was trained for), reconstructs it with MC dropout
(:func:`~napari_sim_uq.tasks.ae2d.predict.predict_2d`, the checkpoint's calibration applied)
and writes into ``out_dir``, for image ``i`` (in sorted file order):

- ``sample_XXXX.png``: degraded input, clean target, mean reconstruction and the std
  heatmap (with a colour bar), in image units;
- ``sample_XXXX_<key>.tif`` for the keys of
  :data:`~napari_sim_uq.tasks.ae2d.predict.AE2D_OUTPUTS` the model gives (``mean``,
  ``std``, ``epistemic_std``, ``aleatoric_std``, ``degraded``), in the image's units, layer
  names ``"<image stem> <suffix>"`` (readable by the plugin's reader and any TIFF tool);
- ``metrics.json``: per image and pooled metrics (below) and the conditional calibration
  tables (:func:`~napari_sim_uq.core.uq.calibrate.conditional_calibration`).

Metrics are computed in normalised units: the checkpoint's per-image normalisation of the
clean image (percentile 0.1-99.9 % to 0-1 by default) applied to the clean image, the
reconstruction and the degraded input, stds divided by the same scale. PSNR and SSIM use
``data_range = 1`` in these units (:func:`~napari_sim_uq.core.uq.metrics.psnr`,
:func:`~napari_sim_uq.core.uq.metrics.ssim`, 7-pixel window); ``psnr_input`` /
``ssim_input`` score the degraded input the same way. Calibration of the residual
``r = clean - mean`` against the predicted total std: ZMS ``mean(r^2/sigma^2)``, ``cov95``
(``|r| <= 1.96 sigma``, ideal 0.95), Spearman rho(sigma, |r|), UCE (20 equal-count bins of
predicted variance, variance units). Pooled: PSNR of the MSE over all pixels of all
images, SSIM the mean over images, calibration over all pixels.

Existing outputs are never replaced unless ``overwrite=True``; that is checked before any
work, and a wrong checkpoint (e.g. a SIM model) is refused before anything is written.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from napari_sim_uq.core.events import Event
from napari_sim_uq.core.io.results import check_out_dir, jsonable

__all__ = ["infer_2d_job", "save_sample_figure"]

STAGE = "infer 2D"
_SAMPLE_RE = re.compile(r"^sample_\d{4,}(_[a-z_]+\.tif|\.png)$")


def sample_name(i: int) -> str:
    return f"sample_{i:04d}"


def _targets(out_dir: Path, n: int) -> dict[str, Path]:
    from napari_sim_uq.tasks.ae2d.predict import AE2D_OUTPUTS

    t = {"metrics": out_dir / "metrics.json"}
    for i in range(n):
        t[f"{i}:png"] = out_dir / f"{sample_name(i)}.png"
        for spec in AE2D_OUTPUTS:
            t[f"{i}:{spec.key}"] = out_dir / f"{sample_name(i)}_{spec.key}.tif"
    return t


def image_metrics(clean_n, mean_n, std_n, degraded_n) -> dict:
    """The per-image numbers of ``metrics.json`` (module docstring), normalised units."""
    from napari_sim_uq.core.uq.metrics import coverage, psnr, spearman, ssim, uce, zms

    r = clean_n - mean_n
    sp = spearman(std_n, np.abs(r))
    return {
        "psnr": psnr(mean_n, clean_n, 1.0),
        "ssim": ssim(mean_n, clean_n, 1.0),
        "psnr_input": psnr(degraded_n, clean_n, 1.0),
        "ssim_input": ssim(degraded_n, clean_n, 1.0),
        "zms": zms(r, std_n),
        "cov95": coverage(r, std_n, 0.95),
        "spearman": None if math.isnan(sp) else sp,
        "uce": uce(r, std_n, n_bins=min(20, r.size)),
        "rmse": float(np.sqrt(np.mean(r * r))),
        "mean_std": float(np.mean(std_n)),
    }


def save_sample_figure(
    path: str | os.PathLike,
    *,
    degraded: np.ndarray,
    clean: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    title: str = "",
) -> Path:
    """Four panels: degraded input, clean target, mean reconstruction (one grey scale, the
    clean image's 0.5-99.5 percentiles) and the std heatmap with a colour bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from napari_sim_uq.core.plots import save_figure

    # a fixed layout: matplotlib's constrained layout costs about a second per figure,
    # which would dominate the run time on small images
    fig = Figure(figsize=(15.0, 4.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4, gridspec_kw={"wspace": 0.08})
    fig.subplots_adjust(left=0.01, right=0.97, bottom=0.02, top=0.86)
    lo, hi = (float(v) for v in np.percentile(clean, [0.5, 99.5]))
    if hi <= lo:
        hi = lo + 1.0
    for ax, img, name in zip(
        axes[:3],
        (degraded, clean, mean),
        ("degraded input", "clean target", "mean reconstruction"),
        strict=True,
    ):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    im = axes[3].imshow(std, cmap="magma", interpolation="nearest")
    axes[3].set_title("predicted std", fontsize=10)
    axes[3].set_axis_off()
    fig.colorbar(im, ax=axes[3], shrink=0.85)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def infer_2d_job(
    data_dir: Any,
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    num_samples: int = 30,
    degrade: Any = None,
    seed: int = 0,
    overwrite: bool = False,
    device: Any = "cpu",
    max_images: int | None = None,
) -> Generator[Event, None, dict]:
    """Degrade, reconstruct, write and score the clean images of ``data_dir`` (a folder or
    a glob); see the module docstring. ``num_samples``: MC-dropout samples. ``degrade``: a
    degradation spec, or ``None`` for the checkpoint's training degradation. Returns the
    ``metrics.json`` document (with ``"files"``: the paths written)."""
    from napari_sim_uq.core.data.loaders import resolve_files
    from napari_sim_uq.core.devices import resolve_device
    from napari_sim_uq.core.io.outputs import placement
    from napari_sim_uq.core.io.tiff_io import atomic_write, write_image
    from napari_sim_uq.core.uq.calibrate import conditional_calibration
    from napari_sim_uq.core.uq.metrics import psnr
    from napari_sim_uq.tasks.ae2d.calibrate import (
        _count,
        _degradation,
        reconstruct_clean_images,
    )
    from napari_sim_uq.tasks.ae2d.predict import AE2D_OUTPUTS, load_ae2d_model

    num_samples = _count(num_samples, "num_samples", 1)
    max_images = _count(max_images, "max_images", 1, allow_none=True)
    seed = _count(seed, "seed", 0)
    out = Path(out_dir)
    files = resolve_files(data_dir)[:max_images]
    targets = _targets(out, len(files))
    check_out_dir(out, list(targets.values()), overwrite)
    dev = resolve_device(str(device))
    model, ck = load_ae2d_model(checkpoint, dev)  # a SIM checkpoint fails here: nothing written
    degradation = _degradation(ck, degrade)
    if overwrite and out.is_dir():  # results of an earlier, larger run would be mixed in
        keep = {p.name for p in targets.values()}
        for p in out.iterdir():
            if p.is_file() and _SAMPLE_RE.match(p.name) and p.name not in keep:
                p.unlink()
    t0 = time.perf_counter()
    per_image: list[dict] = []
    pooled: dict[str, list[np.ndarray]] = {"clean": [], "mean": [], "std": [], "deg": []}
    written: list[str] = []
    for item in reconstruct_clean_images(
        model,
        ck,
        files,
        mc_samples=num_samples,
        degradation=degradation,
        seed=seed,
        device=dev,
        stage=STAGE,
    ):
        if isinstance(item, Event):
            yield item
            continue
        i, path, pred = item["index"], item["file"], item["prediction"]
        std_n = np.maximum(item["std_n"], 1e-12)
        row = {"sample": sample_name(i), "file": str(path)}
        row.update(image_metrics(item["clean_n"], item["mean_n"], std_n, item["degraded_n"]))
        row["normalization"] = item["norm"].to_dict()
        per_image.append(row)
        for k, v in (
            ("clean", item["clean_n"]),
            ("mean", item["mean_n"]),
            ("std", std_n),
            ("deg", item["degraded_n"]),
        ):
            pooled[k].append(v.ravel())
        # files
        arrays = dict(pred.arrays)
        if arrays.get("degraded") is None:
            arrays["degraded"] = item["clean"]  # degrade "none": the input is the clean image
        md = {
            "sim_uq": {
                "infer_2d": {
                    "source": str(path),
                    "checkpoint": str(checkpoint),
                    "degrade": degradation.spec() if len(degradation) else "none",
                    "mc_samples": num_samples,
                    "seed": seed,
                    "normalization": item["norm"].to_dict(),
                    "units": "the source image's units",
                }
            }
        }
        for spec in AE2D_OUTPUTS:
            arr = arrays.get(spec.key)
            if arr is None:
                continue
            scale, translate, labels = placement(spec)
            written.append(
                str(
                    write_image(
                        targets[f"{i}:{spec.key}"],
                        np.asarray(arr, np.float32),
                        name=f"{path.stem} {spec.suffix}",
                        scale=scale,
                        translate=translate,
                        axis_labels=labels,
                        metadata=md,
                        display={"colormap": spec.colormap},
                        overwrite=overwrite,
                    )
                )
            )
        written.append(
            str(
                save_sample_figure(
                    targets[f"{i}:png"],
                    degraded=arrays["degraded"],
                    clean=item["clean"],
                    mean=arrays["mean"],
                    std=arrays["std"],
                    title=f"{path.name}: PSNR {row['psnr']:.2f} dB (input "
                    f"{row['psnr_input']:.2f}), SSIM {row['ssim']:.3f}, ZMS {row['zms']:.2f}, "
                    f"95% coverage {row['cov95']:.3f}",
                )
            )
        )
    clean, mean, std, deg = (np.concatenate(pooled[k]) for k in ("clean", "mean", "std", "deg"))
    cond = conditional_calibration(clean - mean, std, clean)
    pooled_doc = {
        "n_images": len(per_image),
        "n_pixels": int(clean.size),
        "psnr": psnr(mean, clean, 1.0),
        "ssim": float(np.mean([row["ssim"] for row in per_image])),
        "psnr_input": psnr(deg, clean, 1.0),
        "ssim_input": float(np.mean([row["ssim_input"] for row in per_image])),
        **{k: cond["pooled"][k] for k in ("zms", "cov95", "spearman", "uce", "rmse")},
        "mean_std": cond["pooled"]["mean_sigma"],
    }
    doc = {
        "format": "napari-sim-uq 2D inference metrics",
        "checkpoint": str(checkpoint),
        "data_dir": str(data_dir),
        "out_dir": str(out),
        "mc_samples": num_samples,
        "seed": seed,
        "degrade": degradation.spec() if len(degradation) else "none",
        "calibration": {
            "sigma_scale": float((ck.sigma_scale or {}).get("mean", 1.0)),
            "sigma_map": bool((ck.extra or {}).get("sigma_map")),
            "sigma_map_kind": ((ck.extra or {}).get("sigma_map") or {}).get("mean", {}).get("kind"),
        },
        "conventions": {
            "units": "normalised: the checkpoint's per-image normalisation of the clean image "
            "(applied to clean, mean and degraded input; stds divided by its scale)",
            "psnr_ssim": "data_range = 1 in normalised units; SSIM with a 7-pixel window; "
            "*_input: the degraded input against the clean image",
            "zms": "mean(r^2 / sigma^2), r = clean - mean, sigma = predicted total std",
            "cov95": "fraction with |r| <= 1.96 sigma (ideal 0.95)",
            "spearman": "Spearman rho between sigma and |r|",
            "uce": "sum_m |B_m|/N |MSE(B_m) - mean variance(B_m)| over 20 equal-count bins "
            "of predicted variance (variance units)",
            "pooled": "PSNR of the MSE over all pixels of all images; SSIM the mean over "
            "images; calibration metrics over all pixels",
            "conditional": "by_std_decile: equal-count deciles of sigma; by_intensity: "
            "tertiles of the clean intensity (background <= 1/3 quantile < mid <= 2/3 "
            "quantile < bright)",
        },
        "pooled": pooled_doc,
        "conditional": cond,
        "per_image": per_image,
        "seconds": time.perf_counter() - t0,
    }
    written.append(str(targets["metrics"]))
    doc["files"] = written
    doc = jsonable(doc)
    text = json.dumps(doc, indent=2, allow_nan=False)
    atomic_write(targets["metrics"], lambda tmp: Path(tmp).write_text(text), overwrite=overwrite)
    return doc
