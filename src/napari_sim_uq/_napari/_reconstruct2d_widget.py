"""Dock widget "Reconstruct 2D": a 2D autoencoder applied to an image layer (DESIGN.md 2).

The chosen layer gives ``"<layer> mean"``, ``"<layer> std"`` (total), ``"<layer> epistemic
std"`` and ``"<layer> aleatoric std"`` (and, with "degrade first", ``"<layer> degraded"``),
on the layer's pixel grid. The job (:func:`napari_sim_uq.api.reconstruct_2d_job`) and the
layer builder (:func:`napari_sim_uq.api.layer_data_2d`) are the ones
``napari_sim_uq.reconstruct_2d(..., viewer=viewer)`` uses, so the widget and the console give
the same layers. The job runs in a generator thread worker
(:class:`~napari_sim_uq._napari._widgets.JobRunner`; ``NAPARI_SIM_UQ_NOTHREADS=1`` runs it on
the calling thread); Stop ends it at its next progress event and changes no layer. User
errors are napari notifications and the status line; no layer is added on an error.

:class:`Image2DJobWidget` is shared with the "Anomaly map" widget
(``_anomaly_widget.py``), which asks for the anomaly-score output instead.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import fields as dc_fields

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
)

from napari_sim_uq._napari._widgets import (
    Fields,
    JobWidget,
    browse_checkpoint,
    default_torch_threads,
    error_message,
    fill_combo,
    image_layers,
    layer_named,
    progress_bar,
    row,
    run_buttons,
    set_progress,
    set_waiting,
    status_label,
    watch_layers,
)
from napari_sim_uq.api import (
    image2d_source,
    layer_data_2d,
    reconstruct_2d,
    reconstruct_2d_job,
    resolve_2d_checkpoint,
)
from napari_sim_uq.core.config import field_default, option_meta
from napari_sim_uq.core.devices import DEVICE_CHOICES
from napari_sim_uq.core.errors import InputError, SimUqError
from napari_sim_uq.tasks.ae2d.predict import AE2D_OUTPUTS
from napari_sim_uq.tasks.ae2d.train import Train2DConfig

__all__ = ["Image2DJobWidget", "Reconstruct2DWidget"]

#: the console function's defaults are the widget's (one place for them)
_DEFAULTS = {
    k: p.default
    for k, p in inspect.signature(reconstruct_2d).parameters.items()
    if p.default is not inspect.Parameter.empty
}


def _train_field(name: str):
    return next(fl for fl in dc_fields(Train2DConfig) if fl.name == name)


def _degrade_help() -> str:
    return (
        "degrade the image first (as training pairs were made), then reconstruct it: "
        "e.g. noise:0.1, poisson:100, jpeg:30, mask:boxes, blur:1.5 (docs/cli.md)"
    )


class Image2DJobWidget(JobWidget):
    """A 2D image layer, a checkpoint and the MC options -> layers from one output table.

    Subclasses set ``outputs`` (the output table), ``scores`` (whether the job computes
    anomaly scores), ``layer_label``, ``verb`` and ``what``, and may override
    :meth:`_describe` and :meth:`_add_result_widgets`."""

    outputs = AE2D_OUTPUTS
    scores = False
    layer_label = "image layer"
    verb = "reconstructing"
    what = "reconstruction"  # in "<what> failed: ..." messages
    run_text = "Run"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent, adds_layers=True)
        self.last_layers: list = []
        self.last_prediction = None

        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("a 2D image (grey or RGB; RGB is converted to grey)")
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("bundled 2D model")
        self.checkpoint_edit.setToolTip(
            "a 2D checkpoint (.pt) from Train 2D / `sim-uq train-2d`; empty: the bundled "
            "example model (a denoiser for noise:0.1)"
        )
        self.browse_btn = QPushButton("Browse…")
        self.browse_btn.clicked.connect(self._browse)
        self.example_btn = QPushButton("Example")
        self.example_btn.setToolTip("use the bundled 2D example model")
        self.example_btn.clicked.connect(self.checkpoint_edit.clear)

        f = self.options = Fields()  # this widget's options (the console function's keywords)
        self.mc_spin = f.add_int(
            "mc_samples",
            _DEFAULTS["mc_samples"],
            1,
            1024,
            "MC dropout samples: the epistemic std needs at least 2 (1: aleatoric only)",
        )
        self.degrade_check = QCheckBox("degrade first")
        self.degrade_check.setToolTip(_degrade_help())
        meta = option_meta(_train_field("degrade")) or {}
        self.degrade_edit = f.add_text(
            "degrade_spec",
            field_default(_train_field("degrade")),
            _degrade_help() + "\n\nTraining option: " + meta.get("help", ""),
        )
        self.degrade_edit.setEnabled(False)
        self.degrade_check.toggled.connect(self.degrade_edit.setEnabled)
        self.seed_spin = f.add_int(
            "seed", _DEFAULTS["seed"], 0, 2_000_000_000, "seed of the MC dropout and degradation"
        )
        self.device_combo = f.add_choice(
            "device", DEVICE_CHOICES[0], DEVICE_CHOICES, "auto: a GPU if there is one, else CPU"
        )

        self.run_btn, self.stop_btn, buttons = run_buttons(self.run_text, self.run, self.stop)
        self.progress = progress_bar()
        self.status = status_label()

        self.form = form = QFormLayout()
        form.addRow(self.layer_label, self.layer_combo)
        form.addRow("checkpoint", row(self.checkpoint_edit, self.browse_btn, self.example_btn))
        form.addRow("MC samples", self.mc_spin)
        form.addRow(self.degrade_check, self.degrade_edit)
        form.addRow("seed", self.seed_spin)
        form.addRow("device", self.device_combo)
        self.box = box = QVBoxLayout(self)
        box.addLayout(form)
        box.addLayout(buttons)
        box.addWidget(self.progress)
        box.addWidget(self.status)
        self._add_result_widgets(box)
        box.addStretch(1)

        watch_layers(self.viewer, self._refresh_layers)
        self._refresh_layers()

    def _add_result_widgets(self, box: QVBoxLayout) -> None:
        """Widgets below the status line (none here)."""

    # ------------------------------------------------------------------ layer choice

    def _candidates(self) -> list:
        """2D image layers (grey or RGB), without this task's own outputs first."""
        layers = [
            lay for lay in image_layers(self.viewer) if lay.ndim == 2 or getattr(lay, "rgb", False)
        ]
        outputs = [lay for lay in layers if (lay.metadata or {}).get("sim_uq", {}).get("task")]
        return [lay for lay in layers if lay not in outputs] + outputs

    def _refresh_layers(self, event=None) -> None:
        fill_combo(self.layer_combo, [lay.name for lay in self._candidates()])

    def selected_layer(self):
        return layer_named(self.viewer, self.layer_combo.currentText())

    def _browse(self) -> None:
        browse_checkpoint(self, self.checkpoint_edit, "2D checkpoint")

    # ------------------------------------------------------------------ running

    def job_options(self) -> dict:
        """The console function's keywords for the current settings."""
        v = self.options.values()
        spec = v.pop("degrade_spec")
        degrade = spec if self.degrade_check.isChecked() else None
        if degrade is not None and degrade.lower() in ("", "none"):
            raise InputError("'degrade first' is ticked: give a degradation, e.g. noise:0.1")
        return {**v, "degrade": degrade}

    def run(self) -> None:
        """Start the job on the chosen layer (no-op while one is running)."""
        if self.busy:
            return
        layer = self.selected_layer()
        if layer is None:
            self._fail(f"choose a 2D {self.layer_label} first")
            return
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                source = image2d_source(layer)
            ckpt = resolve_2d_checkpoint(self.checkpoint_edit.text().strip() or None)
            kw = self.job_options()
            if kw["degrade"] is not None:
                from napari_sim_uq.core.data.degrade import parse_degradations

                parse_degradations(kw["degrade"])  # a bad spec: a clear error now
        except SimUqError as err:
            self._fail(str(err))
            return
        for w in caught:
            show_warning(str(w.message))
        self._source = source
        self._set_running(True)
        self.status.setText(f"{self.verb} '{source.name}' …")
        self.runner.start(
            lambda: reconstruct_2d_job(source, ckpt, scores=self.scores, **kw),
            torch_threads=default_torch_threads(),
        )

    # ------------------------------------------------------------------ GUI-thread slots
    # (stop and _on_event: JobWidget's defaults)

    def _on_returned(self, pred) -> None:
        source = self._source
        try:
            layer_data = layer_data_2d(pred, source, self.outputs)
        except Exception as err:  # shown, not raised
            self._on_error(err)
            return
        self.status.setText(f"adding {len(layer_data)} layers …")

        def added(layers):
            self.last_layers = layers
            self.last_prediction = pred
            set_progress(self.progress, 1, 1)
            msg = self._describe(pred, source, layers)
            self.status.setText(msg)
            show_info(msg)

        self.adder.start(layer_data, added, self._on_error, self._on_finished)

    def _describe(self, pred, source, layers) -> str:
        return f"done: {len(layers)} layers for '{source.name}' ({pred.meta['seconds']:.1f} s)"

    def _on_error(self, err: BaseException) -> None:
        self._fail(error_message(err, self.what))

    def _on_aborted(self) -> None:
        self.status.setText("stopped; no layers were changed")

    def _on_finished(self) -> None:
        if not self.busy:
            self._set_running(False)

    def _fail(self, message: str) -> None:
        self.status.setText(message)
        set_progress(self.progress, 0, 1)
        show_error(message)

    def _set_running(self, running: bool) -> None:
        self.run_btn.setEnabled(not running)
        self.stop_btn.setEnabled(running)
        if running:
            set_waiting(self.progress, f"{self.verb} …")


class Reconstruct2DWidget(Image2DJobWidget):
    """Reconstruct a 2D image: mean, total std, epistemic std and aleatoric std layers."""
