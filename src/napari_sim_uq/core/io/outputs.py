"""Output tables: how a task's results are named, placed and shown, written once.

A task's result is a dict of arrays. Its *output table* (a tuple of :class:`OutputSpec`) says
for each array the file suffix, the layer name suffix, the colormap, the pixel grid it lies on
and whether it has a frame axis. Both the file writer (``<name>_<key>.tif``) and the napari
layer builder (``"<source> <suffix>"``) read the same table through :func:`placement`, so
files and layers always agree (DESIGN.md 1 and 3). No napari or Qt here.

Grids (DESIGN.md 3):

- ``"raw"``: the input's pixels (scale/translate of the source);
- ``"hr"``: ``hr_factor`` times finer, overlaying the raw pixels exactly
  (:func:`hr_scale_translate`);
- ``"own"``: an array with its own pixel grid at the origin (e.g. a PSF), not aligned
  with the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRIDS = ("raw", "hr", "own")


@dataclass(frozen=True)
class OutputSpec:
    """One row of an output table."""

    key: str  # key in the result's arrays; files are named "<name>_<key>.tif"
    suffix: str  # layers are named "<source> <suffix>"
    colormap: str
    grid: str  # one of GRIDS
    frame_axis: bool = False  # a frame axis (e.g. A*P) before the spatial axes
    visible: bool = False  # shown when first added

    def __post_init__(self) -> None:
        if self.grid not in GRIDS:
            raise ValueError(f"grid must be one of {GRIDS}, got {self.grid!r}")


def hr_scale_translate(scale_lr, translate_lr, hr_factor: int):
    """Scale and translate of an HR layer that overlays an LR layer exactly (DESIGN.md 3):
    ``scale_hr = scale_lr / f``, ``translate_hr = translate_lr - scale_lr (1 - 1/f) / 2``."""
    scale_lr = np.asarray(scale_lr, dtype=float)
    translate_lr = np.asarray(translate_lr, dtype=float)
    scale = scale_lr / hr_factor
    translate = translate_lr - scale_lr * (1 - 1 / hr_factor) / 2
    return tuple(scale.tolist()), tuple(translate.tolist())


def placement(
    spec: OutputSpec,
    scale_lr=(1.0, 1.0),
    translate_lr=(0.0, 0.0),
    *,
    hr_factor: int = 1,
    lead_scale: tuple[float, ...] = (),
    lead_translate: tuple[float, ...] = (),
    lead_labels: tuple[str, ...] = (),
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[str, ...]]:
    """``(scale, translate, axis_labels)`` of output ``spec`` for a source whose spatial
    pixels have ``scale_lr``/``translate_lr``; ``lead_*`` describe leading axes (a time
    axis) that come before the frame axis."""
    if spec.grid == "hr":
        sc, tr = hr_scale_translate(scale_lr, translate_lr, hr_factor)
    elif spec.grid == "raw":
        sc, tr = tuple(float(s) for s in scale_lr), tuple(float(t) for t in translate_lr)
    else:
        sc, tr = (1.0, 1.0), (0.0, 0.0)
    frame = spec.frame_axis
    scale = tuple(lead_scale) + ((1.0,) if frame else ()) + tuple(sc)
    translate = tuple(lead_translate) + ((0.0,) if frame else ()) + tuple(tr)
    labels = tuple(lead_labels) + (("frame",) if frame else ()) + ("y", "x")
    return scale, translate, labels
