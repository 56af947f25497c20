"""Training data from in-memory arrays (say, the data of open napari image layers).

:func:`write_training_arrays` writes a raw SIM stack (or time series) and, optionally, its
ground-truth emitter in the generator's folder layout (``D/{split}/NAME.tif``,
``D/{split}_gt/NAME.tif``), so that :class:`~napari_sim_uq.tasks.sim.dataset.SimStackDataset`
and :func:`~napari_sim_uq.tasks.sim.train.train_sim_job` read them like any dataset,
and the checkpoint's ``train_glob`` names files that still exist after the viewer closed.
Without light-pattern files, supervised training fits the emitter ground truth only.
No Qt, no napari.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.io.tiff_io import write_image
from napari_sim_uq.tasks.sim.dataset import frames_from_array
from napari_sim_uq.tasks.sim.synth import split_dirs

__all__ = ["safe_stem", "write_training_arrays"]


def safe_stem(name: str) -> str:
    """A file name stem from a layer name (letters, digits, ``_`` and ``-`` only)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", str(name)).strip("_")
    return stem or "layer"


def write_training_arrays(
    out_dir: str | os.PathLike,
    raw: Any,
    *,
    emitter: Any = None,
    name: str = "layer",
    angles: int | None = None,
    phases: int | None = None,
    expected_frames: int | None = None,
    split: str = "train",
) -> dict:
    """Write ``raw`` (and ``emitter``) as ``out_dir/{split}/NAME.tif`` (``{split}_gt/``).

    ``raw``: ``(A*P, H, W)``, ``(A, P, H, W)`` or a time series ``(T, A*P, H, W)`` (one
    training item per time point). ``emitter``: ``(fH, fW)`` or ``(T, fH, fW)`` on a grid
    an integer ``f`` times finer than the raw frames. Files of the same name are replaced.
    Returns ``{"train_glob": path of the raw file, "n_items": T, "hr_factor": f or None,
    "files": [...]}``; errors are :class:`~napari_sim_uq.core.errors.InputError`.
    """
    what = f"'{name}'"
    frames, layout = frames_from_array(
        raw, angles, phases, expected_frames=expected_frames, what=what
    )
    n_t, _, h, w = frames.shape
    dirs = split_dirs(Path(out_dir), split)
    stem = safe_stem(name)
    md = {"sim_uq": {"layout": {"kind": "sim", "angles": layout.angles, "phases": layout.phases}}}
    _mkdirs(dirs["raw"])
    raw_path = write_image(
        dirs["raw"] / f"{stem}.tif",
        frames[0] if n_t == 1 else frames,
        name=str(name),
        metadata=md,
        overwrite=True,
    )
    files = [str(raw_path)]
    f = None
    gt_path = dirs["gt"] / f"{stem}.tif"
    if emitter is not None:
        e = np.asarray(emitter, dtype=np.float32)
        if e.ndim == 3 and e.shape[0] == 1:
            e = e[0]
        if e.ndim not in (2, 3) or (e.ndim == 3 and e.shape[0] != n_t):
            raise InputError(
                f"ground truth for {what}: expected an emitter image (fH, fW)"
                + (f" or one per time point ({n_t}, fH, fW)" if n_t > 1 else "")
                + f", got shape {e.shape}"
            )
        fh, fw = e.shape[-2:]
        if fh % h or fw % w or fh // h != fw // w:
            raise InputError(
                f"ground truth for {what}: the emitter is {fh} x {fw}, which is not the same "
                f"integer multiple f of the raw frames ({h} x {w}); it must be (f*{h}, f*{w})"
            )
        f = fh // h
        if not np.all(np.isfinite(e)):
            raise InputError(f"ground truth for {what}: the emitter has NaN or inf values")
        _mkdirs(dirs["gt"])
        files.append(str(write_image(gt_path, e, name=f"{name} GT emitter", overwrite=True)))
    elif gt_path.exists():
        gt_path.unlink()  # a stale ground truth from an earlier run must not pair up
    return {"train_glob": str(raw_path), "n_items": int(n_t), "hr_factor": f, "files": files}


def _mkdirs(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise InputError(f"'{path}' is a file; choose another folder")
    path.mkdir(parents=True, exist_ok=True)
