"""The "Train SIM model" dock widget, opened through the plugin manifest."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_thread")]

PLUGIN = "napari-sim-uq"
TINY_MODEL = {"model.base_channels": 4, "model.depth": 1, "model.psf_size": 5}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """4 training and 2 validation stacks of 16 x 16 raw pixels (f = 2)."""
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_splits

    out = tmp_path_factory.mktemp("sim")
    run(generate_splits(out, {"train": 4, "val": 2}, SynthConfig(lr_size=(16, 16), hr_factor=2)))
    return out


@pytest.fixture
def shown(monkeypatch):
    import napari_sim_uq._napari._train_widget as mod

    msgs: dict[str, list[str]] = {"error": [], "info": [], "warning": []}
    for kind in msgs:
        monkeypatch.setattr(mod, f"show_{kind}", msgs[kind].append)
    return msgs


def _dock(viewer):
    _dock_widget, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train SIM model")
    return widget


def _settings(widget, data_dir, ckpt, **values):
    widget.train_glob.setText(str(data_dir / "train" / "*.tif"))
    widget.val_glob.setText(str(data_dir / "val" / "*.tif"))
    widget.ckpt_edit.setText(str(ckpt))
    widget.device_combo.setCurrentText("cpu")
    widget.threads_spin.setValue(1)
    flat = {"epochs": 2, "batch_size": 2, **TINY_MODEL, **values}
    nested: dict = {}
    for key, v in flat.items():
        *parents, leaf = key.split(".")
        d = nested
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = v
    widget.fields.set_values(nested)


def _model(widget) -> dict:
    """The model config of the widget's settings as a checkpoint stores it."""
    from napari_sim_uq.tasks.sim.net import SimNetConfig

    return SimNetConfig.from_dict(widget.config_dict()["model"]).to_dict()


def _wait(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


def test_train_from_files(make_napari_viewer, qtbot, tmp_path, data_dir, shown):
    from napari_sim_uq.core.io.checkpoint import load_checkpoint
    from napari_sim_uq.tasks.sim.train import MODEL_TYPE

    viewer = make_napari_viewer()
    widget = _dock(viewer)
    assert not widget.advanced.expanded
    assert widget.device_label.text().startswith("device: CPU")
    ckpt = tmp_path / "ckpt"
    _settings(widget, data_dir, ckpt, supervised=True)
    cfg = widget.config_dict()
    assert cfg["model"]["base_channels"] == 4 and cfg["supervised"] is True
    assert cfg["lr"] == 1e-3 and cfg["val_glob"].endswith("*.tif")

    widget.start()  # in a generator thread worker, as a user runs it
    assert widget.worker is not None and widget.stop_btn.isEnabled()
    _wait(qtbot, widget)
    assert shown["error"] == [], shown["error"]
    for name in ("latest.pt", "best.pt", "metrics.csv"):
        assert (ckpt / name).is_file()
    ck = load_checkpoint(ckpt / "best.pt", expected_model_type=MODEL_TYPE)
    assert ck.config["model"]["base_channels"] == 4 and ck.config["train"]["supervised"]
    assert widget.last_result["epochs_done"] == 2
    assert widget.epoch_bar.value() == 2 and widget.batch_bar.value() == 2
    # the live plot has the curves: 2 batches per epoch, one train and val point per epoch
    plot = widget.plot
    assert plot.train_x == [1.0, 2.0] and plot.val_x == [1.0, 2.0]
    assert len(plot.batch_y) == 4 and np.all(np.isfinite(plot.batch_y))
    assert plot.wait_idle() and plot.n_draws >= 2 and plot.n_full_draws >= 1
    assert list(plot.lines["val"].get_xdata()) == [1.0, 2.0]
    assert str(ckpt / "best.pt") in widget.ckpt_info.text()
    assert widget.start_btn.isEnabled() and not widget.stop_btn.isEnabled()

    # best.pt goes to the Reconstruct SIM widget
    widget.use_in_reconstruct()
    _d, rec = viewer.window.add_plugin_dock_widget(PLUGIN, "Reconstruct SIM")
    assert rec.checkpoint_edit.text() == str(ckpt / "best.pt")

    # a second start without 'resume' refuses to overwrite the run
    widget.start()
    assert "tick 'resume'" in shown["error"][-1] and widget.worker is None

    # Load checkpoint fills the settings back in
    other = _dock(make_napari_viewer())
    assert other.load_checkpoint(ckpt / "best.pt")
    assert _model(other) == ck.config["model"]
    assert other.ckpt_edit.text() == str(ckpt) and other.resume_check.isChecked()
    assert other.plot.val_x == [1.0, 2.0]  # the history from metrics.csv


def test_history_from_metrics_csv(make_napari_viewer, tmp_path):
    widget = _dock(make_napari_viewer())
    widget._load_history(tmp_path / "missing")  # no metrics.csv: an empty plot
    assert widget.plot.train_x == [] and widget.plot.val_x == []
    (tmp_path / "metrics.csv").write_text(
        "epoch,train_loss,val_loss\n2,0.5,0.6\n1,1.5,\n3,0.25,0.3\n"
    )
    widget._load_history(tmp_path)  # sorted by epoch; an empty cell adds no point
    assert widget.plot.train_x == [1.0, 2.0, 3.0] and widget.plot.train_y == [1.5, 0.5, 0.25]
    assert widget.plot.val_x == [2.0, 3.0] and widget.plot.val_y == [0.6, 0.3]
    (tmp_path / "metrics.csv").write_text("epoch,train_loss\n1,oops\n")
    widget._load_history(tmp_path)  # unreadable: an empty plot, no error
    assert widget.plot.train_x == [] and widget.plot.val_x == []


def test_stop_leaves_a_loadable_checkpoint(make_napari_viewer, qtbot, tmp_path, data_dir, shown):
    from napari_sim_uq.core.io.checkpoint import load_checkpoint

    viewer = make_napari_viewer()
    widget = _dock(viewer)
    ckpt = tmp_path / "ckpt"
    _settings(widget, data_dir, ckpt, epochs=500, batch_size=1)
    widget.start()
    qtbot.waitUntil(lambda: widget._last_step >= 3, timeout=60_000)
    widget.stop()
    _wait(qtbot, widget)
    assert shown["error"] == []
    ck = load_checkpoint(ckpt / "latest.pt")
    assert 3 <= ck.step < 500 * 4
    assert ck.optimizer_state is not None
    assert "resumable" in widget.status.text() and shown["warning"]
    assert widget.last_result is None  # stopped: no result

    # resume continues from the stopped step (synchronously this time)
    import os

    os.environ["NAPARI_SIM_UQ_NOTHREADS"] = "1"
    try:
        widget.resume_check.setChecked(True)  # loads the stored settings
        assert _model(widget) == ck.config["model"]
        widget.fields.set_values({"epochs": ck.epoch + 2})
        widget.start()
    finally:
        del os.environ["NAPARI_SIM_UQ_NOTHREADS"]
    assert shown["error"] == []
    steps = widget.last_result["steps"]
    assert steps > ck.step
    assert load_checkpoint(ckpt / "latest.pt").step == steps


def test_train_from_layers(make_napari_viewer, tmp_path, monkeypatch, shown):
    from napari_sim_uq.core.io.checkpoint import load_checkpoint

    monkeypatch.setenv("NAPARI_SIM_UQ_NOTHREADS", "1")
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "sim_stack")
    widget = _dock(viewer)
    widget.source_combo.setCurrentText("layers")
    assert widget.raw_layer_combo.currentText() == "SIM sample"
    assert widget.gt_layer_combo.currentText() == "SIM sample GT emitter"
    ckpt = tmp_path / "ckpt"
    _settings(widget, tmp_path, ckpt, epochs=1, batch_size=1, crop=16, supervised=True)
    widget.start()
    assert shown["error"] == [], shown["error"]
    written = ckpt / "layer_data" / "train" / "SIM_sample.tif"
    assert written.is_file() and (ckpt / "layer_data" / "train_gt" / "SIM_sample.tif").is_file()
    ck = load_checkpoint(ckpt / "best.pt")
    assert ck.config["train"]["train_glob"] == str(written)
    assert ck.config["train"]["supervised"] is True


def test_bad_input_gives_notifications(make_napari_viewer, tmp_path, shown):
    viewer = make_napari_viewer()
    widget = _dock(viewer)
    widget.start()
    assert "checkpoint folder" in shown["error"][-1]
    widget.ckpt_edit.setText(str(tmp_path / "ckpt"))
    widget.start()
    assert "training data" in shown["error"][-1]
    widget.train_glob.setText(str(tmp_path / "nothing" / "*.tif"))
    widget.start()
    assert "no files match" in shown["error"][-1]
    widget.train_glob.setText(str(tmp_path / "missing_folder"))
    widget.start()
    assert "no such file or folder" in shown["error"][-1]
    widget.source_combo.setCurrentText("layers")
    widget.start()
    assert "raw SIM stack layer" in shown["error"][-1]
    viewer.add_image(np.ones((9, 16, 16), np.float32), name="stack")
    widget.fields.set_values({"supervised": True})
    widget.start()
    assert "ground-truth (GT) layer" in shown["error"][-1]
    assert widget.worker is None and widget.start_btn.isEnabled()
    assert not (tmp_path / "ckpt").exists()  # nothing was written
