"""Dock widget "Reconstruct SIM": run a trained model on a raw SIM layer (DESIGN.md 2).

The job (:func:`~napari_sim_uq.tasks.sim.reconstruct.reconstruct_sim_job`) runs in a napari
generator thread worker (:class:`~napari_sim_uq._napari._widgets.JobRunner`): its progress
events update the bar and status label on the GUI thread, Stop calls ``worker.quit()`` (the
job closes at its next progress event), and ``returned`` adds the layers through
:func:`napari_sim_uq.api.add_or_replace_layers`, the same code path as
``reconstruct_sim(..., viewer=viewer)``. User errors are shown as napari notifications.
``NAPARI_SIM_UQ_NOTHREADS=1`` runs the job on the calling thread.
"""

from __future__ import annotations

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from napari_sim_uq._napari._widgets import (
    NOTHREADS_ENV,
    JobWidget,
    browse_checkpoint,
    default_torch_threads,
    error_message,
    fill_combo,
    image_layers,
    layer_named,
    no_threads,
    progress_bar,
    run_buttons,
    set_progress,
    set_waiting,
    status_label,
    watch_layers,
)
from napari_sim_uq.api import (
    reconstruction_layer_data,
    remove_stale_outputs,
    resolve_checkpoint,
    sim_source,
    wiener_sim,
)
from napari_sim_uq.core.devices import DEVICE_CHOICES
from napari_sim_uq.core.errors import SimUqError
from napari_sim_uq.tasks.sim.reconstruct import reconstruct_sim_job

__all__ = ["DEVICES", "NOTHREADS_ENV", "ReconstructSimWidget"]

DEVICES = DEVICE_CHOICES  # devices.py: one list for every front end
_no_threads = no_threads  # kept for the widgets that import it from here


class ReconstructSimWidget(JobWidget):
    """Reconstruct the chosen raw SIM layer: emitter, light patterns, PSF and std maps."""

    def __init__(self, napari_viewer, parent=None):
        # self.adder adds the result layers one at a time
        super().__init__(napari_viewer, parent, adds_layers=True)
        self.last_layers: list = []

        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("raw SIM stack: (angles*phases, H, W) frames or a series")
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("bundled example model")
        self.checkpoint_edit.setToolTip("a trained checkpoint (.pt); empty: the example model")
        self.browse_btn = QPushButton("Browse…")
        self.browse_btn.clicked.connect(self._browse)
        self.example_btn = QPushButton("Example")
        self.example_btn.setToolTip("use the bundled example model")
        self.example_btn.clicked.connect(self.checkpoint_edit.clear)
        ckpt_row = QHBoxLayout()
        ckpt_row.setContentsMargins(0, 0, 0, 0)
        ckpt_row.addWidget(self.checkpoint_edit, 1)
        ckpt_row.addWidget(self.browse_btn)
        ckpt_row.addWidget(self.example_btn)

        self.mc_spin = QSpinBox()
        self.mc_spin.setRange(0, 512)
        self.mc_spin.setToolTip(
            "MC dropout samples for the epistemic part (0: aleatoric only; an ensemble "
            "checkpoint gives the members' spread without them)"
        )
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 8192)
        self.tile_spin.setSingleStep(32)
        self.tile_spin.setSpecialValueText("whole image")
        self.tile_spin.setToolTip("tile size in raw pixels to bound memory (0: whole image)")
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.wiener_check = QCheckBox("also classical Wiener SIM + pattern check")
        self.wiener_check.setToolTip(
            "estimate the illumination (wave vectors, phases, modulation) from the raw "
            "frames and add a Wiener SIM reconstruction next to the model's, with the "
            "power spectrum and the estimated carriers (hidden layers) to check the estimate"
        )

        self.run_btn, self.stop_btn, buttons = run_buttons("Run", self.run, self.stop)
        self.progress = progress_bar()
        self.status = status_label()

        form = QFormLayout()
        form.addRow("raw SIM layer", self.layer_combo)
        form.addRow("checkpoint", ckpt_row)
        form.addRow("MC samples", self.mc_spin)
        form.addRow("tile size", self.tile_spin)
        form.addRow("device", self.device_combo)
        form.addRow("", self.wiener_check)
        box = QVBoxLayout(self)
        box.addLayout(form)
        box.addLayout(buttons)
        box.addWidget(self.progress)
        box.addWidget(self.status)
        box.addStretch(1)

        watch_layers(self.viewer, self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ layer choice

    def _image_layers(self) -> list:
        return image_layers(self.viewer)

    def _refresh_layers(self, event=None) -> None:
        names = [lay.name for lay in self._image_layers()]
        # prefer a stack (3D or more) over a 2D image
        stacks = [lay.name for lay in self._image_layers() if lay.ndim >= 3]
        fill_combo(self.layer_combo, names, stacks[0] if stacks else None)

    def selected_layer(self):
        return layer_named(self.viewer, self.layer_combo.currentText())

    def _browse(self) -> None:
        browse_checkpoint(self, self.checkpoint_edit, "SIM checkpoint")

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """Start a reconstruction of the chosen layer (no-op while one is running)."""
        if self.busy:
            return
        layer = self.selected_layer()
        if layer is None:
            self._fail("choose a raw SIM image layer first")
            return
        device = self.device_combo.currentText()
        try:
            source = sim_source(layer)
            ckpt = resolve_checkpoint(self.checkpoint_edit.text().strip() or None)
        except SimUqError as err:
            self._fail(str(err))
            return
        job_kw = {
            "mc_samples": self.mc_spin.value(),
            "tile": self.tile_spin.value() or None,
            "device": device,
            "angles": source.angles,
            "phases": source.phases,
            "warn_small_input": False,  # shown from the result's metadata (_show_result)
        }
        self._set_running(True)
        self.status.setText(f"reconstructing '{source.name}' …")
        self._source_device = (source, device)
        want_wiener = self.wiener_check.isChecked()
        self.runner.start(
            lambda: (
                _with_wiener(reconstruct_sim_job(source.data, ckpt, **job_kw), source, ckpt)
                if want_wiener
                else reconstruct_sim_job(source.data, ckpt, **job_kw)
            ),
            torch_threads=default_torch_threads(),
        )

    # ------------------------------------------------------------------ GUI-thread slots
    # (stop and _on_event: JobWidget's defaults)

    def _on_returned(self, result) -> None:
        rec, extra = result if isinstance(result, tuple) else (result, None)
        self._show_result(rec, *self._source_device, extra=extra)

    def _show_result(self, rec, source, device, extra=None) -> None:
        try:
            layer_data = reconstruction_layer_data(rec, source, device=device)
        except Exception as err:  # shown, not raised
            self._on_error(err)
            return
        wiener_note = None
        with_wiener = bool(extra) and not isinstance(extra, str)
        if isinstance(extra, str):  # the Wiener baseline failed: say why, keep the rest
            wiener_note = extra
        elif extra:
            layer_data = layer_data + extra
        self.status.setText(f"adding {len(layer_data)} layers …")

        context = rec.metadata.get("context") or {}
        caveats = [context[k] for k in ("message", "tile_message") if context.get(k)]
        # the raw-domain self-check (no ground truth needed): a model that does not explain
        # the raw frames is flagged first
        check = rec.metadata.get("self_check") or {}
        if check and not check.get("ok", True):
            caveats.insert(0, check["message"])
        if wiener_note:
            caveats.append(wiener_note)
        zms = check.get("raw_zms")

        def added(layers):
            self.last_layers = layers
            set_progress(self.progress, 1, 1)
            msg = f"done: {len(layers)} layers for '{source.name}'"
            if zms is not None:
                msg += f" (self-check: raw ZMS {zms:.2f})"
            if with_wiener:
                msg += (
                    "; with Wiener SIM (pattern check: the hidden layers 'power spectrum' "
                    "and 'carriers')"
                )
            if caveats:  # a small field or tile: the result lacks context (uq.inference)
                self.status.setText(f"{msg}; warning: {caveats[0]}")
                for text in caveats:
                    show_warning(f"'{source.name}': {text}")
                return
            self.status.setText(msg)
            show_info(msg)

        # std parts of an earlier MC run that this run does not make would look current
        remove_stale_outputs(self.viewer, source.name, layer_data)
        self.adder.start(layer_data, added, self._on_error, self._on_finished)

    def _on_error(self, err: BaseException) -> None:
        self._fail(error_message(err, "reconstruction"))

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
            set_waiting(self.progress, "reconstructing …")


def _with_wiener(job, source, ckpt):
    """The reconstruction job, then the Wiener SIM baseline, the estimated light patterns
    (std calibrated by the checkpoint's stored scale, when ``sim-uq calibrate`` stored one)
    and the pattern diagnostics of the same stack; returns ``(rec, layers)``, or
    ``(rec, message)`` when the illumination cannot be estimated (the model's result is
    still shown)."""
    from napari_sim_uq.core.events import Event
    from napari_sim_uq.core.io.checkpoint import load_checkpoint
    from napari_sim_uq.tasks.sim.calibration import stored_pattern_estimate_scale

    rec = yield from job
    if rec.time_series:
        return rec, "Wiener SIM is made for single stacks, not time series: skipped"
    yield Event("wiener", 0, 1, message="Wiener SIM: estimating the illumination …")
    scale = stored_pattern_estimate_scale(load_checkpoint(ckpt))
    try:
        layers = wiener_sim(
            source,
            hr_factor=rec.hr_factor,
            diagnostics=True,
            patterns=True,
            pattern_sigma_scale=scale,
        )
    except SimUqError as err:
        return rec, f"no Wiener SIM: {err}"
    yield Event("wiener", 1, 1, message="Wiener SIM done")
    return rec, layers
