"""``sim-uq inpaint``: the masked reconstruction of one image file, written as TIFFs, a PNG
of panels and ``metrics.json``.

Files in ``out_dir``: ``inpainted.tif``, ``std.tif`` (with more than one pass),
``masked_input.tif`` (NaN at missing pixels), ``panels.png`` (masked input, inpainted, std
and, when the true image is known, the truth and the error) and ``metrics.json`` (the run's
numbers: hidden pixels, mean std of the missing pixels, the leave-out check and, with
``--mask-ratio`` or ``--reference``, PSNR/SSIM and calibration of the hidden pixels, and
the biharmonic baseline's PSNR). Everything is computed and checked before the first file is
written: a bad input writes nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["inpaint_files_job", "save_inpaint_figure"]

FILES = ("inpainted", "std", "masked_input")


def save_inpaint_figure(
    path: str | os.PathLike, pred, reference: np.ndarray | None = None, title: str = ""
):
    """One row: masked input (missing pixels black), inpainted, std; with a reference also
    the truth and |inpainted - truth|."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from napari_sim_uq.core.plots import save_figure

    a = pred.arrays
    panels = 3 + (2 if reference is not None else 0)
    fig = Figure(figsize=(3.4 * panels, 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    fig.subplots_adjust(left=0.01, right=0.97, bottom=0.03, top=0.85, wspace=0.15)
    lo, hi = (float(v) for v in np.percentile(a["inpainted"], [0.5, 99.5]))
    hi = hi if hi > lo else lo + 1.0
    masked = a["masked_input"]
    grey = [
        (np.where(np.isfinite(masked), masked, lo), "masked input"),
        (a["inpainted"], "inpainted"),
    ]
    if reference is not None:
        grey.append((reference, "truth"))
    for ax, (img, name) in zip(axes, grey, strict=False):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(name, fontsize=10)
    k = len(grey)
    maps = []
    if "std" in a:
        maps.append((a["std"], "std (calibrated)"))
    if reference is not None:
        maps.append((np.abs(a["inpainted"] - reference), "|error|"))
    for ax, (img, name) in zip(axes[k:], maps, strict=False):
        im = ax.imshow(img, cmap="magma", interpolation="nearest")
        ax.set_title(name, fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.8)
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def inpaint_files_job(
    input_path: Any,
    checkpoint: Any,
    out_dir: Any,
    *,
    mask: Any = None,
    mask_ratio: float | None = None,
    reference: Any = None,
    num_samples: int = 16,
    seed: int = 0,
    device: Any = "cpu",
    overwrite: bool = False,
    **options: Any,
):
    """The ``sim-uq inpaint`` job (module docstring); returns the ``metrics.json``
    document."""
    from napari_sim_uq.core.data.observed import read_2d_array
    from napari_sim_uq.core.devices import resolve_device
    from napari_sim_uq.core.events import Event
    from napari_sim_uq.core.io.results import check_out_dir, jsonable
    from napari_sim_uq.core.io.tiff_io import atomic_write, write_image
    from napari_sim_uq.tasks.mae2d.inpaint import STAGE, inpaint_2d, load_mae_model

    out = Path(out_dir)
    targets = [out / f"{k}.tif" for k in FILES] + [out / "panels.png", out / "metrics.json"]
    check_out_dir(out, targets, overwrite)
    image = read_2d_array(input_path, "input").astype(np.float32)
    mask_arr = None if mask is None else read_2d_array(mask, "mask")
    ref = None if reference is None else read_2d_array(reference, "reference")
    dev = resolve_device(device)
    yield Event(STAGE, 0, None, message=f"loading {Path(checkpoint).name} …")
    model, ck = load_mae_model(checkpoint, dev)
    pred = yield from inpaint_2d(
        model,
        ck,
        image,
        mask=mask_arr,
        mask_ratio=mask_ratio,
        num_samples=num_samples,
        seed=seed,
        device=dev,
        reference=ref,
        what=f"'{input_path}'",
        **options,
    )
    truth = ref if ref is not None else (image if mask_ratio is not None else None)
    out.mkdir(parents=True, exist_ok=True)
    for key in FILES:
        path = out / f"{key}.tif"
        if key in pred.arrays:
            write_image(path, pred.arrays[key], name=key, overwrite=True)
        elif path.exists():
            path.unlink()  # an earlier run's std: not of this run
    save_inpaint_figure(
        out / "panels.png",
        pred,
        None if truth is None else np.asarray(truth, np.float32),
        title=f"{Path(input_path).name}: masked reconstruction ({ck.config['model']['block']})",
    )
    doc = jsonable(
        {
            **{k: v for k, v in pred.meta.items() if k != "normalization"},
            "normalization": pred.meta["normalization"],
            "input": str(input_path),
            "mask": None if mask is None else str(mask),
            "reference": None if reference is None else str(reference),
            "checkpoint": str(checkpoint),
            "files": sorted({p.name for p in targets if p.exists()} | {"metrics.json"}),
        }
    )

    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(doc, indent=2, allow_nan=False))

    atomic_write(out / "metrics.json", write, overwrite=True)
    return doc
