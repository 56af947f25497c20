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
    "plot_metrics_csv",
    "read_metrics_csv",
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
    """Write ``fig`` as PNG to ``path`` atomically (parents created; an existing file is
    replaced)."""
    from napari_sim_uq.core.io.tiff_io import atomic_write

    return atomic_write(
        Path(path), lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"), overwrite=True
    )


def plot_calibration_curve(ax: Any, curve: Mapping[str, Any], *, label: str | None = None):
    """Draw one calibration curve (output of :func:`napari_sim_uq.core.uq.metrics.
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
    conditional: Mapping[str, Any] | None = None,
    conditional_title: str = "",
) -> Path:
    """One panel per named calibration curve (e.g. ``{"emitter": ..., "raw": ...}``), and
    with ``conditional`` (a table with ``by_std_decile`` and ``by_intensity``, as written by
    :func:`~napari_sim_uq.core.uq.calibrate.conditional_calibration`) one more panel of
    its ZMS per std decile and per intensity class (:func:`plot_conditional_zms`)."""
    names = list(curves)
    extra = 1 if conditional else 0
    fig, axes = new_figure(1, max(len(names) + extra, 1))
    axes = np.atleast_1d(axes)
    for i, name in enumerate(names):
        plot_calibration_curve(axes[i], curves[name])
        axes[i].set_title(titles[i] if titles else name)
    if conditional:
        plot_conditional_zms(axes[len(names)], conditional, title=conditional_title)
    return save_figure(fig, path)


def plot_conditional_zms(ax, table: Mapping[str, Any], *, title: str = "") -> None:
    """Bars of the ZMS per std decile (``d1`` .. ``d10``) and per intensity class (log
    scale; ideal 1, dashed; the band 0.67-1.5 shaded)."""
    labels, values = [], []
    for row in table.get("by_std_decile") or []:
        labels.append(f"d{row['decile']}")
        values.append(row["zms"])
    for name, cell in (table.get("by_intensity") or {}).items():
        labels.append(name)
        values.append(cell.get("zms"))
    x = np.arange(len(labels))
    vals = np.array([np.nan if v is None else float(v) for v in values])
    n_dec = len(table.get("by_std_decile") or [])
    colors = ["#4c72b0"] * n_dec + ["#dd8452"] * (len(labels) - n_dec)
    ax.bar(x, np.where(np.isfinite(vals), vals, 0.0), color=colors)
    ax.axhspan(0.67, 1.5, color="0.85", zorder=0)
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("ZMS = mean(r²/σ²)")
    ax.set_title(title or "ZMS per std decile (blue) and intensity class (orange)", fontsize=9)


# --------------------------------------------------------------------------- metrics.csv

_LOSS_TERMS = ("raw_nll", "sup_emitter_nll", "sup_emitter_mse", "sup_lp_nll", "sup_lp_mse", "aux")
_STD_TERMS = ("emitter_std", "lp_std", "psf_std")


def read_metrics_csv(csv_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The columns of a ``metrics.csv`` written by training, as float arrays (empty cells,
    e.g. columns added by a resumed run, are NaN), sorted by ``epoch``.

    Raises :class:`~napari_sim_uq.core.errors.InputError` for a missing, empty or malformed file.
    """
    import csv

    from napari_sim_uq.core.errors import InputError

    path = Path(csv_path)
    if not path.exists():
        raise InputError(f"'{path}': no such file (expected the metrics.csv of a training run)")
    if not path.is_file():
        raise InputError(f"'{path}' is not a file (expected the metrics.csv of a training run)")
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"'{path}': not a readable CSV file ({err})") from None
    if not header:
        raise InputError(f"'{path}' is empty: no training epoch has finished yet")
    if "epoch" not in header:
        raise InputError(
            f"'{path}' has no 'epoch' column (columns: {', '.join(header)}): not a metrics.csv "
            "written by sim-uq train"
        )
    if not rows:
        raise InputError(f"'{path}' has a header but no rows: no training epoch has finished yet")
    cols: dict[str, list[float]] = {k: [] for k in header}
    for n, row in enumerate(rows, start=2):
        if None in row:
            raise InputError(f"'{path}' line {n}: more values than columns")
        for k in header:
            v = row[k]
            if v is None:
                raise InputError(f"'{path}' line {n}: fewer values than columns")
            if v.strip() == "":
                cols[k].append(float("nan"))
                continue
            try:
                cols[k].append(float(v))
            except ValueError:
                raise InputError(
                    f"'{path}' line {n}, column '{k}': {v!r} is not a number"
                ) from None
    out = {k: np.asarray(v, dtype=float) for k, v in cols.items()}
    if not np.isfinite(out["epoch"]).all():
        raise InputError(f"'{path}': the 'epoch' column has empty or non-finite values")
    order = np.argsort(out["epoch"], kind="stable")
    return {k: v[order] for k, v in out.items()}


def _metric_curves(ax: Any, m: Mapping[str, np.ndarray], names: Sequence[str], title: str):
    """Plot ``train_<name>`` (solid) and ``val_<name>`` (dashed) against the epoch; returns
    whether anything was drawn (otherwise the panel says so)."""
    ep = m["epoch"]
    drawn = False
    for i, name in enumerate(names):
        color = f"C{i}"
        for split, style in (("train", "-"), ("val", "--")):
            y = m.get(f"{split}_{name}")
            if y is None or not np.isfinite(y).any():
                continue
            ok = np.isfinite(y)
            ax.plot(ep[ok], y[ok], style, marker="o", ms=3, color=color, label=f"{split} {name}")
            drawn = True
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("epoch")
    if drawn:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "not in the CSV", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
    return drawn


def _log_if_positive(ax: Any, m: Mapping[str, np.ndarray], keys: Sequence[str]) -> None:
    vals = np.concatenate([m[k][np.isfinite(m[k])] for k in keys if k in m] or [np.empty(0)])
    if vals.size and (vals > 0).all() and vals.max() > 10 * vals.min():
        ax.set_yscale("log")


def plot_metrics_csv(
    csv_path: str | os.PathLike, out_path: str | os.PathLike | None = None
) -> Path:
    """Draw the curves of a training run's ``metrics.csv`` into one PNG and return its path
    (default: ``metrics.png`` next to the CSV; an existing file is replaced).

    Panels against the epoch (training solid, validation dashed): total loss; the main
    loss terms (raw NLL, supervised NLL/MSE, auxiliary); the mean predicted stds; the
    raw-frame ZMS ``mean(r^2 / V)`` with the ideal 1; the raw-frame coverage of the central
    95 % interval with the ideal 0.95; the camera-noise parameters. A panel whose columns
    are missing says so. Bad files raise :class:`~napari_sim_uq.core.errors.InputError`.
    """
    m = read_metrics_csv(csv_path)
    out = Path(out_path) if out_path is not None else Path(csv_path).with_name("metrics.png")
    fig, axes = new_figure(2, 3, size=(13.0, 7.0))
    _metric_curves(axes[0, 0], m, ["loss"], "total loss")
    _metric_curves(axes[0, 1], m, list(_LOSS_TERMS), "loss terms")
    if _metric_curves(axes[0, 2], m, list(_STD_TERMS), "mean predicted std"):
        _log_if_positive(axes[0, 2], m, [f"{s}_{n}" for s in ("train", "val") for n in _STD_TERMS])
    if _metric_curves(axes[1, 0], m, ["raw_zms"], "raw ZMS mean(r²/V) (ideal 1)"):
        axes[1, 0].axhline(1.0, color="k", lw=0.8, ls=":", label="ideal 1")
        _log_if_positive(
            axes[1, 0], {**m, "one": np.ones(1)}, ["train_raw_zms", "val_raw_zms", "one"]
        )
        axes[1, 0].legend(fontsize=7)
    if _metric_curves(axes[1, 1], m, ["raw_cov95"], "raw 95 % coverage (ideal 0.95)"):
        axes[1, 1].axhline(0.95, color="k", lw=0.8, ls=":", label="ideal 0.95")
        axes[1, 1].set_ylim(-0.02, 1.02)
        axes[1, 1].legend(fontsize=7)
    if _metric_curves(axes[1, 2], m, ["camera_alpha", "camera_beta"], "camera noise"):
        _log_if_positive(
            axes[1, 2], m, [f"{s}_camera_{n}" for s in ("train", "val") for n in ("alpha", "beta")]
        )
    fig.suptitle(str(Path(csv_path).name), fontsize=10)
    return save_figure(fig, out)
