"""Dock widget "Train 2D": train a 2D autoencoder with uncertainty, with live progress.

Training images come from files (a folder or glob, as ``sim-uq train-2d --data-dir``) or
from ticked 2D image layers, which are written to ``<output folder>/layer_data/train/``
first (:func:`napari_sim_uq.api.write_training_images_2d`) so the checkpoint names files
that outlive the session. The settings are fields of
:class:`~napari_sim_uq.tasks.ae2d.train.Train2DConfig` and of its ``model`` dict
(:class:`~napari_sim_uq.tasks.ae2d.net.AE2DConfig`): defaults, choices, ranges and tooltips
come from their metadata (:meth:`~napari_sim_uq._napari._widgets.Fields.add_config_field`).

The job (:func:`napari_sim_uq.api.train_2d_job_from`, the one ``napari_sim_uq.train_2d``
runs) runs in a generator thread worker: batch events move the progress bars and feed the
live loss plot; Stop ends it after the current batch and leaves a resumable ``latest.pt``.
User errors are napari notifications and the status line.
"""

from __future__ import annotations

from pathlib import Path

# TrainingWidget._notify shows notifications through this module's show_* functions
from napari.utils.notifications import show_error, show_info, show_warning  # noqa: F401
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from napari_sim_uq._napari._widgets import (
    Collapsible,
    Fields,
    TrainingWidget,
    image_layers,
    row,
    watch_layers,
)
from napari_sim_uq.core.devices import DEVICE_CHOICES
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.tasks.ae2d.net import AE2DConfig
from napari_sim_uq.tasks.ae2d.train import Train2DConfig

__all__ = ["Train2DWidget"]

SOURCES = ("files", "layers")

#: config classes of the widget's keys: ``"lr"`` is ``Train2DConfig.lr``, ``"model.depth"``
#: ``AE2DConfig.depth`` (stored in ``Train2DConfig.model``)
CONFIGS = {"": Train2DConfig, "model": AE2DConfig}

# (label, key[, kwargs]) rows (Fields.add_config_rows): default, choices, range and tooltip
# come from the config field's metadata; the kwargs give what the metadata lacks (a spin box
# needs an upper bound; plain fields need all of it) or narrow it on purpose (comments).
# fmt: off
MAIN_FIELDS = [
    ("epochs", "epochs", {"hi": 1_000_000}),
    ("batch size", "batch_size", {"hi": 4096}),
    # lr must be > 0 (TrainOptions.validate): the smallest value at 6 decimals
    ("learning rate", "lr", {"lo": 1e-6, "hi": 1.0, "decimals": 6, "step": 1e-4}),
    ("patch (px)", "patch", {"hi": 4096, "step": 8}),
    ("patches / image", "patches_per_image", {"hi": 100_000}),
    ("degrade", "degrade"),
    ("architecture", "model.arch"),
    ("uncertainty model", "model.model"),
    ("", "model.aleatoric", {"text": "aleatoric (variance head)"}),
    ("base channels", "model.base_channels", {"hi": 1024}),
    ("depth", "model.depth"),
    # dropout must be < 1: the GUI stops at 0.95
    ("MC dropout p", "model.dropout", {"hi": 0.95, "decimals": 2, "step": 0.05}),
]
ADVANCED_FIELDS = [
    ("seed", "seed", {"lo": 0, "hi": 2_000_000_000}),
    ("max steps", "max_steps", {"hi": 10**9, "none_label": "no limit"}),
    ("lr schedule", "lr_schedule"),
    ("min lr ratio", "min_lr_ratio",
     {"lo": 0.0, "hi": 1.0, "tip": "end of the cosine decay, x lr", "step": 0.01}),
    ("weight decay", "weight_decay",
     {"lo": 0.0, "hi": 1.0, "tip": "Adam weight decay", "decimals": 6, "step": 1e-5}),
    ("grad clip", "grad_clip", {"lo": 0.0, "hi": 1e6, "tip": "gradient norm clip (0: off)"}),
    ("normalisation", "norm_mode"),
    ("log-var init", "model.logvar_init", {"lo": -30.0, "hi": 30.0, "step": 0.5}),
    ("log-var min", "model.logvar_min", {"lo": -30.0, "hi": 30.0, "step": 0.5}),
    ("log-var max", "model.logvar_max", {"lo": -30.0, "hi": 30.0, "step": 0.5}),
]
# fmt: on


class Train2DWidget(TrainingWidget):
    """Train a 2D autoencoder from files or image layers, with live progress."""

    RECONSTRUCT_WIDGET = "Reconstruct 2D"
    RUN_DIR_NAME = "output folder"
    MISSING_VAL_LOSS = 0
    USE_WAITS_FOR_RUN = True

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        f = self.fields = Fields()

        # ---- data
        self.source_combo = QComboBox()
        self.source_combo.addItems(SOURCES)
        self.source_combo.setToolTip("train on image files (folder or glob) or on image layers")
        self.data_edit = f.add_config_field(Train2DConfig, "data_dir")
        self.data_edit.setPlaceholderText("folder or glob: D/train/*.tif")
        data_browse = QPushButton("Folder…")
        data_browse.clicked.connect(lambda: self._browse_folder(self.data_edit))
        self.val_edit = f.add_config_field(Train2DConfig, "val_dir")
        self.val_edit.setPlaceholderText("optional: D/val")
        val_browse = QPushButton("Folder…")
        val_browse.clicked.connect(lambda: self._browse_folder(self.val_edit))
        files_page = QWidget()
        fp = QFormLayout(files_page)
        fp.setContentsMargins(0, 0, 0, 0)
        fp.addRow("train", row(self.data_edit, data_browse))
        fp.addRow("validation", row(self.val_edit, val_browse))

        self.layer_list = QListWidget()
        self.layer_list.setToolTip(
            "tick the 2D image layers to train on (a 3D layer is a stack of images); they "
            "are written to <output folder>/layer_data/train/"
        )
        self.layer_list.setMaximumHeight(4 * self.layer_list.fontMetrics().lineSpacing() + 12)
        layers_page = QWidget()
        lp = QFormLayout(layers_page)
        lp.setContentsMargins(0, 0, 0, 0)
        lp.addRow("layers", self.layer_list)
        self.source_stack = QStackedWidget()
        self.source_stack.addWidget(files_page)
        self.source_stack.addWidget(layers_page)
        self.source_combo.currentIndexChanged.connect(self.source_stack.setCurrentIndex)

        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("output folder")
        self.out_edit.setToolTip("latest.pt, best.pt and metrics.csv are written here")
        self.out_edit.editingFinished.connect(self._update_ckpt_info)
        out_browse = QPushButton("Browse…")
        out_browse.clicked.connect(self._browse_out)
        self.resume_check = f.add_config_field(
            Train2DConfig,
            "resume",
            tip="continue from latest.pt in the output folder (same settings)",
            text="resume",
        )

        data_form = QFormLayout()
        data_form.addRow("data from", self.source_combo)
        data_form.addRow(self.source_stack)
        data_form.addRow("output folder", row(self.out_edit, out_browse))
        data_form.addRow("", self.resume_check)

        # ---- hyper-parameters
        main = QFormLayout()
        f.add_config_rows(main, MAIN_FIELDS, CONFIGS)
        adv = self.advanced = Collapsible("Advanced")
        self.device_combo = f.add_config_field(Train2DConfig, "device", choices=DEVICE_CHOICES)
        adv.form.addRow("device", self.device_combo)
        self._add_threads_row(adv.form)
        f.add_config_rows(adv.form, ADVANCED_FIELDS, CONFIGS)

        # ---- run
        buttons = self._build_run_controls()
        self.use_btn = QPushButton("Use in Reconstruct 2D")
        self.use_btn.setToolTip("open Reconstruct 2D with this folder's best.pt")
        self.use_btn.setEnabled(False)
        self.use_btn.clicked.connect(self.use_in_reconstruct)

        box = QVBoxLayout(self)
        box.addLayout(data_form)
        box.addLayout(main)
        box.addWidget(adv)
        box.addLayout(buttons)
        box.addWidget(self.epoch_bar)
        box.addWidget(self.batch_bar)
        box.addWidget(self.status)
        box.addWidget(self.plot_check)
        box.addWidget(self.plot)
        box.addWidget(self.ckpt_info)
        box.addWidget(self.use_btn)
        box.addStretch(1)

        watch_layers(self.viewer, self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ layers, paths

    def _refresh_layers(self, event=None) -> None:
        checked = set(self.checked_layer_names())
        self.layer_list.clear()
        for lay in image_layers(self.viewer):
            if (lay.metadata or {}).get("sim_uq", {}).get("task"):
                continue  # results of a 2D model
            item = QListWidgetItem(lay.name)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(Qt.Checked if lay.name in checked else Qt.Unchecked)
            self.layer_list.addItem(item)

    def checked_layer_names(self) -> list[str]:
        items = (self.layer_list.item(i) for i in range(self.layer_list.count()))
        return [it.text() for it in items if it.checkState() == Qt.Checked]

    def set_checked_layers(self, names) -> None:
        """Tick exactly the layers ``names`` (and choose "layers" as the data source)."""
        names = set(names)
        for i in range(self.layer_list.count()):
            it = self.layer_list.item(i)
            it.setCheckState(Qt.Checked if it.text() in names else Qt.Unchecked)
        self.source_combo.setCurrentText("layers")

    def _browse_folder(self, edit: QLineEdit) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder of images")
        if path:
            edit.setText(path)

    def _browse_out(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Output folder", self.out_edit.text())
        if path:
            self.out_edit.setText(path)
            self._update_ckpt_info()

    def out_dir(self) -> Path | None:
        text = self.out_edit.text().strip()
        return Path(text).expanduser() if text else None

    def _run_dir(self) -> Path | None:
        return self.out_dir()

    # ------------------------------------------------------------------ running

    def config_dict(self) -> dict:
        """The Train2DConfig options of the current settings (without the data and the
        output folder)."""
        v = self.fields.values()
        v.pop("data_dir", None)
        v.pop("val_dir", None)
        return v

    def _prepare(self):
        """(job factory, options) for the current settings; InputError if they are not
        usable."""
        from napari_sim_uq.api import image2d_source, train_2d_job_from

        d = self.out_dir()
        if d is None:
            raise InputError("choose an output folder (latest.pt and best.pt go there)")
        opts = self.config_dict()
        values = self.fields.values()
        if self.source_combo.currentText() == "files":
            data = values["data_dir"]
            if not data:
                raise InputError("give the training images: a folder or a glob (D/train/*.tif)")
            from napari_sim_uq.core.data.loaders import resolve_files

            resolve_files(data)  # empty glob / missing folder: a clear error now
            if values["val_dir"]:
                resolve_files(values["val_dir"])
            opts["val_dir"] = values["val_dir"]
        else:
            names = self.checked_layer_names()
            if not names:
                raise InputError("tick at least one image layer to train on (or use files)")
            data = [self.viewer.layers[n] for n in names if n in self.viewer.layers]
            if not data:
                raise InputError("the ticked layers are gone: tick image layers to train on")
            data = [_layer_images(lay, image2d_source) for lay in data]
            data = [img for imgs in data for img in imgs]
        job = train_2d_job_from(data, d, **opts)
        return (lambda: job), opts

    def _run_lock_widgets(self) -> tuple:
        return (self.source_combo, self.source_stack, self.out_edit, self.threads_spin)


def _layer_images(layer, image2d_source) -> list:
    """The training images of a layer: one 2D image (RGB converted to grey), or every
    plane of a stack."""
    import numpy as np

    data = np.asarray(layer.data)
    if layer.ndim > 2 and not getattr(layer, "rgb", False):
        lead = data.reshape(-1, *data.shape[-2:])
        return [image2d_source(p, f"{layer.name} plane {i}") for i, p in enumerate(lead)]
    return [image2d_source(layer)]
