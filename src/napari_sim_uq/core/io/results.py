"""Writing a job's result folder: refusing to overwrite, and strict JSON values."""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

import numpy as np

from napari_sim_uq.core.errors import InputError

__all__ = ["check_out_dir", "jsonable"]


def check_out_dir(out_dir: Path, targets: list[Path], overwrite: bool) -> None:
    """Refuse a file as the folder, and existing targets without ``overwrite`` (before
    anything is written)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output folder '{out_dir}' is a file; choose a folder")
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"'{out_dir}' already holds results ({len(existing)} files, e.g. "
            f"'{existing[0]}'); not overwriting them (pass overwrite=True / --overwrite, or "
            "choose another folder); nothing was written"
        )


def jsonable(obj: Any) -> Any:
    """Plain JSON values, recursively: NumPy scalars/arrays converted, NaN and inf become
    None, paths become strings."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (numbers.Integral,)):
        return int(obj)
    if isinstance(obj, numbers.Real):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj
