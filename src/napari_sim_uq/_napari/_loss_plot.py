"""A live loss / validation-loss plot for a dock widget (matplotlib canvas in Qt).

Data arrive with every training batch (cheap: appended to lists). The canvas is updated
only when asked (:meth:`LossPlot.request_redraw`; the Train widget asks at epoch ends and
validations), at most once per ``min_interval_s``, and never while the plot is switched
off. An update must not stall the GUI thread, where a full matplotlib draw costs 40-80 ms
of Python on an idle core and several times that while a training thread competes for
the CPU and the GIL. So the axes are drawn in full only when their limits change (x spans
the planned epochs from the start; during a run y only grows when the data leave the
range, at the end of a run it is fitted to the data) or the canvas is resized, without
a layout engine; otherwise only the three curves are drawn over the saved background
(about a millisecond) and shown with a deferred repaint of the axes' rectangle.
"""

from __future__ import annotations

import math
import time

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

MAX_BATCH_POINTS = 2000  # batch losses drawn (evenly thinned beyond this)
PLOT_HEIGHT = 240  # pixels
_STYLES = {
    "batch": {"color": "0.65", "lw": 0.8},
    "train": {"color": "C0", "lw": 1.4, "marker": "o", "ms": 3},
    "val": {"color": "C1", "lw": 1.4, "marker": "s", "ms": 3},
}


def nice_limits(lo: float, hi: float, pad: float = 0.05) -> tuple[float, float]:
    """A range around ``[lo, hi]``, padded by ``pad`` x its span on each side and rounded
    outwards to a 1-2-5 step."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 1.0
    span = hi - lo
    if span <= 0:
        span = abs(hi) or 1.0
    raw = span * (1 + 2 * pad) / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return math.floor((lo - pad * span) / step) * step, math.ceil((hi + pad * span) / step) * step


def legend_html() -> str:
    """The legend as rich text for a QLabel (a matplotlib legend costs a quarter of a
    full draw)."""
    from matplotlib.colors import to_hex

    items = [
        f'<span style="color:{to_hex(st["color"])}"><b>&#8212;</b></span>&nbsp;{name}'
        for name, st in _STYLES.items()
    ]
    return "&nbsp;&nbsp;&nbsp;".join(items)


class LossPlot(QWidget):
    """Batch loss (faint), mean training loss per epoch and validation loss per epoch."""

    def __init__(self, parent=None, min_interval_s: float = 0.5):
        super().__init__(parent)
        self.min_interval_s = float(min_interval_s)
        self.enabled = True
        self.n_draws = 0  # updates shown (full draws and blits)
        self.n_full_draws = 0
        self._last_draw = -np.inf
        self._background = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._update)
        self.clear_data()

        self.figure = Figure(figsize=(3.6, 2.4), dpi=100)
        self.canvas = FigureCanvasQTAgg(self.figure)
        # a fixed height: status messages that wrap to more lines must not resize the
        # canvas (every resize is a full draw)
        self.canvas.setFixedHeight(PLOT_HEIGHT)
        self.canvas.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.ax = self.figure.add_subplot(111)
        self.ax.set_xlabel("epoch", fontsize=9)
        self.ax.set_ylabel("loss (NLL)", fontsize=9)
        self.ax.tick_params(labelsize=8)
        self.ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        self.ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
        self.ax.grid(True, alpha=0.3)
        # curves are "animated": left out of full draws, drawn over the saved background
        self.lines = {k: self.ax.plot([], [], animated=True, **st)[0] for k, st in _STYLES.items()}
        self.set_limits((0.0, 1.0), (0.0, 1.0))
        self.canvas.mpl_connect("draw_event", self._on_draw)
        self.canvas.mpl_connect("resize_event", self._on_resize)
        self.legend = QLabel(legend_html())
        self.legend.setAlignment(Qt.AlignCenter)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.setSpacing(2)
        box.addWidget(self.legend)
        box.addWidget(self.canvas)
        self._on_resize()

    # ------------------------------------------------------------------ data

    def clear_data(self, planned_epochs: int = 1) -> None:
        """Forget the curves; the x axis will span ``planned_epochs``."""
        self.batch_x: list[float] = []
        self.batch_y: list[float] = []
        self.train_x: list[float] = []
        self.train_y: list[float] = []
        self.val_x: list[float] = []
        self.val_y: list[float] = []
        self.planned_epochs = int(planned_epochs)

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

    # ------------------------------------------------------------------ limits

    def set_limits(self, xlim, ylim) -> None:
        self.ax.set_xlim(*xlim)
        self.ax.set_ylim(*ylim)

    def _wanted_limits(self, tidy: bool):
        """(xlim, ylim) for the data: the current ones while the data fit, unless ``tidy``
        (then fitted to the data)."""
        xmax = max([self.planned_epochs, *self.train_x, *self.val_x, *self.batch_x[-1:]])
        xlim = (0.0, float(max(math.ceil(xmax), 1)))
        # y from the epoch means, the validation and the latest epoch's batches: the first
        # batches of a run are far above the rest and may leave the axes
        recent = self.batch_y[-64:] if not self.train_y else self.batch_y[-16:]
        ys = np.asarray([*self.train_y, *self.val_y, *recent], dtype=float)
        ys = ys[np.isfinite(ys)]
        ylim = tuple(self.ax.get_ylim())
        if ys.size:
            lo, hi = float(ys.min()), float(ys.max())
            outside = lo < ylim[0] or hi > ylim[1]
            if tidy or outside or self._background is None:
                # while training, leave room for the loss to move (fewer full draws)
                ylim = nice_limits(lo, hi, pad=0.05 if tidy else 0.3)
        return xlim, ylim

    # ------------------------------------------------------------------ drawing

    def set_enabled(self, enabled: bool) -> None:
        """Switch redrawing on (draws the data collected meanwhile) or off."""
        self.enabled = bool(enabled)
        self.canvas.setVisible(self.enabled)
        self.legend.setVisible(self.enabled)
        if self.enabled:
            self.request_redraw(force=True)
        else:
            self._timer.stop()

    def request_redraw(self, force: bool = False, tidy: bool = False) -> None:
        """Update now, or when ``min_interval_s`` has passed since the last update.
        ``tidy`` (at the end of a run) may also shrink the y range to the data."""
        if not self.enabled:
            return
        wait = self.min_interval_s - (time.perf_counter() - self._last_draw)
        if force or wait <= 0:
            self._timer.stop()
            self._update(tidy)
        elif not self._timer.isActive():
            self._timer.start(int(wait * 1000) + 1)

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Process Qt events until no update is pending (tests, screenshots)."""
        from qtpy.QtWidgets import QApplication

        t0 = time.perf_counter()
        while self._timer.isActive() and time.perf_counter() - t0 < timeout_s:
            QApplication.processEvents()
            time.sleep(0.005)
        return not self._timer.isActive()

    def _update(self, tidy: bool = False) -> None:
        bx, by = self.batch_x, self.batch_y
        if len(bx) > MAX_BATCH_POINTS:
            idx = np.linspace(0, len(bx) - 1, MAX_BATCH_POINTS).astype(int)
            bx, by = np.asarray(bx)[idx], np.asarray(by)[idx]
        self.lines["batch"].set_data(bx, by)
        self.lines["train"].set_data(self.train_x, self.train_y)
        self.lines["val"].set_data(self.val_x, self.val_y)
        xlim, ylim = self._wanted_limits(tidy)
        if self._background is None or xlim != self.ax.get_xlim() or ylim != self.ax.get_ylim():
            self.set_limits(xlim, ylim)
            self.canvas.draw()  # full draw; _on_draw saves the background and blits
        else:
            self._blit()
        self._last_draw = time.perf_counter()
        self.n_draws += 1

    def _on_draw(self, _event=None) -> None:
        # after a full draw (ours, or Qt's after a resize, inside a paint event): keep the
        # background and put the curves into the buffer that is about to be shown
        self._background = self.canvas.copy_from_bbox(self.ax.bbox)
        self.n_full_draws += 1
        for line in self.lines.values():
            self.ax.draw_artist(line)

    def _blit(self) -> None:
        if self._background is None:
            return
        self.canvas.restore_region(self._background)
        for line in self.lines.values():
            self.ax.draw_artist(line)
        # matplotlib's canvas.blit() repaints at once (QWidget.repaint), which in a napari
        # window composites the whole window (10-25 ms on software OpenGL) inside this
        # event handler; a deferred update of the same rectangle is merged with the other
        # repaints of this event-loop turn
        ratio = self.canvas.device_pixel_ratio or 1.0
        left, bottom, width, height = (int(v / ratio) for v in self.ax.bbox.bounds)
        self.canvas.update(left, self.canvas.rect().height() - bottom - height, width, height)

    def _on_resize(self, _event=None) -> None:
        # fixed margins in pixels (a layout engine would double the cost of a full draw)
        w, h = self.figure.bbox.width, self.figure.bbox.height
        if w > 100 and h > 80:
            # 60 px on the left: room for negative tick labels (an NLL goes below 0)
            self.figure.subplots_adjust(left=60 / w, right=1 - 12 / w, bottom=44 / h, top=1 - 8 / h)
        self._background = None  # the next draw (Qt redraws after a resize) saves it
