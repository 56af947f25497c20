"""A live loss / validation-loss plot for a dock widget (matplotlib canvas in Qt).

Data arrive with every training batch (cheap: appended to lists); the canvas is redrawn
only when asked (:meth:`LossPlot.request_redraw`, the Train widget asks at epoch ends and
validation events), at most once per ``min_interval_s`` (a pending request is drawn when
the interval has passed), and never while the plot is switched off. Drawing goes through
``draw_idle`` on the GUI thread.
"""

from __future__ import annotations

import time

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

MAX_BATCH_POINTS = 2000  # batch losses drawn (evenly thinned beyond this)


class LossPlot(QWidget):
    """Batch loss (faint), mean training loss per epoch and validation loss per epoch."""

    def __init__(self, parent=None, min_interval_s: float = 0.5):
        super().__init__(parent)
        self.min_interval_s = float(min_interval_s)
        self.enabled = True
        self.n_draws = 0
        self._last_draw = -np.inf
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._draw)
        self.clear_data()

        self.figure = Figure(figsize=(3.6, 2.4), dpi=100, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.canvas.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.ax = self.figure.add_subplot(111)
        (self._batch_line,) = self.ax.plot([], [], color="0.65", lw=0.8, label="batch")
        (self._train_line,) = self.ax.plot([], [], "o-", color="C0", ms=3, lw=1.4, label="train")
        (self._val_line,) = self.ax.plot([], [], "s-", color="C1", ms=3, lw=1.4, label="val")
        self.ax.set_xlabel("epoch")
        self.ax.set_ylabel("loss (NLL)")
        self.ax.tick_params(labelsize=8)
        self.ax.grid(True, alpha=0.3)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.canvas)
        self._draw()

    # ------------------------------------------------------------------ data

    def clear_data(self) -> None:
        self.batch_x: list[float] = []
        self.batch_y: list[float] = []
        self.train_x: list[float] = []
        self.train_y: list[float] = []
        self.val_x: list[float] = []
        self.val_y: list[float] = []

    def add_batch(self, x: float, loss: float) -> None:
        self.batch_x.append(float(x))
        self.batch_y.append(float(loss))

    def add_train(self, epoch: float, loss: float) -> None:
        self.train_x.append(float(epoch))
        self.train_y.append(float(loss))

    def add_val(self, epoch: float, loss: float) -> None:
        self.val_x.append(float(epoch))
        self.val_y.append(float(loss))

    @property
    def has_data(self) -> bool:
        return bool(self.batch_x or self.train_x or self.val_x)

    # ------------------------------------------------------------------ drawing

    def set_enabled(self, enabled: bool) -> None:
        """Switch redrawing on (draws the data collected meanwhile) or off."""
        self.enabled = bool(enabled)
        self.canvas.setVisible(self.enabled)
        if self.enabled:
            self.request_redraw(force=True)
        else:
            self._timer.stop()

    def request_redraw(self, force: bool = False) -> None:
        """Redraw now, or when ``min_interval_s`` has passed since the last redraw."""
        if not self.enabled:
            return
        wait = self.min_interval_s - (time.perf_counter() - self._last_draw)
        if force or wait <= 0:
            self._timer.stop()
            self._draw()
        elif not self._timer.isActive():
            self._timer.start(int(wait * 1000) + 1)

    def _draw(self) -> None:
        bx, by = self.batch_x, self.batch_y
        if len(bx) > MAX_BATCH_POINTS:
            idx = np.linspace(0, len(bx) - 1, MAX_BATCH_POINTS).astype(int)
            bx, by = np.asarray(bx)[idx], np.asarray(by)[idx]
        self._batch_line.set_data(bx, by)
        self._train_line.set_data(self.train_x, self.train_y)
        self._val_line.set_data(self.val_x, self.val_y)
        if self.has_data:
            self.ax.relim()
            self.ax.autoscale_view()
            lines = (self._batch_line, self._train_line, self._val_line)
            shown = [ln for ln in lines if len(ln.get_xdata())]
            self.ax.legend(handles=shown, fontsize=7, loc="upper right")
        self.canvas.draw_idle()
        self._last_draw = time.perf_counter()
        self.n_draws += 1
