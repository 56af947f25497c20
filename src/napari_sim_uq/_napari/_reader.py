"""npe2 reader: TIFF SIM stacks, SIM time series and 2D TIFF/PNG images."""

from __future__ import annotations

import os
from pathlib import Path

from napari_sim_uq.core.io.tiff_io import READ_SUFFIXES, ImageRecord, read_image


def _record_to_layer(rec: ImageRecord) -> tuple:
    kwargs = rec.layer_kwargs()
    if rec.unit:
        kwargs["units"] = ("pixel",) * (rec.data.ndim - 2) + (rec.unit, rec.unit)
    kwargs.setdefault("colormap", "gray")
    return (rec.data, kwargs, "image")


def napari_get_reader(path):
    """Return a reader for ``path`` if it is a file type this plugin reads, else None.

    The returned reader raises a clear ``InputError`` naming the file and the problem;
    napari shows it. A file that exists but cannot be read (empty, truncated or corrupt,
    colour, NaN values, an implausibly large declared size, an unsupported stack shape)
    always gives its subclass ``FileFormatError``, never a raw error from the decoders.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        return None
    for p in paths:
        if not isinstance(p, (str, os.PathLike)) or Path(p).suffix.lower() not in READ_SUFFIXES:
            return None
        if Path(p).is_dir():
            return None
    return read_layers


def read_layers(path) -> list[tuple]:
    """Read one path or a list of paths into napari layer data tuples."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    return [_record_to_layer(read_image(p)) for p in paths]
