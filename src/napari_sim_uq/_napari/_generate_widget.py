"""Dock widget "Generate SIM data": synthetic SIM datasets with ground truth (DESIGN.md 2).

The options are the fields of :class:`~napari_sim_uq.tasks.sim.synth.SynthConfig` (the main
ones shown, the rest under "Advanced"). *Preview* generates one sample
(:func:`~napari_sim_uq.tasks.sim.synth.generate_sample`) and shows its raw stack, ground-truth
emitter and noise sigma map as layers
(:func:`~napari_sim_uq.tasks.sim.samples.sim_sample_layer_data`, the HR emitter overlaying
the raw frames). *Write dataset* runs
:func:`~napari_sim_uq.tasks.sim.synth.generate_splits` (the job behind ``sim-uq generate``, one
call per split) in a thread worker with a progress bar; *Stop* ends it after the sample
being written. User errors are napari notifications.
"""

from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from napari_sim_uq._napari._widgets import (
    Collapsible,
    Fields,
    JobWidget,
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
from napari_sim_uq.core.errors import InputError, SimUqError
from napari_sim_uq.core.events import Event
from napari_sim_uq.tasks.sim.samples import sim_sample_layer_data
from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_sample, generate_splits

PREVIEW_NAME = "synthetic sample"
SPLITS = ("train", "val", "test")


def preview_job(cfg: SynthConfig, seed: int, index: int):
    """Job: generate sample ``index`` of the ``train`` split (returns it)."""
    yield Event("preview", 0, 1, message=f"generating sample {index} …")
    return generate_sample(cfg, seed, index)


_JOB_DEFAULTS = {"seed": 0, "workers": None, "n_train": 64, "n_val": 8, "n_test": 8}


def _job_default(key: str):
    """Default of a ``job.*`` field (the job's options, not SynthConfig fields)."""
    return _JOB_DEFAULTS[key.rpartition(".")[2]]


#: the config class of the widget's keys without a group (``job.*`` are the job's options)
CONFIGS = {"": SynthConfig}

# (label, key[, kwargs]) rows (Fields.add_config_rows): a SynthConfig field's default,
# choices, range and tooltip come from its metadata; the kwargs give what the metadata
# lacks (a spin box needs an upper bound; plain fields need all of it) or differ from it on
# purpose, as each comment says. ``job.*`` rows give their kind and everything else.
# fmt: off
MAIN_FIELDS = [
    ("raw size (H, W)", "lr_size", {"hi": 4096, "step": 8}),
    ("HR factor", "hr_factor", {"hi": 16}),
    *[(f"{s} samples", f"job.n_{s}",
       {"kind": "int", "lo": 0, "hi": 1_000_000, "tip": f"samples in the '{s}' split"})
      for s in SPLITS],
    # photons: the metadata's minimum 0 (at 1 decimal, the former GUI limit 0.01 showed as
    # 0 too); SynthConfig.validate refuses 0 with a message
    ("photons", "photons", {"hi": 1e7, "decimals": 1, "step": 50.0}),
    # read noise, period and PSF sigma must be > 0 (SynthConfig.validate): the metadata's
    # minimum is the CLI's 0, the spin boxes start at a small positive value
    ("read noise", "read_noise", {"lo": 0.01, "hi": 1e4, "decimals": 2, "step": 0.5}),
    ("seed", "job.seed",
     {"kind": "int", "lo": 0, "hi": 2_000_000_000,
      "tip": "random seed (split i uses seed + 1000 i: splits never share samples)"}),
]
ADVANCED_FIELDS = [
    ("angles", "n_angles", {"hi": 16}),
    ("phases", "n_phases", {"hi": 16}),
    # > 0 (as read noise above)
    ("period (raw px)", "period_lr", {"lo": 0.1, "hi": 100.0, "decimals": 2, "step": 0.1}),
    ("modulation", "modulation", {"decimals": 2, "step": 0.05}),
    ("angle offset", "angle_offset",
     {"lo": -7.0, "hi": 7.0, "tip": "rotation of the first angle (rad)", "decimals": 3,
      "step": 0.1}),
    ("phase jitter", "phase_jitter",
     {"lo": 0.0, "hi": 3.0, "tip": "per-frame phase error std (rad)", "decimals": 3,
      "step": 0.01}),
    # > 0 (as read noise above)
    ("PSF sigma (raw px)", "psf_sigma_lr",
     {"lo": 0.05, "hi": 20.0, "decimals": 2, "step": 0.05}),
    ("PSF model", "psf_model"),
    ("fixed instrument", "fixed_instrument"),
    ("instrument seed", "instrument_seed", {"hi": 2_000_000_000}),
    ("background", "background", {"hi": 1e6, "decimals": 1, "step": 1.0}),
    ("gain", "gain", {"lo": 0.001, "hi": 1e4, "tip": "camera counts per photon"}),
    ("noise map scale", "noise_map_scale_lr",
     {"lo": 0.1, "hi": 1e4, "tip": "correlation length of the read-noise map (raw px)",
      "decimals": 1, "step": 1.0}),
    ("high-noise regions", "high_noise_regions", {"hi": 100}),
    # the factor must be > 0 (SynthConfig.validate): the metadata's minimum is the CLI's 0
    ("high-noise factor", "high_noise_factor", {"lo": 0.01, "hi": 1e3}),
    ("filaments", "n_filaments",
     {"lo": 0, "hi": 10_000, "tip": "filaments per sample (range)"}),
    ("rings", "n_rings", {"lo": 0, "hi": 10_000, "tip": "rings per sample (range)"}),
    ("beads", "n_beads", {"lo": 0, "hi": 10_000, "tip": "beads per sample (range)"}),
    # > 0 (as read noise above)
    ("line width (HR px)", "line_width_hr", {"lo": 0.01, "hi": 100.0}),
    ("fine factor", "fine_factor",
     {"lo": 1, "hi": 8, "tip": "structures are drawn this much finer"}),
    ("workers", "job.workers",
     {"kind": "int", "lo": 0, "hi": 256, "tip": "parallel processes", "none_label": "auto"}),
]
# fmt: on


class GenerateSimWidget(JobWidget):
    """Generator options, a preview as layers, and dataset writing in the background."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent, adds_layers=True)
        self.last_layers: list = []
        self.last_result: dict | None = None
        self._stopping = False
        f = self.fields = Fields()  # SynthConfig fields, and the job's under "job."
        main = QFormLayout()
        f.add_config_rows(main, MAIN_FIELDS, CONFIGS, _job_default)
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("output folder")
        self.out_edit.setToolTip("the dataset folder: writes train/, train_gt/, train_meta/ ...")
        self.out_btn = QPushButton("Browse…")
        self.out_btn.clicked.connect(self._browse)
        main.addRow("output folder", row(self.out_edit, self.out_btn))
        main.addRow("", f.add_bool("job.overwrite", False, "replace existing splits", "overwrite"))
        self.advanced = Collapsible("Advanced")
        f.add_config_rows(self.advanced.form, ADVANCED_FIELDS, CONFIGS, _job_default)

        # "match this stack": the optics and intensities of a loaded raw stack
        self.match_combo = QComboBox()
        self.match_combo.setToolTip("a raw SIM stack whose optics the training data should have")
        self.match_btn = QPushButton("Match")
        self.match_btn.setToolTip(
            "estimate the pattern period, orientation and modulation, the PSF width, "
            "background, read noise and photons of the chosen stack and set them here (one "
            "fixed instrument); raw size and HR factor are kept"
        )
        self.match_btn.clicked.connect(self.match_layer)
        main.addRow("match a stack", row(self.match_combo, self.match_btn))
        watch_layers(self.viewer, self._refresh_match_layers)
        self._refresh_match_layers()

        self.preview_index = QSpinBox()
        self.preview_index.setRange(0, 1_000_000)
        self.preview_index.setPrefix("sample ")
        self.preview_index.setToolTip("which sample of the train split to preview")
        self.preview_btn = QPushButton("Preview")
        self.preview_btn.setToolTip("add one sample as layers: raw stack, GT emitter, noise sigma")
        self.preview_btn.clicked.connect(self.preview)
        self.write_btn, self.stop_btn, buttons2 = run_buttons(
            "Write dataset", self.write_dataset, self.stop
        )
        buttons = row(self.preview_index, self.preview_btn, stretch_first=False)
        self.progress = progress_bar()
        self.status = status_label()

        box = QVBoxLayout(self)
        box.addLayout(main)
        box.addWidget(self.advanced)
        box.addLayout(buttons)
        box.addLayout(buttons2)
        box.addWidget(self.progress)
        box.addWidget(self.status)
        box.addStretch(1)

    # ------------------------------------------------------------------ settings

    def config(self) -> SynthConfig:
        """The generator config of the current settings (raises InputError if invalid)."""
        v = self.fields.values()
        v.pop("job")
        return SynthConfig.from_dict(v)

    def job_options(self) -> dict:
        """seed, workers, overwrite and the samples per split (``n_train`` ...)."""
        return self.fields.values()["job"]

    def counts(self) -> dict[str, int]:
        v = self.job_options()
        return {s: int(v[f"n_{s}"]) for s in SPLITS}

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Dataset folder", self.out_edit.text())
        if path:
            self.out_edit.setText(path)

    # ------------------------------------------------------------------ actions

    def _refresh_match_layers(self, event=None) -> None:
        fill_combo(
            self.match_combo, [lay.name for lay in image_layers(self.viewer) if lay.ndim >= 3]
        )

    def match_layer(self) -> None:
        """Estimate the chosen stack's optics in the background and fill the fields."""
        self._launch(self._match_job)

    def _match_job(self):
        layer = layer_named(self.viewer, self.match_combo.currentText())
        if layer is None:
            raise InputError("choose a raw SIM stack layer to match first")
        from napari_sim_uq.api import sim_source

        source = sim_source(layer)
        base = self.config()
        self._mode = ("match", source.name)

        def job():
            from napari_sim_uq.api import match_sim_config

            yield Event("match", 0, 1, message=f"estimating the optics of '{source.name}' …")
            return match_sim_config(
                source, base=base, lr_size=base.lr_size, hr_factor=base.hr_factor
            )

        return job, f"matching '{source.name}' …"

    def _show_match(self, result, name: str) -> None:
        cfg, report = result
        keys = self.fields.set_values(
            {k: v for k, v in cfg.to_dict().items() if k not in ("lr_size", "hr_factor")}
        )
        set_progress(self.progress, 1, 1)
        msg = (
            f"matched '{name}': period {report['periods_raw_px'][0]:.3f} px, modulation "
            f"{sum(report['modulation']) / len(report['modulation']):.2f}, PSF sigma "
            f"{report['psf_sigma_raw_px']:.2f} px, photons {report['photons']:.0f}, "
            f"background {report['background']:.1f}, read noise {report['read_noise']:.2f} "
            f"({len(keys)} settings; fixed instrument on)"
        )
        self.last_match = report
        self.status.setText(msg)
        show_info(msg)

    def preview(self) -> None:
        """Generate one sample in the background and show it as layers."""
        self._launch(self._preview_job)

    def write_dataset(self) -> None:
        """Write the splits to the output folder in the background."""
        self._launch(self._write_job)

    def _preview_job(self):
        cfg = self.config()
        seed, index = int(self.job_options()["seed"]), self.preview_index.value()
        self._mode = ("preview", cfg)
        return (lambda: preview_job(cfg, seed, index)), f"previewing sample {index} …"

    def _write_job(self):
        out = self.out_edit.text().strip()
        if not out:
            raise InputError("choose an output folder for the dataset first")
        cfg = self.config()
        counts = self.counts()
        if not any(counts.values()):
            raise InputError("nothing to write: set the number of train/val/test samples")
        v = self.job_options()
        kw = {"seed": int(v["seed"]), "workers": v["workers"], "overwrite": bool(v["overwrite"])}
        self._mode = ("write", Path(out))
        n = sum(counts.values())
        set_progress(self.progress, 0, n)
        return (lambda: generate_splits(out, counts, cfg, **kw)), f"writing {n} samples …"

    def _launch(self, prepare) -> None:
        if self.busy:
            return
        try:
            make_job, message = prepare()
        except SimUqError as err:
            self._fail(str(err))
            return
        self._stopping = False
        self._set_running(True)
        self.status.setText(message)
        self.runner.start(make_job)

    def stop(self) -> None:
        """Stop writing after the current sample (files written so far stay)."""
        if self.runner.running:
            self._stopping = True
            self.status.setText("stopping …")
            self.runner.quit()

    # ------------------------------------------------------------------ GUI-thread slots

    def _on_event(self, ev) -> None:
        set_progress(self.progress, ev.step, ev.total)
        if ev.message:
            self.status.setText(ev.message)

    def _on_returned(self, result) -> None:
        kind, what = self._mode
        if kind == "preview":
            self._show_preview(result, what)
            return
        if kind == "match":
            self._show_match(result, what)
            return
        self.last_result = result
        n = sum(r["n_samples"] for r in result.values())
        msg = f"wrote {n} samples ({', '.join(result)}) to {what}"
        set_progress(self.progress, self.progress.maximum(), self.progress.maximum())
        self.status.setText(msg)
        show_info(msg)

    def _show_preview(self, sample, cfg: SynthConfig) -> None:
        meta = {k: v for k, v in sample.params.items() if k not in ("wave_vectors", "phases")}
        layer_data = sim_sample_layer_data(
            sample.raw,
            sample.emitter,
            cfg.hr_factor,
            name=PREVIEW_NAME,
            noise_sigma=sample.noise_sigma,
            angles=cfg.n_angles,
            phases=cfg.n_phases,
            metadata={"synthetic": meta, "generator": cfg.to_dict()},
        )
        p = sample.params

        def added(layers):
            self.last_layers = layers
            set_progress(self.progress, 1, 1)
            self.status.setText(
                f"preview: sample {p['index']} (photons {p['photons']:.0f}, modulation "
                f"{p['modulation']:.2f}); the GT emitter and noise sigma layers start hidden"
            )

        self.adder.start(layer_data, added, self._on_error, self._on_finished)

    def _on_error(self, err: BaseException) -> None:
        self._fail(error_message(err, "generation"))

    def _on_aborted(self) -> None:
        self.status.setText("stopping …")

    def _on_finished(self) -> None:
        if self.busy:
            return  # the preview layers are still being added
        self._set_running(False)
        if self._stopping:
            self._stopping = False
            self.status.setText(
                "stopped: the samples written so far stay (dataset.json is only written "
                "for a complete split)"
            )

    def _fail(self, message: str) -> None:
        self.status.setText(message)
        set_progress(self.progress, 0, 1)
        show_error(message)

    def _set_running(self, running: bool) -> None:
        for w in (self.preview_btn, self.write_btn, self.preview_index, self.match_btn):
            w.setEnabled(not running)
        self.stop_btn.setEnabled(running)
        if running and self.progress.maximum() <= 1:
            set_waiting(self.progress)  # until the first event
