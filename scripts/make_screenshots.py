"""Make the screenshots in docs/images/ (run under a display: xvfb-run -a python ...)."""

from __future__ import annotations

import sys
from pathlib import Path

import napari

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"
EXAMPLES = Path(__file__).resolve().parents[1] / "example_data"


def _settle() -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()


def _no_qt_toast() -> None:
    """Keep napari's one-off "PyQt5 backend is deprecated" toast out of the pictures."""
    try:
        import napari._qt.qt_main_window as qmw

        qmw.SHOW_QT_WARNING = False
    except (ImportError, AttributeError):
        pass


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    _no_qt_toast()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)

    viewer.open_sample("napari-sim-uq", "sim_stack")
    gt = viewer.layers["SIM sample GT emitter"]
    gt.visible = True
    gt.opacity = 0.6
    gt.blending = "additive"
    viewer.dims.set_current_step(0, 4)
    viewer.reset_view()
    viewer.screenshot(str(OUT / "sample_sim_stack.png"), canvas_only=False)

    # a generated dataset sample: raw frame, its noise sigma map and the ground truth
    from napari_sim_uq.tasks.sim.samples import hr_scale_translate
    from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_sample

    viewer.close()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    s = generate_sample(SynthConfig(lr_size=(80, 80), hr_factor=3), seed=4)
    sc, tr = hr_scale_translate((1.0, 1.0), (0.0, 0.0), 3)
    viewer.add_image(s.raw[0], name="raw frame 0", colormap="gray")
    viewer.add_image(s.noise_sigma[0], name="noise sigma (frame 0)", colormap="magma")
    viewer.add_image(s.mask.astype(float), name="high-noise mask", colormap="gray")
    viewer.add_image(s.emitter, name="GT emitter", colormap="inferno", scale=sc, translate=tr)
    viewer.grid.enabled = True
    viewer.grid.shape = (2, 2)
    _settle()
    viewer.reset_view()
    _settle()
    viewer.screenshot(str(OUT / "generator_sample.png"), canvas_only=False)
    viewer.grid.enabled = False

    viewer.layers.clear()
    viewer.open(str(EXAMPLES / "cells_2d.tif"), plugin="napari-sim-uq")
    viewer.reset_view()
    viewer.screenshot(str(OUT / "reader_cells_2d.png"), canvas_only=False)
    viewer.close()
    reconstruct_widget_screenshot()
    explorer_widget_screenshot()
    generate_widget_screenshot()
    train_widget_screenshot()
    print(f"screenshots written to {OUT}")
    return 0


def reconstruct_widget_screenshot() -> None:
    """The "Reconstruct SIM" dock widget after a run with the bundled example model."""
    import os

    os.environ["NAPARI_SIM_UQ_NOTHREADS"] = "1"  # finish before the picture is taken
    _no_qt_toast()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    viewer.open_sample("napari-sim-uq", "sim_stack")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-sim-uq", "Reconstruct SIM")
    widget.device_combo.setCurrentText("cpu")
    widget.run()
    viewer.layers["SIM sample GT emitter"].visible = False
    viewer.layers.selection.active = viewer.layers["SIM sample emitter"]
    _settle()
    viewer.reset_view()
    _settle()
    viewer.screenshot(str(OUT / "reconstruct_widget.png"), canvas_only=False)
    viewer.close()


def explorer_widget_screenshot() -> None:
    """The "Uncertainty explorer" on the SIM sample reconstructed with the example model,
    with the sample's ground truth as reference (so the calibration curve shows)."""
    import os

    import numpy as np

    from napari_sim_uq.api import reconstruct_sim

    os.environ["NAPARI_SIM_UQ_NOTHREADS"] = "1"  # statistics finish before the picture
    _no_qt_toast()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 1050)
    viewer.open_sample("napari-sim-uq", "sim_stack")
    reconstruct_sim(viewer.layers["SIM sample"], viewer=viewer, device="cpu")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-sim-uq", "Uncertainty explorer")
    widget.log_check.setChecked(True)
    widget.mark_unreliable()  # default threshold: the 95th percentile of the std
    for layer in viewer.layers:
        layer.visible = layer.name in ("SIM sample emitter", "SIM sample emitter unreliable")
    viewer.layers.selection.active = viewer.layers["SIM sample emitter"]
    _settle()
    viewer.reset_view()
    _settle()
    emitter = viewer.layers["SIM sample emitter"]  # readout: the brightest pixel's mean ± std
    idx = np.unravel_index(np.argmax(emitter.data), emitter.data.shape)
    viewer.cursor.position = (0.0, *emitter.data_to_world(idx))
    _settle()
    viewer.screenshot(str(OUT / "uncertainty_explorer.png"), canvas_only=False)
    viewer.close()


def generate_widget_screenshot() -> None:
    """The "Generate SIM data" dock widget after a preview (raw stack + GT overlay)."""
    import os

    os.environ["NAPARI_SIM_UQ_NOTHREADS"] = "1"  # the preview is there before the picture
    _no_qt_toast()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 1000)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-sim-uq", "Generate SIM data")
    widget.fields.set_values({"lr_size": (64, 64), "hr_factor": 3, "job": {"seed": 2}})
    widget.out_edit.setText("~/sim_data")
    widget.preview()
    gt = viewer.layers["synthetic sample GT emitter"]
    gt.visible, gt.opacity, gt.blending = True, 0.6, "additive"
    viewer.layers.selection.active = viewer.layers["synthetic sample"]
    _settle()
    viewer.reset_view()
    _settle()
    viewer.screenshot(str(OUT / "generate_widget.png"), canvas_only=False)
    viewer.close()


def train_widget_screenshot() -> None:
    """The "Train SIM model" dock widget after a short run on a small generated dataset
    (so the live loss plot has curves)."""
    import os
    import shutil
    import tempfile

    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_splits

    os.environ["NAPARI_SIM_UQ_NOTHREADS"] = "1"  # training ends before the picture
    _no_qt_toast()
    tmp = Path(tempfile.gettempdir()) / "simuq"  # short paths fit the dock's fields
    shutil.rmtree(tmp, ignore_errors=True)
    data = tmp / "data"
    run(generate_splits(data, {"train": 16, "val": 4}, SynthConfig(lr_size=(32, 32), hr_factor=2)))
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 1000)
    viewer.open(str(data / "train" / "sample_00000.tif"), plugin="napari-sim-uq")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-sim-uq", "Train SIM model")
    widget.train_glob.setText(str(data / "train" / "*.tif"))
    widget.val_glob.setText(str(data / "val" / "*.tif"))
    widget.ckpt_edit.setText(str(tmp / "checkpoints"))
    widget.device_combo.setCurrentText("cpu")
    widget.fields.set_values(
        {
            "epochs": 12,
            "batch_size": 4,
            "lr": 3e-3,
            "supervised": True,
            "model": {"base_channels": 8, "depth": 2},
        }
    )
    widget.start()
    _settle()
    viewer.reset_view()
    widget.plot.wait_idle()
    _settle()
    viewer.screenshot(str(OUT / "train_widget.png"), canvas_only=False)
    viewer.close()


def self_supervised_screenshot(demo_dir: str = "sim-uq-demo-ss") -> None:
    """The "Reconstruct SIM" widget with a self-supervised checkpoint (``sim-uq demo
    --self-supervised --out-dir sim-uq-demo-ss``): emitter, its std and the instrument's
    light pattern of a held-out stack."""
    import os
    from pathlib import Path

    os.environ["NAPARI_SIM_UQ_NOTHREADS"] = "1"
    _no_qt_toast()
    demo = Path(os.environ.get("SIM_UQ_SS_DEMO", demo_dir))
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    stack = sorted((demo / "data" / "test").glob("*.tif"))[1]
    viewer.open(str(stack), plugin="napari-sim-uq")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-sim-uq", "Reconstruct SIM")
    widget.checkpoint_edit.setText(str(demo / "checkpoints" / "best.pt"))
    widget.device_combo.setCurrentText("cpu")
    widget.run()
    name = viewer.layers[0].name
    shown = (f"{name} emitter", f"{name} emitter std", f"{name} light pattern")
    for layer in viewer.layers:
        layer.visible = layer.name in shown
    viewer.grid.enabled = True
    viewer.grid.shape = (1, 3)
    viewer.layers.selection.active = viewer.layers[f"{name} emitter"]
    _settle()
    viewer.reset_view()
    _settle()
    viewer.screenshot(str(OUT / "self_supervised.png"), canvas_only=False)
    viewer.close()


SINGLE = {
    "self-supervised": "self_supervised_screenshot",
    "explorer": "explorer_widget_screenshot",
    "reconstruct": "reconstruct_widget_screenshot",
    "generate": "generate_widget_screenshot",
    "train": "train_widget_screenshot",
}

if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] in SINGLE:  # just one widget's picture
        OUT.mkdir(parents=True, exist_ok=True)
        globals()[SINGLE[sys.argv[1]]]()
        sys.exit(0)
    sys.exit(main())
