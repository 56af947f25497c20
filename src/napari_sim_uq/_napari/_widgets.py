"""Building blocks shared by the dock widgets: option fields bound to config keys, a
collapsible "Advanced" section, and a runner for jobs in napari generator thread workers.

:class:`Fields` creates the input widgets for config options and reads/writes them as a
nested dict with dotted keys (``"model.depth"`` -> ``{"model": {"depth": ...}}``), so a
widget's settings are exactly a ``TrainConfig`` / ``SynthConfig`` dict and a checkpoint's
stored config fills them back in. :class:`JobRunner` runs a job (a generator of
:class:`~napari_sim_uq.core.events.Event`, DESIGN.md 2) in a thread worker, or on the
calling thread when ``NAPARI_SIM_UQ_NOTHREADS=1`` (tests); :class:`JobWidget` is the base
of the widgets that run jobs.
"""

from __future__ import annotations

import gc
import inspect
import math
import os
import sys
import typing
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from dataclasses import fields as dc_fields
from pathlib import Path
from typing import Any

from napari.qt.threading import GeneratorWorker, thread_worker
from napari.utils import notifications
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_sim_uq.core.config import field_default, field_type, option_choices, option_meta
from napari_sim_uq.core.errors import InputError, SimUqError

NOTHREADS_ENV = "NAPARI_SIM_UQ_NOTHREADS"


def default_torch_threads() -> int:
    """torch CPU threads for jobs started from the GUI: one core is left to the viewer
    (with every core busy, the event loop waits for CPU and the intra-op thread pool
    for the loaded cores: ``bench/ui_responsiveness.py``)."""
    return max(1, (os.cpu_count() or 2) - 1)


def no_threads() -> bool:
    """True when ``NAPARI_SIM_UQ_NOTHREADS`` asks to run jobs on the calling thread."""
    return os.environ.get(NOTHREADS_ENV, "").strip().lower() in ("1", "true", "yes")


class GcFreeze:
    """Keep the objects that exist when a job starts out of Python's full garbage
    collections until the last job (and its layer adds) has ended: held by
    :class:`JobRunner` while a job runs and by :class:`LayerAdder` while it adds layers
    (holds are counted).

    With napari, Qt and torch loaded the heap holds about a million container objects; a
    full (generation 2) collection walks all of them in C, holding the GIL for 150-280 ms,
    so the event loop stalls whichever thread triggered it, and a job allocates fast (the
    first one imports ``torch._dynamo`` and ``sympy``). ``gc.freeze()`` moves every
    existing object into the permanent generation, which collections skip;
    ``gc.unfreeze()`` at the end hands them back, so garbage that existed at the start is
    still collected later (nothing leaks). When something else has frozen objects
    already (``gc.get_freeze_count() > 0``) this is left alone.

    A napari layer is freed by the cyclic collector, not by reference counting, so a
    layer that the user removes while a job runs would keep its data in memory until the
    job ends. Holders pass their viewer: removing a layer from it then runs one full
    collection of everything (unfreeze, collect, freeze again) on the next event-loop
    turn, a stall the user caused and expects. ``bench/ui_responsiveness.py
    --no-gc-freeze`` shows what the freeze changes.
    """

    def __init__(self) -> None:
        self.holds = 0
        self.froze = False
        self.n_collections = 0  # full collections run because a layer was removed
        self._viewers: list = []  # layer lists whose removals are watched
        self._pending = False

    def hold(self, viewer=None) -> None:
        if self.holds == 0:
            self.froze = gc.get_freeze_count() == 0
            if self.froze:
                gc.freeze()
        self.holds += 1
        layers = getattr(_unwrapped(viewer), "layers", None)
        if self.froze and layers is not None and all(v is not layers for v in self._viewers):
            layers.events.removed.connect(self._layer_removed)
            self._viewers.append(layers)

    def release(self) -> None:
        if self.holds == 0:
            return
        self.holds -= 1
        if self.holds == 0:
            for layers in self._viewers:
                layers.events.removed.disconnect(self._layer_removed)
            self._viewers = []
            if self.froze:
                gc.unfreeze()
                self.froze = False

    def _layer_removed(self, event=None) -> None:
        from qtpy.QtCore import QTimer

        if not self._pending:  # one collection for several layers removed at once
            self._pending = True
            QTimer.singleShot(0, self.collect)

    def collect(self) -> None:
        """One full collection of everything, frozen objects included; stays frozen."""
        self._pending = False
        if self.froze:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self.n_collections += 1


#: the process-wide guard used by :class:`JobRunner` and :class:`LayerAdder`
GC_FREEZE = GcFreeze()


# --------------------------------------------------------------------------- layout


class Collapsible(QWidget):
    """A titled section that shows its form only when expanded (collapsed at first)."""

    def __init__(self, title: str, parent=None, expanded: bool = False):
        super().__init__(parent)
        self.toggle = QToolButton()
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.toggle.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.body = QWidget()
        self.form = QFormLayout(self.body)
        self.form.setContentsMargins(12, 0, 0, 0)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.toggle)
        box.addWidget(self.body)
        self.toggle.toggled.connect(self.set_expanded)
        self.set_expanded(expanded)

    def set_expanded(self, expanded: bool) -> None:
        self.toggle.blockSignals(True)
        self.toggle.setChecked(expanded)
        self.toggle.blockSignals(False)
        self.toggle.setArrowType(Qt.DownArrow if expanded else Qt.RightArrow)
        self.body.setVisible(expanded)

    @property
    def expanded(self) -> bool:
        return self.toggle.isChecked()


def row(*widgets: QWidget, stretch_first: bool = True) -> QHBoxLayout:
    """Widgets side by side without margins (the first one stretches)."""
    lay = QHBoxLayout()
    lay.setContentsMargins(0, 0, 0, 0)
    for i, w in enumerate(widgets):
        lay.addWidget(w, 1 if (i == 0 and stretch_first) else 0)
    return lay


# --------------------------------------------------------------------------- fields


def _int_spin(value: int, lo: int, hi: int, step: int = 1) -> QSpinBox:
    w = QSpinBox()
    w.setRange(lo, hi)
    w.setSingleStep(step)
    w.setValue(int(value))
    return w


class _FloatSpin(QDoubleSpinBox):
    """A spin box that gives back a value set in code exactly (pi stays pi, not the
    3.142 it shows) until the user changes it."""

    def __init__(self, value: float, lo: float, hi: float, decimals: int, step: float):
        super().__init__()
        self.setDecimals(decimals)
        self.setRange(lo, hi)
        self.setSingleStep(step)
        self.set_exact(value)

    def set_exact(self, value: float) -> None:
        self._exact = float(value)
        self.setValue(self._exact)
        self._shown = self.value()

    def exact_value(self) -> float:
        v = self.value()
        return self._exact if v == self._shown else v


def _float_spin(value: float, lo: float, hi: float, decimals: int, step: float) -> _FloatSpin:
    return _FloatSpin(value, lo, hi, decimals, step)


@dataclass(frozen=True)
class ConfigBinding:
    """Which config dataclass field a :class:`Fields` key shows (:meth:`Fields.add_config_field`),
    and where the widget deliberately departs from the field's metadata: ``narrowed`` names
    the bounds (``"minimum"`` / ``"maximum"``) the widget narrows, ``own_tip`` is true when
    the tooltip is the widget's own text instead of the field's ``help``."""

    config_cls: type
    name: str
    narrowed: frozenset = frozenset()
    own_tip: bool = False


def _control_bound(meta: dict, which: str, given, name: str):
    """A spin-box bound: the metadata's ``which`` bound, or ``given`` where the metadata
    has none; ``given`` may only narrow a bound the metadata has (returns
    ``(bound, narrowed)``)."""
    bound = meta.get(which)
    if given is None:
        if bound is None:
            raise ValueError(f"{name}: no {which} in the field metadata; give one")
        return bound, False
    if bound is None:
        return given, False
    if (given < bound) if which == "minimum" else (given > bound):
        raise ValueError(f"{name}: a {which} of {given} widens the field's {bound}")
    return given, given != bound


class Fields:
    """Input widgets bound to (dotted) config keys: read with :meth:`values`, filled with
    :meth:`set_values`. Every ``add_*`` method returns the widget to place in a form.

    :meth:`add_config_field` adds the control of a config dataclass field from the field
    itself: default, choices, range and tooltip come from its
    :func:`~napari_sim_uq.core.config.option` metadata (``bindings`` records which field
    each key shows)."""

    def __init__(self) -> None:
        self._get: dict[str, Callable[[], Any]] = {}
        self._set: dict[str, Callable[[Any], None]] = {}
        self.widgets: dict[str, QWidget] = {}
        self.bindings: dict[str, ConfigBinding] = {}

    def add_config_field(
        self,
        config_cls,
        name: str,
        key: str | None = None,
        *,
        lo=None,
        hi=None,
        tip: str | None = None,
        choices: Sequence | None = None,
        none_label: str | None = None,
        **kw,
    ) -> QWidget:
        """The control of the field ``name`` of the dataclass ``config_cls``, bound to
        ``key`` (default ``name``), chosen from the field's type and metadata: choices ->
        combo box (a tuple of strings: one check box per choice), bool -> check box, int /
        float -> spin box, a 2-tuple -> two spin boxes, str -> text field (for
        ``str | None`` an empty field means ``None``). The value is the field's default;
        the tooltip its ``help``; the range its ``minimum`` / ``maximum``.

        ``lo`` / ``hi`` give a bound the metadata lacks (a spin box needs both), or narrow
        one it has (a deliberate GUI limit; widening raises ``ValueError``). ``tip``
        replaces the ``help`` text, ``choices`` gives choices the metadata lacks (both at
        once raise ``ValueError``). ``none_label``: for a field that may be ``None``, the
        spin box's minimum, one below the field's, means ``None``. Other keywords go to
        the ``add_*`` method (``step``, ``decimals``, ``text``, ``min_label``)."""
        key = key or name
        by_name = {fl.name: fl for fl in dc_fields(config_cls)}
        if name not in by_name:
            raise ValueError(f"{config_cls.__name__} has no field {name!r}")
        fl = by_name[name]
        meta = option_meta(fl) or {}
        label = f"{config_cls.__name__}.{name}"
        meta_choices = option_choices(meta) if meta else None
        if choices is not None and meta_choices is not None:
            raise ValueError(f"{label}: the choices are in the field metadata already")
        choices = meta_choices if choices is None else tuple(choices)
        value = field_default(fl)
        tp, optional = field_type(config_cls, name)
        help_text = meta.get("help", "")
        own_tip = tip is not None and bool(help_text)
        tip = help_text if tip is None else tip
        narrowed: set[str] = set()

        def bounds():
            out = []
            for which, given in (("minimum", lo), ("maximum", hi)):
                bound, narrow = _control_bound(meta, which, given, label)
                if narrow:
                    narrowed.add(which)
                out.append(bound)
            return out

        items = typing.get_args(tp) if typing.get_origin(tp) is tuple else None
        if tp is bool:
            w = self.add_bool(key, value, tip, **kw)
        elif items is not None and choices is not None:
            w = self.add_subset(key, value, choices, tip)
        elif choices is not None:
            w = self.add_choice(key, value, choices, tip)
        elif items is not None and len(items) == 2 and items[0] is items[1]:
            a, b = bounds()
            if items[0] is int:
                w = self.add_pair(key, value, int(a), int(b), tip, **kw)
            else:
                w = self.add_pair(key, value, a, b, tip, **{"decimals": 3, **kw})
        elif tp is int:
            a, b = bounds()
            if none_label is not None:
                if not optional:
                    raise ValueError(f"{label}: none_label for a field that cannot be None")
                a -= 1  # the minimum means None
            w = self.add_int(key, value, int(a), int(b), tip, none_label=none_label, **kw)
        elif tp is float:
            a, b = bounds()
            w = self.add_float(key, value, a, b, tip, **kw)
        elif tp is str:
            w = self.add_text(key, value, tip, none_if_empty=optional, **kw)
        else:
            raise TypeError(f"{label}: no control for the type {tp!r}")
        self.bindings[key] = ConfigBinding(config_cls, name, frozenset(narrowed), own_tip)
        return w

    def _bind(self, key: str, widget: QWidget, get, put, tip: str) -> QWidget:
        if tip:
            widget.setToolTip(tip)
        self._get[key], self._set[key], self.widgets[key] = get, put, widget
        return widget

    def add_int(
        self, key, value, lo, hi, tip="", *, step=1, none_label=None, min_label=None
    ) -> QSpinBox:
        """Integer spin box; with ``none_label`` its minimum means ``None`` (shown so);
        ``min_label`` only names the minimum (e.g. "off" for 0)."""
        w = _int_spin(lo if value is None else value, lo, hi, step)
        if none_label is None:
            if min_label:
                w.setSpecialValueText(min_label)
            return self._bind(key, w, w.value, lambda v: w.setValue(int(v)), tip)
        w.setSpecialValueText(none_label)

        def get():
            return None if w.value() == lo else w.value()

        def put(v):
            w.setValue(lo if v is None else int(v))

        return self._bind(key, w, get, put, tip)

    def add_float(self, key, value, lo, hi, tip="", *, decimals=3, step=0.1) -> QDoubleSpinBox:
        w = _float_spin(value, lo, hi, decimals, step)
        return self._bind(key, w, w.exact_value, w.set_exact, tip)

    def add_text(self, key, value, tip="", *, placeholder="", none_if_empty=False) -> QLineEdit:
        """A one-line text field (surrounding spaces are dropped); ``none_if_empty``: an
        empty field means ``None``."""
        w = QLineEdit("" if value is None else str(value))
        if placeholder:
            w.setPlaceholderText(placeholder)

        def get():
            text = w.text().strip()
            return None if none_if_empty and not text else text

        return self._bind(key, w, get, lambda v: w.setText("" if v is None else str(v)), tip)

    def add_bool(self, key, value, tip="", text="") -> QCheckBox:
        w = QCheckBox(text)
        w.setChecked(bool(value))
        return self._bind(key, w, w.isChecked, lambda v: w.setChecked(bool(v)), tip)

    def add_choice(self, key, value, choices: Sequence[str], tip="") -> QComboBox:
        w = QComboBox()
        w.addItems([str(c) for c in choices])
        w.setCurrentText(str(value))

        def put(v):
            if w.findText(str(v)) < 0:
                w.addItem(str(v))
            w.setCurrentText(str(v))

        return self._bind(key, w, w.currentText, put, tip)

    def add_pair(self, key, value, lo, hi, tip="", *, decimals=None, step=1.0) -> QWidget:
        """Two spin boxes for a ``(low, high)`` range (``decimals=None``: integers)."""
        if decimals is None:
            a, b = _int_spin(value[0], lo, hi, int(step)), _int_spin(value[1], lo, hi, int(step))
        else:
            a = _float_spin(value[0], lo, hi, decimals, step)
            b = _float_spin(value[1], lo, hi, decimals, step)
        box = QWidget()
        box.setLayout(row(a, b, stretch_first=False))
        box.spins = (a, b)

        if decimals is None:
            put_a, put_b, get_a, get_b = a.setValue, b.setValue, a.value, b.value
        else:
            put_a, put_b, get_a, get_b = a.set_exact, b.set_exact, a.exact_value, b.exact_value

        def put(v):
            put_a(v[0])
            put_b(v[1])

        return self._bind(key, box, lambda: (get_a(), get_b()), put, tip)

    def add_subset(self, key, value: Sequence[str], choices: Sequence[str], tip="") -> QWidget:
        """One check box per choice; the value is the tuple of checked names."""
        boxes = {c: QCheckBox(c) for c in choices}
        for c, cb in boxes.items():
            cb.setChecked(c in value)
        box = QWidget()
        box.setLayout(row(*boxes.values(), stretch_first=False))
        box.boxes = boxes

        def put(v):
            for c, cb in boxes.items():
                cb.setChecked(c in v)

        return self._bind(
            key, box, lambda: tuple(c for c, cb in boxes.items() if cb.isChecked()), put, tip
        )

    def add_config_rows(
        self,
        form: QFormLayout,
        rows,
        classes: dict[str, type],
        default: Callable[[str], Any] | None = None,
    ) -> None:
        """Add one form row per ``(label, key[, kwargs])``. A key ``"<group>.<name>"``
        (``"<name>"``: group ``""``) whose group is in ``classes`` is the field ``name`` of
        ``classes[group]`` (:meth:`add_config_field` with ``kwargs``); any other key (an
        option that is no config field) is ``add_<kind>(key, default(key), **kwargs)``
        with ``kind`` taken from ``kwargs``."""
        for label, key, *kw in rows:
            kw = dict(kw[0]) if kw else {}
            group, _, name = key.rpartition(".")
            if group in classes and "kind" not in kw:
                w = self.add_config_field(classes[group], name, key, **kw)
            else:
                kind = kw.pop("kind")
                w = getattr(self, f"add_{kind}")(key, default(key), **kw)
            form.addRow(label, w)

    def keys(self) -> list[str]:
        return list(self._get)

    def values(self) -> dict:
        """The current values as a nested dict (``"a.b"`` -> ``{"a": {"b": ...}}``)."""
        out: dict = {}
        for key, get in self._get.items():
            *parents, leaf = key.split(".")
            d = out
            for p in parents:
                d = d.setdefault(p, {})
            d[leaf] = get()
        return out

    def set_values(self, values: dict, prefix: str = "") -> list[str]:
        """Fill the fields from a nested dict; returns the dotted keys that were set."""
        done = []
        for k, v in values.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and key not in self._set:
                done += self.set_values(v, prefix=f"{key}.")
            elif key in self._set:
                self._set[key](v)
                done.append(key)
        return done

    def set_enabled(self, enabled: bool) -> None:
        for w in self.widgets.values():
            w.setEnabled(enabled)


# --------------------------------------------------------------------------- run controls


def run_buttons(text: str, on_run, on_stop) -> tuple[QPushButton, QPushButton, QHBoxLayout]:
    """A run button and a (disabled) Stop button side by side."""
    run_btn = QPushButton(text)
    run_btn.clicked.connect(on_run)
    stop_btn = QPushButton("Stop")
    stop_btn.setEnabled(False)
    stop_btn.clicked.connect(on_stop)
    return run_btn, stop_btn, row(run_btn, stop_btn, stretch_first=False)


def watch_layers(viewer, callback: Callable[..., None]) -> None:
    """Call ``callback(event)`` whenever the layer list or a layer's name changes."""

    def changed(event=None):
        if event is not None and getattr(event, "type", "") == "inserted":
            lay = getattr(event, "value", None)
            if lay is not None:
                lay.events.name.connect(changed)
        callback(event)

    for ev in ("inserted", "removed", "moved", "changed"):
        getattr(viewer.layers.events, ev).connect(changed)
    for lay in viewer.layers:
        lay.events.name.connect(changed)


_FORMAT_PROPERTY = "sim_uq_format"


def progress_bar(fmt: str | None = None) -> QProgressBar:
    """A progress bar whose text is ``fmt`` (Qt's, e.g. ``"batch %v / %m"``; default
    ``"%p%"``) while it shows progress."""
    bar = QProgressBar()
    bar.setProperty(_FORMAT_PROPERTY, fmt or "%p%")
    bar.setFormat(fmt or "%p%")
    bar.setRange(0, 1)
    bar.setValue(0)
    return bar


def set_progress(bar: QProgressBar, step, total, fmt: str | None = None) -> None:
    """Show ``step`` of ``total`` (:func:`set_waiting` when ``total`` is unknown), with
    the bar's own text format unless ``fmt`` is given.

    ``QProgressBar.setValue`` repaints the bar at once (synchronously) whenever its text
    changes; in a napari window every repaint composites the whole window, 10-25 ms on
    software-rendered OpenGL, per bar and per event. Updates are switched off around the
    change, and switching them back on schedules one ordinary, deferred repaint, which Qt
    merges with the others of the same event-loop turn.
    """
    if not total:
        set_waiting(bar)
        return
    bar.setUpdatesEnabled(False)
    try:
        bar.setFormat(fmt or bar.property(_FORMAT_PROPERTY) or "%p%")
        bar.setRange(0, int(total))
        bar.setValue(min(int(step), int(total)))
    finally:
        bar.setUpdatesEnabled(True)


def set_waiting(bar: QProgressBar, text: str = "starting …") -> None:
    """An empty bar showing ``text``, for work whose length is not known yet.

    Not Qt's busy indicator (``setRange(0, 0)``): its animation repaints the window all
    the time, which on software-rendered OpenGL (Xvfb, remote desktops, VMs without a
    GPU) took a core from the job and doubled the event loop's median tick
    (``bench/ui_responsiveness.py``).
    """
    bar.setUpdatesEnabled(False)  # one deferred repaint (see set_progress)
    try:
        bar.setRange(0, 1)
        bar.setValue(0)
        bar.setFormat(text)
    finally:
        bar.setUpdatesEnabled(True)


def image_layers(viewer) -> list:
    """The viewer's image layers, in layer-list order."""
    from napari.layers import Image

    return [lay for lay in viewer.layers if isinstance(lay, Image)]


def fill_combo(combo, names: list[str], default: str | None = None, keep: str | None = None):
    """Replace a combo box's items without emitting signals; the choice ``keep`` (default:
    the current one) stays when it is still there, else ``default`` when given."""
    keep = combo.currentText() if keep is None else keep
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(names)
    if keep in names:
        combo.setCurrentText(keep)
    elif default is not None and default in names:
        combo.setCurrentText(default)
    combo.blockSignals(False)


def layer_named(viewer, name: str):
    """The viewer's layer called ``name``, or ``None`` (empty name or no such layer)."""
    return viewer.layers[name] if name and name in viewer.layers else None


def browse_checkpoint(parent: QWidget, edit: QLineEdit, title: str) -> None:
    """A file dialog for a ``.pt`` checkpoint; the chosen path goes into ``edit``."""
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getOpenFileName(
        parent, title, "", "PyTorch checkpoints (*.pt *.pth);;All files (*)"
    )
    if path:
        edit.setText(path)


def checkpoint_field(
    placeholder: str, tip: str, example_tip: str, on_browse: Callable[[], None]
) -> tuple[QLineEdit, QPushButton, QPushButton, QHBoxLayout]:
    """A checkpoint path field (empty: the bundled example model, ``placeholder``), a
    "Browse…" button calling ``on_browse`` (e.g. :func:`browse_checkpoint`) and an
    "Example" button that empties the field; returns them and their row."""
    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)
    edit.setToolTip(tip)
    browse_btn = QPushButton("Browse…")
    browse_btn.clicked.connect(on_browse)
    example_btn = QPushButton("Example")
    example_btn.setToolTip(example_tip)
    example_btn.clicked.connect(edit.clear)
    return edit, browse_btn, example_btn, row(edit, browse_btn, example_btn)


def signature_defaults(*functions: Callable) -> dict:
    """The keyword defaults of ``functions`` (a later function's win): a console function's
    defaults become a widget's, kept in one place."""
    out: dict = {}
    for fn in functions:
        out.update(
            (k, p.default)
            for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty
        )
    return out


def mask_layer_kind(layer) -> str | None:
    """Which kind of missing-region layer ``layer`` is ("labels", "shapes"), or None."""
    from napari.layers import Labels, Shapes

    if isinstance(layer, Labels):
        return "labels"
    if isinstance(layer, Shapes):
        return "shapes"
    return None


class MissingRegionChoice:
    """A combo box (``combo``) choosing the missing region of a 2D image: fixed entries
    (e.g. "none (NaN pixels only)"; the first is the default), then the viewer's Labels
    layers (painted label > 0 = missing) and Shapes layers (inside a shape = missing).

    :meth:`refresh` follows the layer list (call it from the widget's layer watcher); a
    Labels or Shapes layer added while the first entry is chosen becomes the choice (the
    user just made one to paint on); any other choice stays until its layer is gone."""

    def __init__(self, viewer, fixed: Sequence[str], tip: str = "") -> None:
        self.viewer = viewer
        self.fixed = tuple(fixed)
        self.combo = QComboBox()
        if tip:
            self.combo.setToolTip(tip)

    def refresh(self, event=None) -> None:
        current = self.combo.currentText()
        added = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        names = [lay.name for lay in self.viewer.layers if mask_layer_kind(lay)]
        if current in ("", self.fixed[0]) and added is not None and mask_layer_kind(added):
            current = added.name  # a region to paint was just added: it is the mask
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItems([*self.fixed, *names])
        self.combo.setCurrentText(current if current in (*self.fixed, *names) else self.fixed[0])
        self.combo.blockSignals(False)

    @property
    def text(self) -> str:
        return self.combo.currentText()

    def layer(self):
        """The chosen Labels / Shapes layer, or None (a fixed entry, or the layer is gone)."""
        name = self.text
        return None if name in self.fixed else layer_named(self.viewer, name)

    def observed(self, source):
        """The observed pixels (bool, True = observed) of ``source`` (an
        :class:`~napari_sim_uq.api.Image2DSource`) under the chosen layer, or None for a
        fixed entry; :class:`InputError` for a layer that is gone, does not fit the image or
        leaves nothing observed (NaN pixels count as missing)."""
        from napari_sim_uq.api import mask_from_layer
        from napari_sim_uq.core.data.observed import observed_mask

        name, layer = self.text, self.layer()
        if layer is None and name not in self.fixed:
            self.refresh()
            raise InputError(f"the mask layer '{name}' is gone; choose the missing region again")
        # the layer itself: mask_from_layer tells Labels from Shapes by the type's name,
        # which napari's PublicOnlyProxy (what plugin widgets are given) hides
        mask = None if layer is None else mask_from_layer(_unwrapped(layer), source.data.shape)
        observed_mask(source.data, mask, f"'{source.name}'")  # everything masked: say so now
        return mask


def build_job_dock(
    widget: QWidget,
    rows: list[tuple[str, Any]],
    *,
    advanced: QWidget | None = None,
    result_text: str | None = None,
    result_tip: str = "",
    stop_tip: str = "stop at the next progress step; no layer is changed",
) -> QVBoxLayout:
    """The layout of a dock widget that runs one job: a form of ``rows`` (label, widget),
    the ``advanced`` section, Run / Stop buttons, progress bar, status line and, with
    ``result_text``, a selectable, word-wrapped result label. Sets ``widget.run_btn``,
    ``stop_btn``, ``progress``, ``status``, ``result_label`` (``None`` without
    ``result_text``), ``form`` and ``box`` (returned); Run and Stop call ``widget.run``
    and ``widget.stop``."""
    widget.run_btn, widget.stop_btn, buttons = run_buttons(widget.run_text, widget.run, widget.stop)
    widget.stop_btn.setToolTip(stop_tip)
    widget.progress = progress_bar()
    widget.status = status_label()
    widget.result_label = None
    if result_text is not None:
        widget.result_label = QLabel(result_text)
        widget.result_label.setWordWrap(True)
        widget.result_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        widget.result_label.setToolTip(result_tip)
    widget.form = form = QFormLayout()
    for label, field_widget in rows:
        form.addRow(label, field_widget)
    widget.box = box = QVBoxLayout(widget)
    box.addLayout(form)
    if advanced is not None:
        box.addWidget(advanced)
    box.addLayout(buttons)
    box.addWidget(widget.progress)
    box.addWidget(widget.status)
    if widget.result_label is not None:
        box.addWidget(widget.result_label)
    box.addStretch(1)
    return box


def status_label(text: str = "ready", lines: int = 2) -> QLabel:
    """A word-wrapped status line at least ``lines`` lines high, so that messages of up
    to that many lines do not move what lies below it."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setMinimumHeight(lines * label.fontMetrics().lineSpacing() + 4)
    return label


def notify(widget: QWidget, kind: str, message: str) -> None:
    """The napari notification ``show_<kind>`` (info, warning, error), taken from the
    module of ``widget``'s class where it imports one (so that it can be replaced there)."""
    module = sys.modules.get(type(widget).__module__)
    show = getattr(module, f"show_{kind}", None) or getattr(notifications, f"show_{kind}")
    show(message)


def error_message(err: BaseException, what: str) -> str:
    """The text shown for an exception: the message of a user error (bad input, a file
    that exists), else ``"<what> failed: <type>: <message>"``; never a traceback."""
    if isinstance(err, (SimUqError, FileExistsError)):
        return str(err)
    return f"{what} failed: {type(err).__name__}: {err}"


# --------------------------------------------------------------------------- layers


#: pause between two layer adds of a :class:`LayerAdder`: long enough for the repaint that
#: follows an add to run before the next add (with a 0 ms timer Qt often ran the next add
#: first, and the event loop stalled for two adds and a repaint at a time)
LAYER_ADD_GAP_MS = 30


def _unwrapped(obj):
    """The napari object behind the ``PublicOnlyProxy`` that plugin widgets are given."""
    return getattr(obj, "__wrapped__", obj)


class LayerAdder:
    """Add layer data tuples to a viewer one at a time, :data:`LAYER_ADD_GAP_MS` apart.

    Adding an image layer costs napari 100-200 ms of GUI-thread time here (layer
    controls, visuals, selection); seven at once would freeze the viewer for a second.
    Between two adds the viewer repaints and handles input. New layers are inserted
    without making each one the active layer (napari's ``_activate_on_insert``, when it
    exists: the selection change is nearly half of an add's cost); after the last add the
    first new layer becomes the active one, as napari does for a single add.
    ``done(layers)`` follows, ``error(exc)`` a failed add, and ``finished()`` either of
    them. With
    ``NAPARI_SIM_UQ_NOTHREADS=1`` all is done at once. Layers of the same name are
    replaced (:func:`napari_sim_uq.api.add_or_replace_layers`). :data:`GC_FREEZE` is
    held until the end.
    """

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.pending: list = []
        self.layers: list = []
        self._finishing = False
        self._inserted = False
        self._run = 0  # a restart makes the timers of the earlier run no-ops
        self._done = self._error = self._finished = None

    @property
    def busy(self) -> bool:
        return bool(self.pending) or self._finishing

    def start(self, layer_data: list, done, error, finished=None) -> None:
        if not self.busy:
            GC_FREEZE.hold(self.viewer)
        self._run += 1
        self.pending, self.layers = list(layer_data), []
        self._inserted = False
        self._finishing = bool(self.pending)
        self._done, self._error, self._finished = done, error, finished
        if not self.pending:
            GC_FREEZE.release()
            self._end(done, [])
            return
        if no_threads():
            while self.pending:
                if not self._add_one():
                    return
            self._finish(self._run)
            return
        self._later(0, self._step)

    def _later(self, ms: int, fn) -> None:
        from qtpy.QtCore import QTimer

        run = self._run
        QTimer.singleShot(ms, lambda: fn(run) if run == self._run else None)

    def _step(self, run: int) -> None:
        if self.pending and self._add_one():
            self._later(LAYER_ADD_GAP_MS, self._step if self.pending else self._finish)

    def _add_one(self) -> bool:
        from napari_sim_uq.api import add_or_replace_layers

        item = self.pending.pop(0)
        layers = _unwrapped(self.viewer.layers)
        self._inserted |= item[1]["name"] not in layers
        activate = getattr(layers, "_activate_on_insert", None)  # private in napari
        try:
            if activate is not None:
                layers._activate_on_insert = False
            self.layers += add_or_replace_layers(self.viewer, [item])
        except Exception as err:  # shown by the widget, never raised into Qt
            self.pending, self._finishing = [], False
            GC_FREEZE.release()
            self._end(self._error, err)
            return False
        finally:
            if activate is not None:
                layers._activate_on_insert = activate
        return True

    def _finish(self, run: int) -> None:
        if self._inserted and self.layers:
            try:
                layers = _unwrapped(self.viewer.layers)
                layers.selection.active = _unwrapped(self.layers[0])
            except Exception:  # e.g. the layer was removed meanwhile: selection unchanged
                pass
        self._finishing = False
        GC_FREEZE.release()
        self._end(self._done, self.layers)

    def _end(self, callback, arg) -> None:
        try:
            callback(arg)
        finally:
            if self._finished is not None:
                self._finished()


# --------------------------------------------------------------------------- jobs


class ClosingGeneratorWorker(GeneratorWorker):
    """A generator worker that closes its generator in the worker thread when it ends.

    napari's ``worker.quit()`` only stops calling the generator: the job would stay
    suspended at its last ``yield`` until garbage collection closes it, on whatever
    thread that happens. Closing it here runs the job's ``finally`` (e.g. the training
    job's checkpoint save) at once and off the GUI thread; ``finished`` is emitted after.
    """

    def work(self):
        try:
            return super().work()
        finally:
            self._gen.close()


class JobRunner:
    """Run jobs in a napari generator thread worker (one at a time).

    ``on_event(Event)`` gets every yielded event, ``on_returned(result)`` the job's return
    value, ``on_error(exception)`` any exception (also one raised before the first event),
    ``on_aborted()`` a stop, ``on_finished()`` the end in every case; all on the GUI
    thread. With ``NAPARI_SIM_UQ_NOTHREADS=1`` the job runs to its end inside
    :meth:`start`, calling the same callbacks. ``torch_threads`` sets torch's intra-op
    thread count while the job runs (restored afterwards); :data:`GC_FREEZE` is held
    while it runs.
    """

    def __init__(
        self, on_event, on_returned, on_error, on_aborted, on_finished, viewer=None
    ) -> None:
        self.viewer = viewer  # for GC_FREEZE: layers removed meanwhile are collected
        self.on_event = on_event
        self.on_returned = on_returned
        self.on_error = on_error
        self.on_aborted = on_aborted
        self.on_finished = on_finished
        self.worker = None

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, make_job: Callable[[], Any], torch_threads: int | None = None) -> None:
        if self.worker is not None:
            return

        def job():
            if not torch_threads:
                return (yield from make_job())
            import torch

            before = torch.get_num_threads()
            torch.set_num_threads(int(torch_threads))
            try:
                return (yield from make_job())
            finally:
                torch.set_num_threads(before)

        if no_threads():
            from napari_sim_uq.core.events import run

            try:
                result = run(job(), self.on_event)
            except Exception as err:  # shown to the user, never a crash
                self.on_error(err)
            else:
                self.on_returned(result)
            finally:
                self.on_finished()
            return

        worker = thread_worker(job, worker_class=ClosingGeneratorWorker, ignore_errors=True)()
        worker.yielded.connect(self.on_event)
        worker.returned.connect(self.on_returned)
        worker.errored.connect(self.on_error)
        worker.aborted.connect(self.on_aborted)
        worker.finished.connect(self._finished)
        self.worker = worker
        GC_FREEZE.hold(self.viewer)
        worker.start()

    def quit(self) -> None:
        """Ask the running job to stop at its next event (``worker.quit()``); the job is
        closed in the worker thread, and ``on_finished`` follows once it has cleaned up."""
        if self.worker is not None:
            self.worker.quit()

    def _finished(self) -> None:
        self.worker = None
        GC_FREEZE.release()
        self.on_finished()


class JobWidget(QWidget):
    """Base of the dock widgets that run jobs: ``viewer``, a :class:`JobRunner` wired to
    the subclass's ``_on_event``, ``_on_returned``, ``_on_error``, ``_on_aborted`` and
    ``_on_finished``, and (``adds_layers=True``) a :class:`LayerAdder` for result layers.
    """

    def __init__(self, napari_viewer, parent=None, *, adds_layers: bool = False) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.runner = JobRunner(
            self._on_event,
            self._on_returned,
            self._on_error,
            self._on_aborted,
            self._on_finished,
            viewer=napari_viewer,
        )
        self.adder = LayerAdder(napari_viewer) if adds_layers else None

    @property
    def worker(self):
        """The running thread worker, or None."""
        return self.runner.worker

    @property
    def busy(self) -> bool:
        """A job runs (or is stopping), or its result layers are still being added."""
        return self.runner.running or (self.adder is not None and self.adder.busy)

    # defaults for widgets with one ``progress`` bar and a ``status`` label

    def stop(self) -> None:
        """Ask the running job to stop at its next progress event."""
        if self.runner.running:
            self.status.setText("stopping …")
            self.runner.quit()

    def _on_event(self, ev) -> None:
        set_progress(self.progress, ev.step, ev.total)
        self.status.setText(ev.message or ev.stage)


class PreparedJobMixin:
    """``run()`` for a :class:`JobWidget` with one ``progress`` bar and a ``status`` label
    whose settings become a job in ``_prepare()``: it returns the job factory (and sets
    ``_source``, the input image with its ``name``) or raises
    :class:`~napari_sim_uq.core.errors.SimUqError` when the settings do not fit, shown by
    ``_fail``. Warnings raised while preparing (e.g. a colour image converted to grey) become
    napari warnings; ``_clear_result()`` resets what the last run showed; ``verb`` is shown
    while the job runs, with torch on :func:`default_torch_threads`."""

    def _prepare(self):
        raise NotImplementedError

    def _clear_result(self) -> None:
        """Reset what the last run showed (nothing here)."""

    def run(self) -> None:
        """Check the settings and start the job (no-op while one is running)."""
        if self.busy:
            return
        self._clear_result()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                make_job = self._prepare()
            except SimUqError as err:
                self._fail(str(err))
                return
        for message in dict.fromkeys(str(w.message) for w in caught):
            notify(self, "warning", message)
        self._set_running(True)
        self.status.setText(f"{self.verb} of '{self._source.name}' …")
        self.runner.start(make_job, torch_threads=default_torch_threads())


class TrainingWidget(JobWidget):
    """Base of the training dock widgets (Train SIM model, Train 2D): the run controls,
    Start / Stop, the GUI-thread slots that move the progress bars and feed the live loss
    plot, and "Use in Reconstruct …".

    A subclass builds ``fields``, ``threads_spin`` and the ``use_btn``, and gives
    ``_prepare()`` (``(job factory, config dict)``, InputError if the settings are not
    usable), ``_run_dir()`` (the folder of latest.pt / best.pt, or None) and
    ``_run_lock_widgets()`` (what is disabled while a run goes on, besides the fields).
    """

    PLUGIN = "napari-sim-uq"
    #: the plugin's dock widget that "Use in Reconstruct …" opens
    RECONSTRUCT_WIDGET = ""
    #: what the run folder is called in messages ("checkpoint folder", "output folder")
    RUN_DIR_NAME = "checkpoint folder"
    #: shown for a validation event without a ``val_loss``
    MISSING_VAL_LOSS = math.nan
    #: keep "Use in Reconstruct …" disabled while a run goes on
    USE_WAITS_FOR_RUN = False

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(napari_viewer, parent)
        self.last_result: dict | None = None
        self._stopping = False
        self._reset_progress_state()

    def _build_run_controls(self, plot_tip: str | None = None) -> QHBoxLayout:
        """Create the Start / Stop buttons (their row is returned), the progress bars, the
        status line, the live loss plot and its check box, and the checkpoint label."""
        from napari_sim_uq._napari._loss_plot import LossPlot

        self.start_btn, self.stop_btn, buttons = run_buttons("Start", self.start, self.stop)
        self.stop_btn.setToolTip("stop after the current batch; latest.pt stays resumable")
        self.epoch_bar = progress_bar("epoch %v / %m")
        self.batch_bar = progress_bar("batch %v / %m")
        self.status = status_label()
        self.plot_check = QCheckBox("live loss plot")
        self.plot_check.setChecked(True)
        if plot_tip:
            self.plot_check.setToolTip(plot_tip)
        self.plot = LossPlot()
        self.plot_check.toggled.connect(self.plot.set_enabled)
        self.ckpt_info = QLabel("no checkpoint yet")
        self.ckpt_info.setWordWrap(True)
        self.ckpt_info.setTextInteractionFlags(Qt.TextSelectableByMouse)
        return buttons

    def _add_threads_row(self, form: QFormLayout) -> None:
        """Add the "CPU threads" row (``threads_spin``, in ``run_opts``: an option of the
        widget, not of the training config) to ``form``."""
        self.run_opts = Fields()
        self.threads_spin = self.run_opts.add_int(
            "threads",
            default_torch_threads(),
            0,
            max(os.cpu_count() or 1, 1),
            "torch CPU threads while training (0: torch's default); leaving one core to "
            "the viewer keeps it responsive",
            min_label="default",
        )
        form.addRow("CPU threads", self.threads_spin)

    # ------------------------------------------------------------------ subclass hooks

    def _prepare(self):
        raise NotImplementedError

    def _run_dir(self) -> Path | None:
        raise NotImplementedError

    def _run_lock_widgets(self) -> tuple:
        return ()

    def _start_plot(self, cfg: dict) -> None:
        """Set up the loss plot for a run starting with ``cfg``."""
        self.plot.clear_data(cfg["epochs"])
        self.plot.request_redraw(force=True)

    # ------------------------------------------------------------------ checkpoints

    def _update_ckpt_info(self) -> None:
        d = self._run_dir()
        best = d / "best.pt" if d else None
        ok = best is not None and best.is_file()
        self.ckpt_info.setText(
            f"best.pt: {best}" if ok else f"no best.pt in the {self.RUN_DIR_NAME} yet"
        )
        self.use_btn.setEnabled(ok and not (self.USE_WAITS_FOR_RUN and self.runner.running))

    def use_in_reconstruct(self) -> None:
        """Open the Reconstruct widget with this folder's best.pt as its checkpoint."""
        d = self._run_dir()
        if d is None or not (d / "best.pt").is_file():
            self._fail(f"no best.pt in the {self.RUN_DIR_NAME} yet")
            return
        _dock, widget = self.viewer.window.add_plugin_dock_widget(
            self.PLUGIN, self.RECONSTRUCT_WIDGET
        )
        widget.checkpoint_edit.setText(str(d / "best.pt"))
        self._notify("info", f"{self.RECONSTRUCT_WIDGET} uses {d / 'best.pt'}")

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        """Check the settings and start training in a thread worker."""
        if self.runner.running:
            return
        try:
            make_job, cfg = self._prepare()
        except SimUqError as err:
            self._fail(str(err))
            return
        self._reset_progress_state(cfg)
        self._start_plot(cfg)
        self._stopping = False
        self._set_running(True)
        self.status.setText("starting …")
        self.runner.start(make_job, torch_threads=self.threads_spin.value() or None)

    def stop(self) -> None:
        """Stop after the current batch; the job saves latest.pt before it ends."""
        if self.runner.running:
            self._stopping = True
            self.status.setText("stopping after this batch …")
            self.runner.quit()

    # ------------------------------------------------------------------ GUI-thread slots

    def _reset_progress_state(self, cfg: dict | None = None) -> None:
        self._epochs = int(cfg["epochs"]) if cfg else 1
        self._limited = bool(cfg and cfg.get("max_steps"))
        self._epoch = None  # epoch of the batches being received (1-based)
        self._epoch_sum = 0.0
        self._epoch_n = 0
        self._epoch_first_step = 0
        self._steps_per_epoch = None
        self._last_step = 0

    def _flush_epoch(self) -> None:
        if self._epoch is not None and self._epoch_n:
            self.plot.add_train(self._epoch, self._epoch_sum / self._epoch_n)
        self._epoch_n, self._epoch_sum = 0, 0.0

    def _on_event(self, ev) -> None:
        m = ev.metrics
        if ev.stage == "train":
            epoch = int(m.get("epoch", 1))
            if epoch != self._epoch:
                self._flush_epoch()
                if self._epoch is not None:
                    self.plot.request_redraw()  # an epoch ended
                self._epoch = epoch
                self._epoch_first_step = ev.step - 1
                if ev.total and not self._limited:
                    self._steps_per_epoch = max(1, int(ev.total) // self._epochs)
            self._last_step = ev.step
            loss = float(m.get("loss", math.nan))
            self._epoch_sum += loss
            self._epoch_n += 1
            in_epoch = ev.step - self._epoch_first_step
            spe = self._steps_per_epoch
            if spe:
                self.plot.add_batch(epoch - 1 + in_epoch / spe, loss)
                set_progress(self.batch_bar, min(in_epoch, spe), spe)
            elif ev.total:
                set_progress(self.batch_bar, ev.step, ev.total, "step %v / %m")
            set_progress(self.epoch_bar, epoch - 1, self._epochs)
            self.status.setText(
                f"epoch {epoch}/{self._epochs}, step {ev.step}"
                + (f"/{ev.total}" if ev.total else "")
                + f", loss {loss:.4g}"
            )
        elif ev.stage == "validate":
            self._flush_epoch()
            self.plot.add_val(ev.step, float(m.get("val_loss", math.nan)))
            set_progress(self.epoch_bar, min(int(ev.step), self._epochs), self._epochs)
            val_loss = m.get("val_loss", self.MISSING_VAL_LOSS)
            self.status.setText(f"epoch {ev.step}: validation loss {val_loss:.4g}")
            self.plot.request_redraw()
        elif ev.message:
            self.status.setText(ev.message)

    def _on_returned(self, result) -> None:
        self.last_result = result
        self._flush_epoch()
        self.plot.request_redraw(force=True, tidy=True)
        set_progress(self.epoch_bar, min(int(result["epochs_done"]), self._epochs), self._epochs)
        where = result["best"] or result["latest"]
        msg = (
            f"trained {result['epochs_done']} epochs ({result['steps']} steps) on "
            f"{result['device']} in {result['seconds']:.1f} s; best: {where}"
        )
        self.status.setText(msg)
        self._notify("info", msg)

    def _on_error(self, err: BaseException) -> None:
        self._fail(error_message(err, "training"))

    def _on_aborted(self) -> None:
        self.status.setText("stopping: saving latest.pt …")

    def _on_finished(self) -> None:
        self._set_running(False)
        self._update_ckpt_info()
        if self._stopping:
            self._stopping = False
            self._flush_epoch()
            self.plot.request_redraw(force=True, tidy=True)
            d = self._run_dir()
            latest = d / "latest.pt" if d else None
            if latest is not None and latest.is_file():
                msg = f"stopped at step {self._last_step}; {latest} is resumable (tick 'resume')"
            else:
                msg = "stopped before the first step; no checkpoint was written"
            self.status.setText(msg)
            self._notify("warning", msg)

    def _fail(self, message: str) -> None:
        self.status.setText(message)
        self._notify("error", message)

    def _notify(self, kind: str, message: str) -> None:
        """The napari notification ``show_<kind>`` (:func:`notify`)."""
        notify(self, kind, message)

    def _set_running(self, running: bool) -> None:
        self.fields.set_enabled(not running)
        for w in (self.start_btn, *self._run_lock_widgets()):
            w.setEnabled(not running)
        self.stop_btn.setEnabled(running)
        if running:
            self.use_btn.setEnabled(False)
            set_progress(self.epoch_bar, 0, self._epochs)
            set_waiting(self.batch_bar)  # until the first batch
