"""``sim-uq posterior``: the posterior of one image file, written as TIFFs, a summary PNG
and ``posterior.json``.

Files in ``out_dir``: ``map.tif``, ``posterior_mean.tif``, ``posterior_std.tif``,
``samples.tif`` (a stack), ``modes.tif`` (one plane per mode, single-tile images only),
``summary.png`` (corrupted input, MAP, mean, std, a row of samples, mode weights) and
``posterior.json`` (mode weights, chi^2 per observed pixel at each mode, noise level,
timings, the options). Everything is computed and checked before the first file is written:
a bad input writes nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["posterior_files_job", "save_posterior_figure"]

FILES = ("map", "posterior_mean", "posterior_std", "samples", "modes")


def save_posterior_figure(path: str | os.PathLike, corrupted: np.ndarray, pred, title: str = ""):
    """Two rows: corrupted input (missing pixels black), MAP, posterior mean and std; then
    up to five samples and the mode weights."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from napari_sim_uq.core.plots import save_figure

    a = pred.arrays
    fig = Figure(figsize=(15.0, 7.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 6, gridspec_kw={"wspace": 0.08, "hspace": 0.18})
    fig.subplots_adjust(left=0.01, right=0.97, bottom=0.03, top=0.9)
    finite = corrupted[np.isfinite(corrupted)]
    lo, hi = (float(v) for v in np.percentile(a["posterior_mean"], [0.5, 99.5]))
    if finite.size:
        lo = min(lo, float(np.percentile(finite, 0.5)))
    hi = hi if hi > lo else lo + 1.0
    shown = np.where(np.isfinite(corrupted), corrupted, lo)
    panels = [
        (shown, "corrupted input"),
        (a["map"], "MAP"),
        (a["posterior_mean"], "posterior mean"),
    ]
    for ax, (img, name) in zip(axes[0, :3], panels, strict=True):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(name, fontsize=10)
    im = axes[0, 3].imshow(a["posterior_std"], cmap="magma", interpolation="nearest")
    axes[0, 3].set_title("posterior std", fontsize=10)
    fig.colorbar(im, ax=axes[0, 3], shrink=0.8)
    w = pred.meta.get("mode_weights")
    ax_w = axes[0, 5]  # a column apart from the std panel's colour bar
    if w is not None:
        ax_w.bar(np.arange(len(w)), w, color="tab:blue")
        ax_w.set_ylim(0, 1)
        ax_w.set_xticks(np.arange(len(w)))
        ax_w.set_title("mode weights", fontsize=10)
    else:
        counts = np.bincount(pred.meta["modes_per_tile"])
        ax_w.bar(np.arange(len(counts)), counts, color="tab:blue")
        ax_w.set_title("tiles by number of modes", fontsize=10)
    axes[0, 4].set_axis_off()
    for ax in axes[0, :4]:
        ax.set_axis_off()
    samples = a["samples"]
    for i, ax in enumerate(axes[1]):
        ax.set_axis_off()
        if i < min(len(samples), 6):
            ax.imshow(samples[i], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(f"sample {i + 1}", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def posterior_files_job(
    input_path: Any,
    checkpoint: Any,
    out_dir: Any,
    *,
    mask: Any = None,
    noise_sigma: float | None = None,
    n_samples: int = 64,
    n_starts: int = 10,
    overlap: int = 16,
    seed: int = 0,
    device: Any = "cpu",
    overwrite: bool = False,
    **options: Any,
):
    """The ``sim-uq posterior`` job (module docstring); returns the ``posterior.json``
    document."""
    from napari_sim_uq.core.data.observed import read_2d_array
    from napari_sim_uq.core.devices import resolve_device
    from napari_sim_uq.core.events import Event
    from napari_sim_uq.core.io.results import check_out_dir, jsonable
    from napari_sim_uq.core.io.tiff_io import atomic_write, write_image
    from napari_sim_uq.tasks.vae2d.reconstruct import STAGE, load_vae_model, posterior_2d

    out = Path(out_dir)
    targets = [out / f"{k}.tif" for k in FILES] + [out / "summary.png", out / "posterior.json"]
    check_out_dir(out, targets, overwrite)
    image = read_2d_array(input_path, "input")
    mask_arr = None if mask is None else read_2d_array(mask, "mask")
    dev = resolve_device(device)
    yield Event(STAGE, 0, None, message=f"loading {Path(checkpoint).name} …")
    model, ck = load_vae_model(checkpoint, dev)
    pred = yield from posterior_2d(
        model,
        ck,
        image,
        mask=mask_arr,
        noise_sigma=noise_sigma,
        n_samples=n_samples,
        n_starts=n_starts,
        overlap=overlap,
        seed=seed,
        device=dev,
        what=f"'{input_path}'",
        **options,
    )
    corrupted = image.astype(np.float32)
    if mask_arr is not None:
        corrupted = np.where(mask_arr != 0, corrupted, np.nan)
    out.mkdir(parents=True, exist_ok=True)
    for key in FILES:
        path = out / f"{key}.tif"
        if key in pred.arrays:
            write_image(path, pred.arrays[key], name=key, overwrite=True)
        elif path.exists():
            path.unlink()  # an earlier run's modes: not of this image
    save_posterior_figure(
        out / "summary.png", corrupted, pred, title=f"{Path(input_path).name}: VAE posterior"
    )
    doc = jsonable(
        {
            **pred.meta,
            "input": str(input_path),
            "mask": None if mask is None else str(mask),
            "checkpoint": str(checkpoint),
            "files": sorted(p.name for p in targets if p.exists() or p.suffix != ".tif"),
        }
    )

    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(doc, indent=2, allow_nan=False))

    atomic_write(out / "posterior.json", write, overwrite=True)
    return doc
