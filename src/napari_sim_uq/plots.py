"""Static figures (PNG) for the CLI, training debug folders and reports; no Qt, no pyplot.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas directly, never
through ``matplotlib.pyplot``: no global figure state, safe from worker threads and
headless machines, and nothing here touches the backend napari uses. matplotlib is
imported lazily (``import napari_sim_uq`` stays cheap).

Every ``save_*`` function writes atomically (temporary file, then rename) and returns the
path written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "new_figure",
    "plot_calibration_curve",
    "save_calibration_curves",
    "save_figure",
]


def new_figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] | None = None):
    """A ``(Figure, axes)`` pair on the Agg canvas (``axes`` squeezed like ``subplots``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if size is None:
        size = (4.0 * ncols, 3.4 * nrows)
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=True)
    return fig, axes


def save_figure(fig: Any, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def plot_calibration_curve(ax: Any, curve: Mapping[str, Any], *, label: str | None = None):
    """Draw one calibration curve (output of :func:`napari_sim_uq.uq.metrics.
    calibration_curve`): empirical MSE against mean predicted variance per bin, log-log,
    with the ideal ``y = x`` line."""
    mv = np.asarray(curve["mean_variance"], dtype=float)
    err = np.asarray(curve["mse"], dtype=float)
    ok = np.isfinite(mv) & np.isfinite(err) & (mv > 0) & (err > 0)
    ax.loglog(mv[ok], err[ok], "o-", ms=3, label=label)
    if ok.any():
        lo = min(mv[ok].min(), err[ok].min())
        hi = max(mv[ok].max(), err[ok].max())
        ax.loglog([lo, hi], [lo, hi], "k--", lw=0.8, label="ideal" if label else None)
    ax.set_xlabel("mean predicted variance")
    ax.set_ylabel("empirical MSE")
    ax.grid(True, which="both", alpha=0.3)
    if label:
        ax.legend(fontsize=8)
    return ax


def save_calibration_curves(
    curves: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    titles: Sequence[str] | None = None,
) -> Path:
    """One panel per named calibration curve (e.g. ``{"emitter": ..., "raw": ...}``)."""
    names = list(curves)
    fig, axes = new_figure(1, max(len(names), 1))
    axes = np.atleast_1d(axes)
    for i, name in enumerate(names):
        plot_calibration_curve(axes[i], curves[name])
        axes[i].set_title(titles[i] if titles else name)
    return save_figure(fig, path)
