"""npe2 writers: one image layer to a TIFF file, several image layers to a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.io.tiff_io import TIFF_SUFFIXES, write_image

_DISPLAY_KEYS = ("colormap", "contrast_limits", "blending", "opacity", "visible")


def _write_layer(path: Path, data: Any, meta: dict, *, overwrite: bool) -> Path:
    display = {k: meta[k] for k in _DISPLAY_KEYS if k in meta}
    if isinstance(display.get("colormap"), dict):  # napari may pass a colormap as a dict
        display["colormap"] = display["colormap"].get("name", "gray")
    elif display.get("colormap") is not None and not isinstance(display["colormap"], str):
        display["colormap"] = getattr(display["colormap"], "name", "gray")
    units = meta.get("units")
    unit = None
    if units is not None and len(units) >= 1:
        last = str(units[-1])
        unit = None if last in ("pixel", "pixels", "") else last
    if meta.get("multiscale"):
        raise InputError(f"'{path}': multiscale layers cannot be written; save one level")
    return write_image(
        path,
        data,
        name=meta.get("name"),
        scale=meta.get("scale"),
        translate=meta.get("translate"),
        axis_labels=meta.get("axis_labels"),
        metadata=meta.get("metadata") or {},
        unit=unit,
        display=display,
        overwrite=overwrite,
    )


def write_single_image(path: str, data: Any, meta: dict) -> list[str]:
    """Write one image layer to ``path`` (.tif/.tiff).

    napari asks before replacing an existing file in its save dialog, so a call through
    napari is taken as the intent to overwrite. The write is atomic: if it fails, an
    existing file stays as it was.
    """
    p = Path(path)
    if p.suffix.lower() not in TIFF_SUFFIXES:
        p = p.with_suffix(".tif")
    return [str(_write_layer(p, data, meta, overwrite=True))]


def _safe_name(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name.strip())
    return keep.strip("._") or "layer"


def write_image_layers(path: str, layer_data: list[tuple]) -> list[str]:
    """Write several image layers into the folder ``path``, one ``<layer name>.tif`` each.

    Refuses (before writing anything) if any of those files already exists, so that
    saving never replaces earlier results silently.
    """
    folder = Path(path)
    if folder.suffix.lower() in TIFF_SUFFIXES:
        folder = folder.with_suffix("")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"'{folder}' is a file; choose a folder name to save several layers")
    targets = []
    for _data, meta, _ in layer_data:
        target = folder / f"{_safe_name(str(meta.get('name', 'layer')))}.tif"
        if target in targets:
            raise InputError(f"two layers would both be saved as '{target.name}'; rename one")
        targets.append(target)
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise FileExistsError(
            f"not saving: these files already exist in '{folder}': {', '.join(existing)}"
        )
    return [
        str(_write_layer(t, data, meta, overwrite=False))
        for t, (data, meta, _) in zip(targets, layer_data, strict=True)
    ]
