"""The 2D dock widgets ("Train 2D", "Reconstruct 2D", "Anomaly map"), opened through the
plugin manifest in a real viewer: train a tiny model on a layer, reconstruct with it, score
anomalies; the widgets give the console functions' layers; bad input adds no layers."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_thread")]

PLUGIN = "napari-sim-uq"
SUFFIXES = ["mean", "std", "epistemic std", "aleatoric std"]
TINY = {
    "epochs": 1,
    "batch_size": 4,
    "patch": 32,
    "patches_per_image": 4,
    "model": {"base_channels": 8, "depth": 2},
}


@pytest.fixture
def shown(monkeypatch):
    """Notifications of the three widgets (the anomaly widget shares the reconstruct
    widget's module functions)."""
    import napari_sim_uq._napari._reconstruct2d_widget as rec
    import napari_sim_uq._napari._train2d_widget as train

    msgs: dict[str, list[str]] = {"error": [], "info": [], "warning": []}
    for mod in (rec, train):
        for kind in msgs:
            monkeypatch.setattr(mod, f"show_{kind}", msgs[kind].append)
    return msgs


def _dock(viewer, name):
    _dock_widget, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def _close(got, want):
    """A widget run (thread worker, its own torch thread count) and a console run of the
    same input, model and seed: equal up to float32 rounding."""
    want = np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


def test_train_reconstruct_and_score_through_the_manifest(
    make_napari_viewer, qtbot, tmp_path, monkeypatch, shown
):
    from napari_sim_uq import anomaly_map, reconstruct_2d

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cells_2d")
    src = viewer.layers["cells 2D"]
    src.scale, src.translate = (0.2, 0.2), (5.0, -1.0)

    # ---- Train 2D on the layer, in a thread worker as a user runs it
    train = _dock(viewer, "Train 2D")
    train.set_checked_layers(["cells 2D"])
    train.out_edit.setText(str(tmp_path / "run"))
    train.fields.set_values({**TINY, "device": "cpu"})
    train.threads_spin.setValue(1)
    train.start()
    assert shown["error"] == [] and train.worker is not None
    with qtbot.waitSignal(train.worker.finished, timeout=300_000):
        pass
    assert shown["error"] == []
    result = train.last_result
    assert result["epochs_done"] == 1 and result["steps"] == 1
    ckpt = tmp_path / "run" / "best.pt"
    assert ckpt.is_file() and (tmp_path / "run" / "layer_data" / "train").is_dir()
    assert train.plot.has_data and train.use_btn.isEnabled()

    # ---- "Use in Reconstruct 2D" opens the reconstruct widget with best.pt
    train.use_in_reconstruct()
    rec = _dock(viewer, "Reconstruct 2D")
    assert rec.checkpoint_edit.text() == str(ckpt)
    assert rec.layer_combo.currentText() == "cells 2D"
    rec.mc_spin.setValue(3)
    rec.device_combo.setCurrentText("cpu")
    rec.run()
    with qtbot.waitSignal(rec.worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: not rec.busy, timeout=10_000)  # layers are added one by one
    assert shown["error"] == []
    names = [f"cells 2D {s}" for s in SUFFIXES]
    assert [lay.name for lay in viewer.layers] == ["cells 2D", *names]
    console = reconstruct_2d(src, ckpt, mc_samples=3, device="cpu")
    for (data, kw, _k), name in zip(console, names, strict=True):
        lay = viewer.layers[name]
        _close(lay.data, data)
        np.testing.assert_allclose(lay.scale, (0.2, 0.2))
        np.testing.assert_allclose(lay.translate, (5.0, -1.0))
        md = lay.metadata["sim_uq"]["reconstruction"]
        assert md["config_hash"] == kw["metadata"]["sim_uq"]["reconstruction"]["config_hash"]
        assert md["mc_samples"] == 3 and md["model_type"] == "ae2d"

    # ---- the explorer pairs the mean with its total std
    explorer = _dock(viewer, "Uncertainty explorer")
    explorer.mean_combo.setCurrentText("cells 2D mean")
    assert explorer.std_combo.currentText() == "cells 2D std"

    # ---- a second run, synchronous, with "degrade first": layers replaced, one added
    monkeypatch.setenv("NAPARI_SIM_UQ_NOTHREADS", "1")
    rec.degrade_check.setChecked(True)
    rec.degrade_edit.setText("noise:0.05")
    rec.run()
    assert shown["error"] == []
    assert [lay.name for lay in viewer.layers] == ["cells 2D", *names, "cells 2D degraded"]
    degraded = reconstruct_2d(src, ckpt, mc_samples=3, device="cpu", degrade="noise:0.05")
    _close(viewer.layers["cells 2D degraded"].data, degraded[-1][0])
    _close(viewer.layers["cells 2D mean"].data, degraded[0][0])

    # ---- Anomaly map: the score layer and the image score shown in the widget
    anom = _dock(viewer, "Anomaly map")
    anom.layer_combo.setCurrentText("cells 2D")
    anom.checkpoint_edit.setText(str(ckpt))
    anom.mc_spin.setValue(3)
    anom.device_combo.setCurrentText("cpu")
    anom.run()
    assert shown["error"] == []
    ((want, kw, _k),) = anomaly_map(src, ckpt, mc_samples=3, device="cpu")
    layer = viewer.layers["cells 2D anomaly score"]
    _close(layer.data, want)
    score = kw["metadata"]["sim_uq"]["image_score"]
    assert anom.image_score == pytest.approx(score, rel=1e-4)
    assert layer.metadata["sim_uq"]["image_score"] == pytest.approx(score, rel=1e-4)
    assert f"{anom.image_score:.4g}" in anom.score_label.text()


def test_bad_input_shows_a_clear_error_and_adds_no_layers(
    make_napari_viewer, tmp_path, monkeypatch, shown
):
    from pathlib import Path

    monkeypatch.setenv("NAPARI_SIM_UQ_NOTHREADS", "1")
    sim_model = Path(__file__).resolve().parents[1] / "example_data" / "sim_uq_demo_model.pt"
    viewer = make_napari_viewer()
    rec = _dock(viewer, "Reconstruct 2D")
    rec.run()  # no layer
    assert "choose a 2D image layer" in shown["error"][-1]

    bad = np.random.default_rng(0).uniform(size=(32, 32))
    bad[3, 4] = np.nan
    viewer.add_image(bad, name="bad")
    rec.layer_combo.setCurrentText("bad")
    rec.run()
    assert "NaN" in shown["error"][-1] and "NaN" in rec.status.text()

    viewer.add_image(np.random.default_rng(1).uniform(size=(32, 32)), name="good")
    rec.layer_combo.setCurrentText("good")
    rec.checkpoint_edit.setText(str(sim_model))
    rec.device_combo.setCurrentText("cpu")
    rec.run()
    assert "SIM reconstruction model" in shown["error"][-1]
    rec.checkpoint_edit.setText(str(tmp_path / "missing.pt"))
    rec.run()
    assert "does not exist" in shown["error"][-1]
    rec.checkpoint_edit.clear()
    rec.degrade_check.setChecked(True)
    rec.degrade_edit.setText("fog:3")
    rec.run()
    assert "fog" in shown["error"][-1]

    anom = _dock(viewer, "Anomaly map")
    viewer.add_image(np.random.default_rng(2).uniform(size=(5, 5)), name="tiny")
    anom.layer_combo.setCurrentText("tiny")
    anom.run()  # the bundled model needs 8 x 8 pixels
    assert "smaller than the minimum" in shown["error"][-1]
    assert anom.image_score is None

    train = _dock(viewer, "Train 2D")
    train.start()
    assert "output folder" in shown["error"][-1]
    train.out_edit.setText(str(tmp_path / "run"))
    train.source_combo.setCurrentText("layers")
    train.start()
    assert "tick at least one image layer" in shown["error"][-1]
    train.set_checked_layers(["bad"])
    train.start()
    assert "NaN" in shown["error"][-1]
    assert not (tmp_path / "run").exists()  # nothing written

    assert [lay.name for lay in viewer.layers] == ["bad", "good", "tiny"]
    assert rec.run_btn.isEnabled() and anom.run_btn.isEnabled() and train.start_btn.isEnabled()
