"""The "Generate SIM data" dock widget, opened through the plugin manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_thread")]

PLUGIN = "napari-sim-uq"
NAME = "synthetic sample"


def _dock(viewer):
    _dock_widget, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Generate SIM data")
    return widget


def _tiny(widget, n_train=2, n_val=1, n_test=0):
    widget.fields.set_values(
        {
            "lr_size": (16, 16),
            "hr_factor": 2,
            "job": {"n_train": n_train, "n_val": n_val, "n_test": n_test, "seed": 3},
        }
    )


def _wait(qtbot, widget):
    # the job has ended and its layers (added one per event-loop turn) are there
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)


@pytest.fixture
def errors(monkeypatch):
    import napari_sim_uq._napari._generate_widget as mod

    shown: list[str] = []
    monkeypatch.setattr(mod, "show_error", shown.append)
    monkeypatch.setattr(mod, "show_info", lambda msg: None)
    return shown


def test_preview_adds_overlaid_layers(make_napari_viewer, qtbot, errors, assert_same_noisy_data):
    from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_sample

    viewer = make_napari_viewer()
    widget = _dock(viewer)
    assert not widget.advanced.expanded  # the rest of SynthConfig is folded away
    _tiny(widget)
    widget.fields.set_values({"n_angles": 2, "n_phases": 3})
    widget.preview()  # in a thread worker, as a user runs it
    _wait(qtbot, widget)
    assert errors == []
    assert [lay.name for lay in viewer.layers] == [
        NAME,
        f"{NAME} GT emitter",
        f"{NAME} noise sigma",
    ]
    raw, gt, sigma = (viewer.layers[n] for n in (NAME, f"{NAME} GT emitter", f"{NAME} noise sigma"))
    assert raw.data.shape == sigma.data.shape == (6, 16, 16)
    assert gt.data.shape == (32, 32)
    # the HR emitter overlays the raw frames exactly (DESIGN.md 3)
    np.testing.assert_allclose(gt.scale, (0.5, 0.5))
    np.testing.assert_allclose(gt.translate, (-0.25, -0.25))
    np.testing.assert_allclose(raw.scale[-2:], (1.0, 1.0))
    np.testing.assert_allclose(sigma.scale[-2:], (1.0, 1.0))
    assert raw.metadata["sim_uq"]["layout"] == {"kind": "sim", "angles": 2, "phases": 3}
    # the same sample as the generator's (seed, index); the preview ran in a worker thread with
    # the widget's torch thread count, the reference here: the same draws, up to the rounding
    # of the FFT-computed clean data (issue 11)
    cfg = SynthConfig(lr_size=(16, 16), hr_factor=2, n_angles=2, n_phases=3)
    assert_same_noisy_data(raw.data, generate_sample(cfg, 3, 0).raw, "preview 0")

    # another preview updates the layers in place instead of adding copies
    widget.preview_index.setValue(1)
    widget.preview()
    _wait(qtbot, widget)
    assert len(viewer.layers) == 3
    assert viewer.layers[NAME] is raw  # the same layer (seen through napari's proxy)
    assert_same_noisy_data(viewer.layers[NAME].data, generate_sample(cfg, 3, 1).raw, "preview 1")


def test_write_dataset(make_napari_viewer, qtbot, tmp_path, errors):
    from napari_sim_uq.tasks.sim.dataset import SimStackDataset

    viewer = make_napari_viewer()
    widget = _dock(viewer)
    _tiny(widget, n_train=2, n_val=1)
    out = tmp_path / "data"
    widget.out_edit.setText(str(out))
    widget.write_dataset()
    assert widget.stop_btn.isEnabled()
    _wait(qtbot, widget)
    assert errors == []
    for split, n in (("train", 2), ("val", 1)):
        assert sorted(p.name for p in (out / split).iterdir()) == [
            f"sample_{i:05d}.tif" for i in range(n)
        ]
        assert len(list((out / f"{split}_gt").glob("*.tif"))) == 2 * n  # emitter + patterns
        assert len(list((out / f"{split}_meta").glob("*.npz"))) == n
    assert not (out / "test").exists()
    doc = json.loads((out / "dataset.json").read_text())
    assert doc["splits"]["train"]["seed"] == 3 and doc["splits"]["val"]["seed"] == 1003
    assert doc["splits"]["train"]["config"]["lr_size"] == [16, 16]
    assert widget.progress.value() == widget.progress.maximum() == 3
    ds = SimStackDataset(str(out / "train" / "*.tif"), supervised=True)
    assert ds[0]["emitter_gt"].shape == (1, 32, 32)

    # writing again refuses to overwrite, with a notification
    widget.write_dataset()
    _wait(qtbot, widget)
    assert len(errors) == 1 and "not empty" in errors[0]
    assert widget.write_btn.isEnabled() and not widget.stop_btn.isEnabled()


def test_bad_settings_give_notifications(make_napari_viewer, errors):
    viewer = make_napari_viewer()
    widget = _dock(viewer)
    widget.write_dataset()
    assert "output folder" in errors[-1]
    widget.out_edit.setText("somewhere")
    widget.fields.set_values({"job": {"n_train": 0, "n_val": 0, "n_test": 0}})
    widget.write_dataset()
    assert "nothing to write" in errors[-1]
    widget.fields.set_values({"modulation": (0.9, 0.5)})  # low > high
    widget.preview()
    assert "modulation" in errors[-1]
    assert widget.worker is None and len(viewer.layers) == 0


def test_match_fills_the_optics_of_a_loaded_stack(make_napari_viewer, qtbot, errors):
    """ "Match" estimates the chosen stack's optics in a worker and sets them (one fixed
    instrument), keeping the raw size and HR factor."""
    from napari_sim_uq import match_sim_config

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "sim_stack")
    widget = _dock(viewer)
    _tiny(widget)
    assert widget.match_combo.currentText() == "SIM sample"
    widget.match_layer()
    _wait(qtbot, widget)
    assert errors == []
    cfg = widget.config()
    want, report = match_sim_config(viewer.layers["SIM sample"], lr_size=(16, 16))
    assert cfg.fixed_instrument and cfg.lr_size == (16, 16)
    assert cfg.period_lr == pytest.approx(want.period_lr, rel=1e-6)
    assert cfg.psf_sigma_lr == pytest.approx(want.psf_sigma_lr, rel=1e-6)
    assert cfg.photons == pytest.approx(want.photons, rel=1e-3)
    assert "matched 'SIM sample'" in widget.status.text()
