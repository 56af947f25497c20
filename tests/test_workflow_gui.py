"""The whole napari workflow through the manifest, in one viewer: Generate SIM data ->
Train SIM model -> Reconstruct SIM -> Uncertainty explorer, with an independent check that
the HR layers overlay the raw frames in world coordinates."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_thread")]

PLUGIN = "napari-sim-uq"


def _dock(viewer, name):
    _dock_widget, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def _world(layer, index):
    return np.asarray(layer.data_to_world(np.asarray(index, float)))[-2:]


@pytest.fixture
def no_popups(monkeypatch):
    """Collect every notification the widgets would show."""
    import napari_sim_uq._napari._explorer_widget as ex
    import napari_sim_uq._napari._generate_widget as gen
    import napari_sim_uq._napari._reconstruct_widget as rec
    import napari_sim_uq._napari._train_widget as tr

    errors: list[str] = []
    for mod in (gen, tr, rec, ex):
        for kind in ("show_error", "show_info", "show_warning"):
            if hasattr(mod, kind):
                sink = errors.append if kind == "show_error" else (lambda m: None)
                monkeypatch.setattr(mod, kind, sink)
    return errors


def test_generate_train_reconstruct_explore(make_napari_viewer, qtbot, tmp_path, no_popups):
    viewer = make_napari_viewer()

    # 1. Generate: a preview sample as layers and a tiny dataset on disk
    gen = _dock(viewer, "Generate SIM data")
    gen.fields.set_values(
        {
            "lr_size": (32, 32),
            "hr_factor": 2,
            "job": {"n_train": 3, "n_val": 1, "n_test": 0, "seed": 5},
        }
    )
    gen.preview()
    qtbot.waitUntil(lambda: not gen.busy, timeout=60_000)
    data = tmp_path / "data"
    gen.out_edit.setText(str(data))
    gen.write_dataset()
    qtbot.waitUntil(lambda: not gen.busy, timeout=60_000)
    assert no_popups == []
    assert len(list((data / "train").glob("*.tif"))) == 3

    raw_layer = viewer.layers["synthetic sample"]
    gt_layer = viewer.layers["synthetic sample GT emitter"]
    # independent alignment check: the GT, blurred and read at the world positions of the
    # camera pixel centres through the layers' own transforms, matches the widefield image
    # best without any shift (a layer off by one camera pixel would favour a shift)
    wf = np.asarray(raw_layer.data, float).mean(0)
    blurred = ndimage.gaussian_filter(np.asarray(gt_layer.data, float), 2.0)
    rows, cols = np.meshgrid(np.arange(32.0), np.arange(32.0), indexing="ij")
    world = np.stack([rows.ravel(), cols.ravel()], 1) * raw_layer.scale[-2:]
    world = world + raw_layer.translate[-2:]
    at = (world - gt_layer.translate) / gt_layer.scale  # GT data coordinates
    seen = ndimage.map_coordinates(blurred, at.T, order=1, mode="nearest").reshape(32, 32)

    def corr(dy, dx):
        a = np.roll(seen, (dy, dx), axis=(0, 1))[3:-3, 3:-3]
        return np.corrcoef(a.ravel(), wf[3:-3, 3:-3].ravel())[0, 1]

    scores = {(dy, dx): corr(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    assert max(scores, key=scores.get) == (0, 0), scores
    assert scores[(0, 0)] > 0.9
    i_hr = np.unravel_index(np.argmax(blurred), blurred.shape)

    # 2. Train a tiny model on the written files
    tr = _dock(viewer, "Train SIM model")
    tr.train_glob.setText(str(data / "train" / "*.tif"))
    tr.val_glob.setText(str(data / "val" / "*.tif"))
    ckpt = tmp_path / "ckpt"
    tr.ckpt_edit.setText(str(ckpt))
    tr.device_combo.setCurrentText("cpu")
    tr.fields.set_values(
        {
            "epochs": 1,
            "batch_size": 2,
            "supervised": True,
            "model": {"base_channels": 4, "depth": 1, "psf_size": 5},
        }
    )
    tr.start()
    qtbot.waitUntil(lambda: tr.worker is None, timeout=120_000)
    assert no_popups == [], no_popups
    assert (ckpt / "best.pt").is_file()

    # 3. Reconstruct the previewed raw stack with that checkpoint
    tr.use_in_reconstruct()
    rec = _dock(viewer, "Reconstruct SIM")
    assert rec.checkpoint_edit.text() == str(ckpt / "best.pt")
    rec.layer_combo.setCurrentText("synthetic sample")
    rec.device_combo.setCurrentText("cpu")
    rec.run()
    with qtbot.waitSignal(rec.worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: not rec.busy, timeout=10_000)
    assert no_popups == [], no_popups
    em = viewer.layers["synthetic sample emitter"]
    std = viewer.layers["synthetic sample emitter std"]
    assert em.data.shape == std.data.shape == gt_layer.data.shape == (64, 64)
    # every HR pixel of the reconstruction sits where the GT's same pixel sits
    for idx in [(0, 0), i_hr, (63, 63)]:
        np.testing.assert_allclose(_world(em, idx), _world(gt_layer, idx), atol=1e-9)
    # HR pixel (2i + 1/2 ...) lies inside raw pixel i: its centre is within half a camera
    # pixel of that raw pixel's centre
    for i in [(0, 0), (10, 21), (31, 31)]:
        hr = (2 * i[0], 2 * i[1])
        assert np.abs(_world(em, hr) - _world(raw_layer, i)).max() <= 0.5

    # 4. Explore: mark unreliable pixels of the reconstruction
    ex = _dock(viewer, "Uncertainty explorer")
    ex.mean_combo.setCurrentText("synthetic sample emitter")
    assert ex.std_combo.currentText() == "synthetic sample emitter std"
    ex.mark_unreliable()
    labels = viewer.layers["synthetic sample emitter unreliable"]
    expected = (std.data > ex.threshold()).astype(labels.data.dtype)
    np.testing.assert_array_equal(labels.data, expected)
    np.testing.assert_allclose(labels.scale, em.scale)
    np.testing.assert_allclose(labels.translate, em.translate)
    assert no_popups == [], no_popups
