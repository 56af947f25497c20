"""The "Uncertainty explorer" dock widget, opened through the plugin manifest."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sim_uq.core.uq import explore as X
from napari_sim_uq.core.uq import metrics as M

pytestmark = pytest.mark.gui

PLUGIN = "napari-sim-uq"
SHAPE = (48, 64)
HR = {"scale": (0.5, 0.5), "translate": (-0.25, -0.25)}


@pytest.fixture
def errors(monkeypatch):
    import napari_sim_uq._napari._explorer_widget as mod

    shown: list[str] = []
    monkeypatch.setattr(mod, "show_error", shown.append)
    monkeypatch.setattr(mod, "show_info", lambda msg: None)
    return shown


def _data(seed=3):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    mean = (2.0 + np.sin(xx / 5.0) + np.cos(yy / 7.0)).astype(np.float32)
    std = (0.05 + 0.3 * rng.random(SHAPE)).astype(np.float32)
    gt = (mean + 1.5 * std * rng.standard_normal(SHAPE)).astype(np.float32)
    return mean, std, gt


def _viewer_with_pair(make_napari_viewer):
    viewer = make_napari_viewer()
    mean, std, gt = _data()
    viewer.add_image(np.zeros((9, 24, 32), np.float32), name="X")  # raw stack on the LR grid
    viewer.add_image(mean, name="X emitter", **HR)
    viewer.add_image(
        std, name="X emitter std", metadata={"sim_uq": {"output": "emitter_std"}}, **HR
    )
    viewer.add_image(gt, name="X GT emitter", **HR)
    return viewer, mean, std, gt


def _dock(viewer):
    _dock_widget, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Uncertainty explorer")
    return widget


def test_explorer_through_the_manifest(make_napari_viewer, qtbot, errors):
    viewer, mean, std, gt = _viewer_with_pair(make_napari_viewer)
    w = _dock(viewer)
    # automatic pairing by the layer names, ground truth included
    assert w.mean_combo.currentText() == "X emitter"
    assert w.std_combo.currentText() == "X emitter std"
    assert w.ref_combo.currentText() == "X GT emitter"
    assert w.stats is not None and errors == []
    # default threshold: the 95th percentile of the std
    assert w.threshold() == pytest.approx(np.percentile(std, 95), rel=1e-3)

    # calibration numbers as uq.metrics computes them on the same data
    r = gt.astype(np.float64) - mean
    s = std.astype(np.float64)
    cal = w.stats["calibration"]
    assert cal["zms"] == pytest.approx(M.zms(r, s))
    assert cal["spearman"] == pytest.approx(M.spearman(s, np.abs(r)))
    assert cal["cov68"] == pytest.approx(M.coverage(r, s, M.LEVEL_1SIGMA))
    assert cal["cov95"] == pytest.approx(M.coverage(r, s, M.LEVEL_2SIGMA))
    assert f"ZMS {M.zms(r, s):.3g}" in w.calib_label.text()
    assert w.scale_spin.value() == pytest.approx(M.sigma_scale(r, s), abs=1e-4)
    assert w.ax_cal.get_lines()  # the curve is drawn

    # mark unreliable regions: an HR Labels layer equal to an independent threshold
    w.threshold_spin.setValue(0.2)
    w.mark_unreliable()
    lab = viewer.layers["X emitter unreliable"]
    np.testing.assert_array_equal(lab.data, (std > 0.2).astype(np.uint8))
    np.testing.assert_allclose(lab.scale, HR["scale"])
    np.testing.assert_allclose(lab.translate, HR["translate"])
    assert f"{100 * np.mean(std > 0.2):.2f} %" in w.flagged_label.text()
    n_layers = len(viewer.layers)
    # relative std, run again: the Labels layer is replaced, not added
    w.mode_combo.setCurrentText("relative std (std/|mean|)")
    assert w.threshold() == pytest.approx(np.percentile(std / np.abs(mean), 95), rel=1e-3)
    w.threshold_spin.setValue(0.05)
    w.mark_unreliable()
    assert len(viewer.layers) == n_layers
    rel = std.astype(np.float64) / np.abs(mean.astype(np.float64))  # |mean| >> eps here
    np.testing.assert_array_equal(
        viewer.layers["X emitter unreliable"].data, (rel > w.threshold()).astype(np.uint8)
    )

    # cursor readout through the HR layer's scale/translate: data = (world + 0.25) / 0.5
    viewer.cursor.position = (0.0, 9.75, 6.75)
    assert (
        w.readout.text()
        == f"mean ± std: {X.format_mean_std(mean[20, 14], std[20, 14])} at [20, 14]"
    )
    viewer.cursor.position = (0.0, -0.2, 3.3)  # data (0.1, 7.1) -> pixel (0, 7)
    assert X.format_mean_std(mean[0, 7], std[0, 7]) in w.readout.text()
    viewer.cursor.position = (0.0, 30.0, 3.0)
    assert "outside" in w.readout.text()

    # apply the fitted sigma scale: std multiplied by it, cumulative scale recorded
    fitted = w.scale_spin.value()
    w.apply_sigma_scale()
    std_layer = viewer.layers["X emitter std"]
    np.testing.assert_allclose(std_layer.data, std * np.float32(fitted), rtol=1e-6)
    assert X.applied_sigma_scale(std_layer.metadata) == pytest.approx(fitted)
    assert std_layer.metadata["sim_uq"]["output"] == "emitter_std"
    # the statistics follow the new data: refitted scale ~ 1, ZMS ~ 1
    assert w.stats["calibration"]["zms"] == pytest.approx(1.0, rel=1e-3)
    assert w.scale_spin.value() == pytest.approx(1.0, abs=1e-3)
    w.scale_spin.setValue(2.0)
    w.apply_sigma_scale()
    np.testing.assert_allclose(std_layer.data, std * np.float32(fitted) * 2, rtol=1e-5)
    assert f"× {fitted * 2:.4g}" in w.scale_label.text()
    assert errors == []


def test_threaded_statistics(make_napari_viewer, qtbot, errors):
    viewer, mean, std, gt = _viewer_with_pair(make_napari_viewer)
    w = _dock(viewer)
    w.inline_max_pixels = 0  # every image counts as big: statistics in a thread worker
    w.log_check.setChecked(True)
    assert w.busy
    qtbot.waitUntil(lambda: not w.busy, timeout=20_000)
    assert w.stats["hist"]["log"] and errors == []
    assert w.ax_hist.get_xscale() == "log"
    w.ref_combo.setCurrentText("(none)")
    qtbot.waitUntil(lambda: not w.busy, timeout=20_000)
    assert w.stats["calibration"] is None and w.calib_label.text() == ""


def test_mismatched_shapes_notify(make_napari_viewer, errors):
    viewer, mean, std, gt = _viewer_with_pair(make_napari_viewer)
    w = _dock(viewer)
    w.std_combo.setCurrentText("X")  # (9, 24, 32) raw stack against a (48, 64) mean
    assert len(errors) == 1 and "different shapes" in errors[0]
    assert w.stats is None
    w.mark_unreliable()  # an explicit action notifies again, and adds nothing
    assert len(errors) == 2 and "X emitter unreliable" not in viewer.layers
    w.std_combo.setCurrentText("X emitter std")
    assert w.stats is not None
    w.ref_combo.setCurrentText("X")
    assert len(errors) == 3 and "reference" in errors[-1]
    # a removed std layer leaves the choice empty (no arbitrary layer, no notification)
    w.ref_combo.setCurrentText("(none)")
    viewer.layers.remove("X emitter std")
    assert w.std_combo.currentText() == "(none)"
    assert w.stats is None and len(errors) == 3
