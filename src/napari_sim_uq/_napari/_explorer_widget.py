"""Dock widget "Uncertainty explorer": inspect a mean/std pair (and its calibration).

Choose a mean layer and its std map (paired automatically by the reconstruction layer
names and metadata, see :mod:`napari_sim_uq.core.uq.explore`), optionally a ground truth or an
error map. The widget shows the histogram of the std (or relative std) with the current
threshold, marks the pixels above the threshold in a Labels layer
``"<mean name> unreliable"`` (replaced on every run), reads out ``mean ± std`` under the
cursor, shows the calibration curve and numbers against the reference, and multiplies
the std layer by a sigma scale (recorded cumulatively in its metadata).

All numbers come from :mod:`napari_sim_uq.core.uq.explore`. Statistics of images above
:data:`INLINE_MAX_PIXELS` pixels are computed in a napari thread worker (and on at most
``explore.MAX_SAMPLE_PIXELS`` sampled pixels), smaller ones on the GUI thread;
``NAPARI_SIM_UQ_NOTHREADS=1`` computes everything on the calling thread. Errors are shown
as napari notifications.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Image, Labels
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from napari_sim_uq._napari._reconstruct_widget import _no_threads
from napari_sim_uq._napari._widgets import fill_combo
from napari_sim_uq.core.errors import SimUqError
from napari_sim_uq.core.plots import plot_calibration_curve
from napari_sim_uq.core.uq import explore

#: Statistics of images up to this many pixels are computed on the GUI thread.
INLINE_MAX_PIXELS = 1_000_000
NONE = "(none)"
REFERENCE_KINDS = {"ground truth": "gt", "error map": "error"}
MODE_LABELS = {"absolute std": "absolute", "relative std (std/|mean|)": "relative"}
N_SLIDER = 1000
#: Colour of the unreliable pixels: cyan stands out on gray, inferno and magma alike.
UNRELIABLE_COLOR = (0.0, 0.9, 1.0, 1.0)


class UncertaintyExplorerWidget(QWidget):
    """Histogram, threshold mask, cursor readout, calibration and sigma scale of a std map."""

    inline_max_pixels = INLINE_MAX_PIXELS

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.stats: dict | None = None
        self._workers: set = set()
        self._generation = 0
        self._threshold_key = None
        self._watched: list = []
        self._selection = (None, None, None)
        self._last_error = ""

        # ---- layer choice
        self.mean_combo = QComboBox()
        self.mean_combo.setToolTip("the mean (e.g. '<source> emitter'); its std map is paired")
        self.std_combo = QComboBox()
        self.std_combo.setToolTip("the std map of the mean (same shape)")
        self.ref_combo = QComboBox()
        self.ref_combo.setToolTip("optional: ground truth (or an error map) for calibration")
        self.ref_kind_combo = QComboBox()
        self.ref_kind_combo.addItems(REFERENCE_KINDS)
        ref_row = QHBoxLayout()
        ref_row.setContentsMargins(0, 0, 0, 0)
        ref_row.addWidget(self.ref_combo, 1)
        ref_row.addWidget(self.ref_kind_combo)

        # ---- plots
        self.figure = Figure(figsize=(3.6, 5.0), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(400)
        self.ax_hist, self.ax_cal = self.figure.subplots(2, 1)
        self._tline = None
        self.log_check = QCheckBox("log scale")
        self.log_check.setToolTip("logarithmic axes and bins for the histogram")

        # ---- threshold
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(MODE_LABELS)
        self.mode_combo.setToolTip(
            f"relative std = std / max(|mean|, eps), eps = {explore.REL_EPS:g} x max |mean|"
        )
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setDecimals(4)
        self.threshold_spin.setRange(0.0, 1e6)
        self.threshold_spin.setToolTip("pixels above this value are unreliable")
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, N_SLIDER)
        self.slider.setValue(int(0.95 * N_SLIDER))
        self.slider.setToolTip("threshold as a percentile of the values")
        self.pct_label = QLabel("")
        thr_row = QHBoxLayout()
        thr_row.setContentsMargins(0, 0, 0, 0)
        thr_row.addWidget(self.threshold_spin)
        thr_row.addWidget(self.slider, 1)
        self.mark_btn = QPushButton("Mark unreliable regions")
        self.mark_btn.clicked.connect(self.mark_unreliable)
        self.flagged_label = QLabel("")
        self.flagged_label.setWordWrap(True)

        # ---- readout, calibration, sigma scale
        self.readout = QLabel("move the cursor over the image")
        self.readout.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.calib_label = QLabel("")
        self.calib_label.setWordWrap(True)
        self.calib_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.scale_spin = QDoubleSpinBox()
        self.scale_spin.setDecimals(4)
        self.scale_spin.setRange(1e-4, 1e4)
        self.scale_spin.setValue(1.0)
        self.scale_spin.setSingleStep(0.05)
        self.scale_spin.setToolTip(
            "factor for the std map; set to the NLL-optimal sqrt(ZMS) when a reference is chosen"
        )
        self.apply_btn = QPushButton("Apply sigma scale")
        self.apply_btn.clicked.connect(self.apply_sigma_scale)
        scale_row = QHBoxLayout()
        scale_row.setContentsMargins(0, 0, 0, 0)
        scale_row.addWidget(self.scale_spin)
        scale_row.addWidget(self.apply_btn, 1)
        self.scale_label = QLabel("")
        self.scale_label.setWordWrap(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("mean layer", self.mean_combo)
        form.addRow("std layer", self.std_combo)
        form.addRow("reference", ref_row)
        form.addRow("threshold on", self.mode_combo)
        form.addRow("threshold", thr_row)
        form.addRow("", self.pct_label)
        form.addRow("sigma scale", scale_row)
        box = QVBoxLayout(self)
        box.addLayout(form)
        box.addWidget(self.canvas, 1)
        box.addWidget(self.log_check)
        box.addWidget(self.mark_btn)
        box.addWidget(self.flagged_label)
        box.addWidget(self.readout)
        box.addWidget(self.calib_label)
        box.addWidget(self.scale_label)
        box.addWidget(self.status)

        self.mean_combo.currentTextChanged.connect(self._on_mean_changed)
        for combo in (self.std_combo, self.ref_combo, self.ref_kind_combo, self.mode_combo):
            combo.currentTextChanged.connect(self._on_choice_changed)
        self.log_check.toggled.connect(self._on_choice_changed)
        self.threshold_spin.valueChanged.connect(self._on_threshold_changed)
        self.slider.valueChanged.connect(self._on_slider)
        for ev in ("inserted", "removed", "moved", "changed"):
            getattr(self.viewer.layers.events, ev).connect(self._refresh_layers)
        self.viewer.cursor.events.position.connect(self._on_cursor)
        self._draw()
        self._refresh_layers()

    # ------------------------------------------------------------------ layer choice

    def _image_layers(self) -> list:
        return [lay for lay in self.viewer.layers if isinstance(lay, Image)]

    def _layer(self, combo: QComboBox):
        name = combo.currentText()
        if not name or name == NONE or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    def mean_layer(self):
        return self._layer(self.mean_combo)

    def std_layer(self):
        return self._layer(self.std_combo)

    def reference_layer(self):
        return self._layer(self.ref_combo)

    def _refresh_layers(self, event=None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            lay = getattr(event, "value", None)
            if lay is not None:
                lay.events.name.connect(self._refresh_layers)
        images = self._image_layers()
        names = [lay.name for lay in images]
        pairs = explore.mean_std_pairs(images)
        # a vanished choice falls back to the automatic pairing or "(none)", never to an
        # arbitrary layer
        mean_old = self.mean_combo.currentText()
        fill_combo(self.mean_combo, [NONE, *names], pairs[0][0] if pairs else None, mean_old)
        mean = self.mean_combo.currentText()
        std_guess = explore.find_std_layer(mean, images) if mean != NONE else None
        fill_combo(self.std_combo, [NONE, *names], std_guess)
        ref_guess = explore.find_gt_layer(mean, images) if mean != NONE else None
        fill_combo(self.ref_combo, [NONE, *names], ref_guess)
        if mean != mean_old:
            self._on_mean_changed(mean)
        elif self._current_selection() != self._selection:
            self.refresh()

    def _on_mean_changed(self, name: str) -> None:
        images = self._image_layers()
        known = name and name != NONE
        std = explore.find_std_layer(name, images) if known else None
        gt = explore.find_gt_layer(name, images) if known else None
        for combo, guess in ((self.std_combo, std), (self.ref_combo, gt)):
            if guess is not None:
                combo.blockSignals(True)
                combo.setCurrentText(guess)
                combo.blockSignals(False)
        self.refresh()

    def _on_choice_changed(self, *_args) -> None:
        self.refresh()

    def _current_selection(self) -> tuple:
        return tuple(c.currentText() for c in (self.mean_combo, self.std_combo, self.ref_combo))

    def _watch(self, layers: list) -> None:
        """Recompute when the data of a chosen layer changes (e.g. a new reconstruction)."""
        for lay in self._watched:
            lay.events.data.disconnect(self._on_choice_changed)
        self._watched = [lay for lay in layers if lay is not None]
        for lay in self._watched:
            lay.events.data.connect(self._on_choice_changed)

    def _checked_pair(self, action: bool = False):
        """``(mean, std, reference)`` layers, or ``None`` after telling the user why not.

        Automatic recomputations (``action=False``) repeat no notification already shown.
        """
        mean, std, ref = self.mean_layer(), self.std_layer(), self.reference_layer()
        if mean is None or std is None:
            self._fail("choose a mean layer and its std layer", notify=action)
            return None
        shapes = {"mean": mean, "std": std}
        if ref is not None:
            shapes["reference"] = ref
        got = {k: tuple(lay.data.shape) for k, lay in shapes.items()}
        if len(set(got.values())) > 1:
            desc = ", ".join(f"{k} '{shapes[k].name}' {s}" for k, s in got.items())
            self._fail(
                f"the layers have different shapes: {desc}. Choose layers on the same grid.",
                dedupe=not action,
            )
            return None
        for lay in shapes.values():
            if lay.multiscale or lay.rgb:
                self._fail(
                    f"layer '{lay.name}' is multiscale or RGB: not supported here",
                    dedupe=not action,
                )
                return None
        return mean, std, ref

    # ------------------------------------------------------------------ statistics

    @property
    def busy(self) -> bool:
        """True while a statistics worker is running."""
        return bool(self._workers)

    def mode(self) -> str:
        return MODE_LABELS[self.mode_combo.currentText()]

    def refresh(self) -> None:
        """Recompute the histogram, quantiles and calibration of the chosen layers."""
        self._selection = self._current_selection()
        self._generation += 1
        pair = self._checked_pair()
        self._watch(list(pair) if pair else [])
        if pair is None:
            self.stats = None
            self._draw()
            return
        mean, std, ref = pair
        kind = REFERENCE_KINDS[self.ref_kind_combo.currentText()]
        self.scale_label.setText(self._scale_text(std))
        key = (mean.name, std.name, self.mode())
        fn = partial(
            explore.explore_stats,
            np.asarray(mean.data),
            np.asarray(std.data),
            self.mode(),
            reference=None if ref is None else np.asarray(ref.data),
            reference_kind=kind,
            log=self.log_check.isChecked(),
        )
        self.status.setText("computing statistics …")
        gen = self._generation
        done = partial(self._on_stats, key=key, generation=gen)
        n = int(np.prod(mean.data.shape))
        if _no_threads() or n <= self.inline_max_pixels:
            try:
                result = fn()
            except Exception as err:  # shown to the user, never a crash
                self._on_error(err)
                return
            done(result)
            return
        worker = thread_worker(fn, ignore_errors=True)()
        worker.returned.connect(done)
        worker.errored.connect(partial(self._on_worker_error, generation=gen))
        worker.finished.connect(partial(self._workers.discard, worker))
        self._workers.add(worker)
        worker.start()

    def _on_worker_error(self, err: BaseException, generation: int) -> None:
        if generation == self._generation:
            self._on_error(err)

    def _on_stats(self, stats: dict, key: tuple, generation: int) -> None:
        if generation != self._generation:
            return  # a newer request is under way
        self.stats = stats
        self._last_error = ""
        if key != self._threshold_key:  # a new pair or mode: start at the 95th percentile
            self._threshold_key = key
            self._configure_threshold(stats)
        self._on_threshold_changed(self.threshold_spin.value(), draw=False)
        cal = stats["calibration"]
        if cal is not None:
            self.scale_spin.setValue(cal["sigma_scale"])
        self.calib_label.setText(self._calibration_text(cal))
        hist = stats["hist"]
        self.status.setText(
            f"{hist['n']:,} values in the histogram"
            + (f" ({hist['n_excluded']:,} left out)" if hist["n_excluded"] else "")
        )
        self._draw()

    def _configure_threshold(self, stats: dict) -> None:
        q = stats["quantiles"]
        top = float(q[-1]) if np.isfinite(q[-1]) else 1.0
        ref = abs(stats["p95"]) or abs(top) or 1.0
        decimals = int(min(10, max(2, 3 - math.floor(math.log10(ref)))))
        self.threshold_spin.blockSignals(True)
        self.threshold_spin.setDecimals(decimals)
        self.threshold_spin.setRange(0.0 if q[0] >= 0 else float(q[0]), max(10 * top, ref))
        self.threshold_spin.setSingleStep(ref / 20)
        self.threshold_spin.setValue(stats["p95"])
        self.threshold_spin.blockSignals(False)

    def _on_slider(self, pos: int) -> None:
        if self.stats is None:
            return
        q = self.stats["quantiles"]
        self.threshold_spin.setValue(float(q[round(pos * (q.size - 1) / N_SLIDER)]))

    def _on_threshold_changed(self, value: float, draw: bool = True) -> None:
        if self.stats is None:
            return
        q = self.stats["quantiles"]
        above = 1.0 - np.searchsorted(q, value, side="right") / q.size
        self.slider.blockSignals(True)
        self.slider.setValue(round((1.0 - above) * N_SLIDER))
        self.slider.blockSignals(False)
        self.pct_label.setText(f"≈ {100 * above:.1f} % of the pixels are above")
        if draw and self._tline is not None:
            self._tline.set_xdata([value, value])
            self.canvas.draw_idle()

    # ------------------------------------------------------------------ plots and texts

    def _theme_colors(self) -> tuple[str, str]:
        try:
            from napari.utils.theme import get_theme

            theme = get_theme(self.viewer.theme)
            return theme.background.as_hex(), theme.text.as_hex()
        except Exception:  # an unknown theme: matplotlib's defaults
            return "#ffffff", "#000000"

    def _draw(self) -> None:
        bg, fg = self._theme_colors()
        style = {
            "font.size": 8,
            "text.color": fg,
            "axes.labelcolor": fg,
            "axes.edgecolor": fg,
            "xtick.color": fg,
            "ytick.color": fg,
            "axes.facecolor": bg,
            "legend.facecolor": bg,
            "legend.labelcolor": fg,
        }
        with rc_context(style):
            self.figure.clear()
            self.figure.set_facecolor(bg)
            self.ax_hist, self.ax_cal = self.figure.subplots(2, 1)
            self._tline = None
            self._draw_histogram(self.ax_hist)
            self._draw_calibration(self.ax_cal)
            self.canvas.draw()

    def _draw_histogram(self, ax) -> None:
        relative = self.mode() == "relative"
        ax.set_title("relative std (std/|mean|)" if relative else "std histogram")
        if self.stats is None:
            ax.text(0.5, 0.5, "no std layer", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            return
        h = self.stats["hist"]
        # log y: the bars start below 1 so that single-pixel bins show
        base = 0.5 if h["log"] else 0.0
        ax.stairs(h["counts"], h["edges"], fill=True, color="#8c6bb1", baseline=base)
        if h["log"]:
            ax.set_xscale("log")
            if h["counts"].max() > 0:
                ax.set_yscale("log")
        t = self.threshold_spin.value()
        self._tline = ax.axvline(t, color="#e34a33", lw=1.5, label="threshold")
        ax.set_xlabel("std / |mean|" if relative else "std (intensity units)")
        ax.set_ylabel("pixels")
        ax.legend(loc="upper right", fontsize=7)

    def _draw_calibration(self, ax) -> None:
        cal = None if self.stats is None else self.stats["calibration"]
        if cal is None:
            ax.set_title("calibration")
            ax.text(
                0.5,
                0.5,
                "choose a ground truth (or an\nerror map) for the calibration curve",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
            ax.set_xticks([])
            ax.set_yticks([])
            return
        plot_calibration_curve(ax, cal["curve"], label="per bin")
        ax.set_title("calibration (ideal: dashed y = x)")

    @staticmethod
    def _calibration_text(cal: dict | None) -> str:
        if cal is None:
            return ""
        text = (
            f"calibration on {cal['n']:,} pixels: ZMS {cal['zms']:.3g} (ideal 1), "
            f"fitted sigma scale s = √ZMS = {cal['sigma_scale']:.3g}; "
            f"Spearman ρ(σ, |r|) {cal['spearman']:.3f}; coverage ±1σ "
            f"{100 * cal['cov68']:.1f} % (ideal 68.3 %), ±2σ {100 * cal['cov95']:.1f} % "
            "(ideal 95.4 %)"
        )
        cond = cal.get("conditional")
        if cond:
            dec = [r["zms"] for r in cond["by_std_decile"] if r["zms"] is not None]
            by = cond["by_intensity"]

            def z(name: str) -> str:
                v = (by.get(name) or {}).get("zms")
                return "–" if v is None else f"{v:.3g}"

            text += (
                f"\nconditional ZMS: per std decile {min(dec):.3g} to {max(dec):.3g}; "
                f"background {z('background')}, structure {z('structure')} "
                f"(dim {z('dim')}, mid {z('mid')}, bright {z('bright')})"
            )
        return text

    @staticmethod
    def _scale_text(std) -> str:
        s = explore.applied_sigma_scale(std.metadata)
        return f"sigma scale applied to '{std.name}' so far: × {s:.4g}"

    # ------------------------------------------------------------------ actions

    def threshold(self) -> float:
        return float(self.threshold_spin.value())

    def mark_unreliable(self) -> None:
        """Create or replace the Labels layer ``"<mean> unreliable"`` (1 = above threshold)."""
        pair = self._checked_pair(action=True)
        if pair is None:
            return
        mean, std, _ref = pair
        t, mode = self.threshold(), self.mode()
        try:
            mask = explore.unreliable_mask(np.asarray(mean.data), np.asarray(std.data), t, mode)
        except SimUqError as err:
            self._fail(str(err))
            return
        frac = float(mask.mean())
        name = explore.unreliable_layer_name(mean.name)
        md = {
            "sim_uq": {
                "unreliable": {
                    "mean": mean.name,
                    "std": std.name,
                    "mode": mode,
                    "threshold": t,
                    "rel_eps": explore.REL_EPS if mode == "relative" else None,
                    "fraction": frac,
                }
            }
        }
        old = self.viewer.layers[name] if name in self.viewer.layers else None
        if isinstance(old, Labels) and old.data.shape == mask.shape:
            old.data = mask
            old.scale, old.translate, old.metadata = mean.scale, mean.translate, md
        else:
            if old is not None:
                self.viewer.layers.remove(old)
            self.viewer.add_labels(
                mask,
                name=name,
                scale=mean.scale,
                translate=mean.translate,
                metadata=md,
                opacity=0.7,
                colormap={None: "transparent", 1: UNRELIABLE_COLOR},
            )
        quantity = "std/|mean|" if mode == "relative" else "std"
        self.flagged_label.setText(
            f"{100 * frac:.2f} % of the pixels flagged ({quantity} > {t:.4g}) in '{name}'"
        )

    def apply_sigma_scale(self) -> None:
        """Multiply the std layer by the sigma-scale factor (cumulative scale in metadata)."""
        std = self.std_layer()
        if std is None:
            self._fail("choose a std layer first")
            return
        factor = float(self.scale_spin.value())
        try:
            data, md = explore.apply_sigma_scale(np.asarray(std.data), factor, std.metadata)
        except SimUqError as err:
            self._fail(str(err))
            return
        limits = [c * factor for c in std.contrast_limits]
        std.metadata = md
        std.data = data  # its data event recomputes the statistics
        std.contrast_limits = limits
        self.scale_label.setText(self._scale_text(std))
        show_info(
            f"'{std.name}' multiplied by {factor:.4g}; cumulative sigma scale "
            f"{explore.applied_sigma_scale(md):.4g}"
        )

    # ------------------------------------------------------------------ cursor readout

    def _on_cursor(self, event=None) -> None:
        try:
            self.update_readout(self.viewer.cursor.position)
        except RuntimeError:  # the Qt label is gone (widget closed)
            pass

    def update_readout(self, position) -> None:
        """Show ``mean ± std`` of the pixel at the world ``position``."""
        mean, std = self.mean_layer(), self.std_layer()
        if mean is None:
            self.readout.setText("")
            return
        idx = explore.data_index(mean.world_to_data(position), mean.data.shape)
        if idx is None:
            self.readout.setText(f"cursor outside '{mean.name}'")
            return
        m = float(np.asarray(mean.data[idx]))
        sidx = None
        if std is not None:
            sidx = explore.data_index(std.world_to_data(position), std.data.shape)
        if sidx is None:
            self.readout.setText(f"mean {m:.4g} at {list(idx)}")
            return
        s = float(np.asarray(std.data[sidx]))
        self.readout.setText(f"mean ± std: {explore.format_mean_std(m, s)} at {list(idx)}")

    # ------------------------------------------------------------------ errors

    def _on_error(self, err: BaseException) -> None:
        """A failed statistics computation: no plots, the message as a notification."""
        self.stats = None
        self._draw()
        if isinstance(err, SimUqError):
            self._fail(str(err), dedupe=True)
        else:
            self._fail(f"uncertainty explorer: {type(err).__name__}: {err}", dedupe=True)

    def _fail(self, message: str, notify: bool = True, dedupe: bool = False) -> None:
        self.status.setText(message)
        if notify and not (dedupe and message == self._last_error):
            show_error(message)
        self._last_error = message
