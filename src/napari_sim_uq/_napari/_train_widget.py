"""Dock widget "Train SIM model": the training job with live progress (DESIGN.md 2).

Training data come from files (a glob or folder, like ``sim-uq train --train-glob``) or
from open image layers: a raw SIM stack (or time series) and optionally its ground-truth
emitter, which are written into ``<checkpoint folder>/layer_data/`` first
(:func:`~napari_sim_uq.tasks.sim.layer_data.write_training_arrays`) so the checkpoint names
files that outlive the session. The settings are the fields of
:class:`~napari_sim_uq.tasks.sim.train.TrainConfig` (and its model / loss dicts).

:func:`~napari_sim_uq.tasks.sim.train.train_sim_job` runs in a napari generator thread
worker (:class:`~napari_sim_uq._napari._widgets.JobRunner`): batch events move the
progress bars and feed the loss plot (redrawn only at epoch ends and validations, at most
every 0.5 s), Stop calls ``worker.quit()`` and the job is closed in the worker thread at
its next batch, leaving a resumable ``latest.pt``. User errors are napari notifications.
"""

from __future__ import annotations

import math
from dataclasses import fields as dc_fields
from pathlib import Path

# TrainingWidget._notify shows notifications through this module's show_* functions
from napari.utils.notifications import show_error, show_info, show_warning  # noqa: F401
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from napari_sim_uq._napari._widgets import (
    Collapsible,
    Fields,
    TrainingWidget,
    fill_combo,
    image_layers,
    row,
    watch_layers,
)
from napari_sim_uq.core.data.normalization import NORM_MODES
from napari_sim_uq.core.devices import DEVICE_CHOICES, resolve_device
from napari_sim_uq.core.errors import InputError, SimUqError
from napari_sim_uq.core.events import Event
from napari_sim_uq.core.plots import read_metrics_csv
from napari_sim_uq.tasks.sim.loss import SimLossConfig
from napari_sim_uq.tasks.sim.net import SimNetConfig
from napari_sim_uq.tasks.sim.train import MODEL_TYPE, TrainConfig

DEVICES = DEVICE_CHOICES  # devices.py: one list for every front end
SOURCES = ("files", "layers")
NO_GT = "(none)"
LAYER_DATA_DIR = "layer_data"


def device_description(name: str) -> str:
    """What ``name`` (auto, cpu, cuda, mps) resolves to here, for the device label."""
    import torch

    try:
        dev = resolve_device(name)
    except InputError as err:
        return f"not available ({err})"
    if dev.type == "cuda":
        return f"CUDA: {torch.cuda.get_device_name(dev.index or 0)}"
    if dev.type == "mps":
        return "MPS (Apple GPU)"
    return "CPU"


def layer_training_job(cfg: dict, raw, gt, name: str, angles, phases, data_dir: Path):
    """Job: write layer data to ``data_dir``, then train on it (``cfg``: a TrainConfig
    dict whose ``train_glob`` is replaced by the written file)."""
    from napari_sim_uq.tasks.sim.layer_data import write_training_arrays
    from napari_sim_uq.tasks.sim.train import train_sim_job

    yield Event("prepare", 0, 1, message=f"writing '{name}' to {data_dir} …")
    model = SimNetConfig.from_dict(dict(cfg.get("model") or {}))
    info = write_training_arrays(
        data_dir,
        raw,
        emitter=gt,
        name=name,
        angles=angles,
        phases=phases,
        expected_frames=model.n_frames,
    )
    cfg = {**cfg, "train_glob": info["train_glob"]}
    return (yield from train_sim_job(TrainConfig.from_dict(cfg)))


def files_training_job(cfg: dict):
    """Job: train on files (``cfg``: a TrainConfig dict)."""
    from napari_sim_uq.tasks.sim.train import train_sim_job

    return (yield from train_sim_job(TrainConfig.from_dict(cfg)))


#: config classes of the widget's keys: ``"lr"`` is ``TrainConfig.lr``, ``"model.depth"``
#: ``SimNetConfig.depth``, ``"loss.beta_nll"`` ``SimLossConfig.beta_nll``
CONFIGS = {"": TrainConfig, "model": SimNetConfig, "loss": SimLossConfig}

# (label, key[, kwargs]) rows (Fields.add_config_rows): default, choices, range and tooltip
# come from the config field's metadata. The kwargs give what the metadata lacks (a spin
# box needs an upper bound; plain fields without option metadata need all of it), or
# differ from it on purpose, as each comment says.
# fmt: off
MAIN_FIELDS = [
    ("epochs", "epochs", {"hi": 1_000_000}),
    ("batch size", "batch_size", {"hi": 4096}),
    # lr must be > 0 (TrainConfig.validate): the smallest value at 6 decimals
    ("learning rate", "lr", {"lo": 1e-6, "hi": 1.0, "decimals": 6, "step": 1e-4}),
    # the help names the CLI's data only; the widget also takes the GT layer
    ("", "supervised", {"tip": "also fit the ground truth (D/<split>_gt, or the GT layer)",
                        "text": "supervised (ground truth)"}),
    ("HR factor", "model.hr_factor"),
    ("base channels", "model.base_channels", {"hi": 1024}),
    ("depth", "model.depth"),
]
ADVANCED_FIELDS = [
    # the spin box's 0 means None ("whole")
    ("crop (raw px)", "crop", {"lo": 1, "hi": 8192, "none_label": "whole"}),
    ("seed", "seed", {"lo": 0, "hi": 2_000_000_000}),
    ("max steps", "max_steps", {"hi": 10**9, "none_label": "no limit"}),
    # the help quotes the default ratio (5%), which the widget lets one change
    ("lr schedule", "lr_schedule",
     {"tip": "cosine: decay to 'min lr ratio' x lr over the epochs"}),
    ("min lr ratio", "min_lr_ratio",
     {"lo": 0.0, "hi": 1.0, "tip": "end of the cosine decay", "decimals": 3, "step": 0.01}),
    ("weight decay", "weight_decay",
     {"lo": 0.0, "hi": 1.0, "tip": "Adam weight decay", "decimals": 6, "step": 1e-5}),
    ("grad clip", "grad_clip", {"lo": 0.0, "hi": 1e6, "tip": "gradient norm clip (0: off)"}),
    ("camera init", "camera_init"),
    ("camera lr factor", "camera_lr_factor",
     {"lo": 0.001, "hi": 1e4, "tip": "learning-rate factor of the two camera-noise parameters",
      "step": 1.0}),
    ("GT scaling", "gt_norm"),
    ("raw normalisation", "norm_mode", {"choices": NORM_MODES, "tip": "per-stack normalisation"}),
    # dropout must be < 1 (an open bound a spin box cannot show): the GUI stops at 0.95
    ("MC dropout p", "model.dropout", {"hi": 0.95, "decimals": 2, "step": 0.05}),
    ("PSF size", "model.psf_size", {"step": 2}),
    # the help describes the CLI's comma-separated word; here one check box per target
    ("UQ targets", "model.uq_targets", {"tip": "outputs that carry a predicted variance"}),
    ("log-var init", "model.logvar_init", {"lo": -30.0, "hi": 30.0, "step": 0.5}),
    # the floor must be > 0: the smallest value at 9 decimals (1e-9)
    ("variance floor", "loss.var_floor", {"lo": 1e-9, "hi": 1.0, "decimals": 9, "step": 1e-6}),
    ("beta-NLL", "loss.beta_nll", {"decimals": 2, "step": 0.1}),
    ("PSF var weight", "loss.psf_var_weight", {"hi": 100.0}),
    ("aux rec weight", "loss.aux_rec_weight", {"hi": 100.0}),
    ("aux rec mode", "loss.aux_rec_mode"),
    # the help names the CLI's CKPT_DIR
    ("debug every", "debug_every_epochs",
     {"hi": 100_000, "tip": "write debug_samples/epoch_XXX every N epochs", "min_label": "off"}),
]
# fmt: on


class TrainSimWidget(TrainingWidget):
    """Train the SIM uncertainty network from files or layers, with live progress."""

    RECONSTRUCT_WIDGET = "Reconstruct SIM"
    RUN_DIR_NAME = "checkpoint folder"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self._extra = {"model": {}, "loss": {}}  # loaded options without widgets
        f = self.fields = Fields()  # TrainConfig keys ("model.depth" -> cfg.model["depth"])

        # ---- data
        self.source_combo = QComboBox()
        self.source_combo.addItems(SOURCES)
        self.source_combo.setToolTip("train on files (glob or folder) or on open image layers")
        self.train_glob = QLineEdit()
        self.train_glob.setPlaceholderText("D/train/*.tif")
        self.train_glob.setToolTip("raw SIM stacks: a glob ('D/train/*.tif') or a folder")
        self.train_browse = QPushButton("Folder…")
        self.train_browse.clicked.connect(lambda: self._browse_glob(self.train_glob))
        self.val_glob = QLineEdit()
        self.val_glob.setPlaceholderText("optional: D/val/*.tif")
        self.val_glob.setToolTip("validation stacks (best.pt is chosen by validation loss)")
        self.val_browse = QPushButton("Folder…")
        self.val_browse.clicked.connect(lambda: self._browse_glob(self.val_glob))
        files_page = QWidget()
        fp = QFormLayout(files_page)
        fp.setContentsMargins(0, 0, 0, 0)
        fp.addRow("train", row(self.train_glob, self.train_browse))
        fp.addRow("validation", row(self.val_glob, self.val_browse))

        self.raw_layer_combo = QComboBox()
        self.raw_layer_combo.setToolTip("raw SIM stack (A*P, H, W) or time series (T, A*P, H, W)")
        self.gt_layer_combo = QComboBox()
        self.gt_layer_combo.setToolTip(
            "optional ground-truth emitter on a grid f times finer (needed for supervised)"
        )
        layers_page = QWidget()
        lp = QFormLayout(layers_page)
        lp.setContentsMargins(0, 0, 0, 0)
        lp.addRow("raw layer", self.raw_layer_combo)
        lp.addRow("GT layer", self.gt_layer_combo)
        self.source_stack = QStackedWidget()
        self.source_stack.addWidget(files_page)
        self.source_stack.addWidget(layers_page)
        self.source_combo.currentIndexChanged.connect(self.source_stack.setCurrentIndex)

        self.ckpt_edit = QLineEdit()
        self.ckpt_edit.setPlaceholderText("checkpoint folder")
        self.ckpt_edit.setToolTip("latest.pt, best.pt and metrics.csv are written here")
        self.ckpt_browse = QPushButton("Browse…")
        self.ckpt_browse.clicked.connect(self._browse_ckpt_dir)
        # the help names the CLI's CKPT_DIR
        self.resume_check = f.add_config_field(
            TrainConfig,
            "resume",
            tip="continue from latest.pt in the checkpoint folder",
            text="resume",
        )
        self.resume_check.toggled.connect(self._on_resume_toggled)

        data_form = QFormLayout()
        data_form.addRow("data from", self.source_combo)
        data_form.addRow(self.source_stack)
        data_form.addRow("checkpoints", row(self.ckpt_edit, self.ckpt_browse))
        data_form.addRow("", self.resume_check)

        # ---- main hyper-parameters, advanced options (TrainConfig / model / loss fields)
        main = QFormLayout()
        f.add_config_rows(main, MAIN_FIELDS, CONFIGS)
        adv = self.advanced = Collapsible("Advanced")
        self.device_combo = f.add_config_field(TrainConfig, "device", choices=DEVICES)
        self.device_combo.currentTextChanged.connect(self._update_device_label)
        adv.form.addRow("device", self.device_combo)
        self._add_threads_row(adv.form)
        self.threads_spin.valueChanged.connect(lambda _v: self._update_device_label())
        f.add_config_rows(adv.form, ADVANCED_FIELDS, CONFIGS)

        self.device_label = QLabel()
        self.device_label.setWordWrap(True)
        self._update_device_label()

        # ---- run
        buttons = self._build_run_controls(
            plot_tip="redraws at epoch ends and validations (at most every 0.5 s)"
        )

        # ---- checkpoints (the ckpt_info label comes with the run controls)
        self.load_btn = QPushButton("Load checkpoint…")
        self.load_btn.setToolTip("fill the settings from a checkpoint (and its folder)")
        self.load_btn.clicked.connect(self._browse_checkpoint)
        self.use_btn = QPushButton("Use in Reconstruct SIM")
        self.use_btn.setToolTip("open the Reconstruct SIM widget with this folder's best.pt")
        self.use_btn.setEnabled(False)
        self.use_btn.clicked.connect(self.use_in_reconstruct)
        ck_buttons = QHBoxLayout()
        ck_buttons.addWidget(self.load_btn)
        ck_buttons.addWidget(self.use_btn)

        box = QVBoxLayout(self)
        box.addLayout(data_form)
        box.addLayout(main)
        box.addWidget(adv)
        box.addWidget(self.device_label)
        box.addLayout(buttons)
        box.addWidget(self.epoch_bar)
        box.addWidget(self.batch_bar)
        box.addWidget(self.status)
        box.addWidget(self.plot_check)
        box.addWidget(self.plot)
        box.addWidget(self.ckpt_info)
        box.addLayout(ck_buttons)
        box.addStretch(1)

        self.ckpt_edit.editingFinished.connect(self._update_ckpt_info)
        watch_layers(self.viewer, self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ layers, paths

    def _refresh_layers(self, event=None) -> None:
        layers = image_layers(self.viewer)
        stacks = [lay.name for lay in layers if lay.ndim >= 3]
        images2d = [lay.name for lay in layers if lay.ndim == 2]
        fill_combo(self.raw_layer_combo, stacks, stacks[0] if stacks else None)
        gt_default = next((n for n in images2d if n.endswith("GT emitter")), NO_GT)
        fill_combo(self.gt_layer_combo, [NO_GT, *[lay.name for lay in layers]], gt_default)

    def _layer(self, combo: QComboBox):
        name = combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _browse_glob(self, edit: QLineEdit) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder of raw SIM stacks")
        if path:
            edit.setText(str(Path(path) / "*.tif"))

    def _browse_ckpt_dir(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Checkpoint folder", self.ckpt_edit.text())
        if path:
            self.ckpt_edit.setText(path)
            self._update_ckpt_info()

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "SIM checkpoint", self.ckpt_edit.text(), "PyTorch checkpoints (*.pt *.pth)"
        )
        if path:
            self.load_checkpoint(path)

    def ckpt_dir(self) -> Path | None:
        text = self.ckpt_edit.text().strip()
        return Path(text).expanduser() if text else None

    def _run_dir(self) -> Path | None:
        return self.ckpt_dir()

    def _update_device_label(self, *_):
        desc = device_description(self.device_combo.currentText())
        threads = self.threads_spin.value()
        extra = f", {threads} CPU thread{'s' if threads != 1 else ''}" if threads else ""
        self.device_label.setText(f"device: {desc}{extra if desc == 'CPU' else ''}")

    # ------------------------------------------------------------------ settings

    def config_dict(self) -> dict:
        """The TrainConfig dict of the current settings (data fields from the files page)."""
        v = self.fields.values()
        for key in ("model", "loss"):
            v[key] = {**self._extra[key], **v.get(key, {})}
        v["train_glob"] = self.train_glob.text().strip()
        v["val_glob"] = self.val_glob.text().strip() or None
        d = self.ckpt_dir()
        v["ckpt_dir"] = str(d) if d else ""
        return v

    def set_config(self, cfg: dict, *, data: bool = True) -> None:
        """Fill the settings from a TrainConfig dict (``data``: also the globs/folder)."""
        cfg = dict(cfg)
        if data:
            if cfg.get("train_glob") is not None:
                self.train_glob.setText(str(cfg["train_glob"]))
            self.val_glob.setText(str(cfg.get("val_glob") or ""))
            if cfg.get("ckpt_dir"):
                self.ckpt_edit.setText(str(cfg["ckpt_dir"]))
        cfg.pop("resume", None)
        self.fields.set_values(cfg)
        known = {"model": SimNetConfig, "loss": SimLossConfig}
        for key, cls in known.items():
            names = {fl.name for fl in dc_fields(cls)} - {"supervised"}
            given = cfg.get(key) or {}
            self._extra[key] = {
                k: v
                for k, v in given.items()
                if k in names and f"{key}.{k}" not in self.fields.keys()
            }

    def load_checkpoint(self, path, *, data: bool = True) -> bool:
        """Fill the settings from a checkpoint's stored config; show its summary."""
        from napari_sim_uq.core.io.checkpoint import load_checkpoint

        path = Path(path)
        try:
            ck = load_checkpoint(path, expected_model_type=MODEL_TYPE)
        except SimUqError as err:
            self._fail(str(err))
            return False
        train = dict(ck.config.get("train") or {})
        train["model"] = dict(ck.config.get("model") or train.get("model") or {})
        train["loss"] = dict(ck.config.get("loss") or train.get("loss") or {})
        if data:
            train["ckpt_dir"] = str(path.parent)
        self.set_config(train, data=data)
        if data and (path.parent / "latest.pt").exists():
            self.resume_check.blockSignals(True)
            self.resume_check.setChecked(True)
            self.resume_check.blockSignals(False)
        self._load_history(path.parent)
        best = ck.train_state.get("best_metric")
        best_s = (
            f", best loss {best:.4g}" if isinstance(best, float) and math.isfinite(best) else ""
        )
        msg = f"loaded settings from {path} (epoch {ck.epoch}, step {ck.step}{best_s})"
        self.status.setText(msg)
        self._update_ckpt_info()
        return True

    def _on_resume_toggled(self, on: bool) -> None:
        d = self.ckpt_dir()
        if on and d is not None and (d / "latest.pt").is_file():
            # resuming needs the same model: take the settings stored in latest.pt
            self.load_checkpoint(d / "latest.pt", data=False)

    def _load_history(self, ckpt_dir: Path, epochs: int = 1) -> None:
        self.plot.clear_data(epochs)
        try:
            m = read_metrics_csv(ckpt_dir / "metrics.csv")
        except (InputError, OSError):
            m = {}  # no (readable) history yet: an empty plot
        for key, add in (("train_loss", self.plot.add_train), ("val_loss", self.plot.add_val)):
            if key not in m:
                continue
            for epoch, loss in zip(m["epoch"], m[key], strict=True):
                if math.isfinite(loss):  # NaN: an empty cell (e.g. no validation that epoch)
                    add(epoch, loss)
        self.plot.request_redraw(force=True, tidy=True)

    # ------------------------------------------------------------------ running

    def _start_plot(self, cfg: dict) -> None:
        if cfg["resume"]:
            self._load_history(Path(cfg["ckpt_dir"]), cfg["epochs"])
        else:
            super()._start_plot(cfg)

    def _prepare(self):
        """(job factory, config dict) for the current settings; InputError if not usable."""
        from napari_sim_uq.api import sim_source
        from napari_sim_uq.core.data.loaders import resolve_files

        cfg = self.config_dict()
        d = self.ckpt_dir()
        if d is None:
            raise InputError("choose a checkpoint folder (latest.pt, best.pt go there)")
        if d.exists() and not d.is_dir():
            raise InputError(f"checkpoint folder '{d}' is a file")
        if (d / "latest.pt").exists() and not cfg["resume"]:
            raise InputError(
                f"'{d / 'latest.pt'}' exists: tick 'resume' to continue that run, or choose "
                "another checkpoint folder"
            )
        source = self.source_combo.currentText()
        if source == "files":
            if not cfg["train_glob"]:
                raise InputError("give the training data: a glob such as D/train/*.tif")
            resolve_files(cfg["train_glob"])  # empty glob / missing folder: clear error
            if cfg["val_glob"]:
                resolve_files(cfg["val_glob"])
            TrainConfig.from_dict(cfg).validate()
            return (lambda: files_training_job(cfg)), cfg
        raw_layer = self._layer(self.raw_layer_combo)
        if raw_layer is None:
            raise InputError("choose a raw SIM stack layer (or train from files)")
        src = sim_source(raw_layer)
        gt_layer = (
            self._layer(self.gt_layer_combo) if self.gt_layer_combo.currentText() != NO_GT else None
        )
        if cfg["supervised"] and gt_layer is None:
            raise InputError("supervised training needs a ground-truth (GT) layer")
        gt = None if gt_layer is None else gt_layer.data
        cfg["val_glob"] = None
        TrainConfig.from_dict({**cfg, "train_glob": "(layer)"}).validate()
        data_dir = d / LAYER_DATA_DIR
        args = (cfg, src.data, gt, src.name, src.angles, src.phases, data_dir)
        return (lambda: layer_training_job(*args)), cfg

    def _run_lock_widgets(self) -> tuple:
        return (
            self.load_btn,
            self.source_combo,
            self.source_stack,
            self.ckpt_edit,
            self.ckpt_browse,
            self.threads_spin,
        )
