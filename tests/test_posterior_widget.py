"""The "Posterior reconstruction" dock widget (VAE latent posterior, tasks/vae2d), opened
through the plugin manifest in a real viewer, with a tiny VAE trained here: Stop adds no
layers; a run gives the MAP, posterior mean / std, samples and modes layers, with a larger
std on the painted (missing) box; bad masks and another task's checkpoint give clear errors
and no layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_thread")]

PLUGIN = "napari-sim-uq"
WIDGET = "Posterior reconstruction"
SIZE = 32  # the tiny VAE's patch: one tile, so the modes layer and weights exist
BOX = (slice(10, 20), slice(12, 22))  # the missing region painted on the Labels layer
SUFFIXES = ["MAP", "posterior mean", "posterior std", "samples", "modes"]
FAST = {"n_samples": 6, "n_starts": 2, "adam_steps": 5, "lbfgs_steps": 5, "device": "cpu"}


def _blobs(seed: int, size: int = SIZE) -> np.ndarray:
    """A smooth image with two bright blobs on a background of 100 (like the 2D sample)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    img = np.full((size, size), 100.0, np.float32)
    for _ in range(2):
        cy, cx = rng.uniform(6, size - 6, 2)
        img += 900.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30.0)
    return img


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> Path:
    """A VAE trained for three steps on small blob images (fast to optimise; its decoder
    is poor, so the model error dominates the std of a missing pixel)."""
    from napari_sim_uq.api import train_vae

    out = tmp_path_factory.mktemp("vae")
    result = train_vae(
        [_blobs(s, 48) for s in range(4)],
        out,
        epochs=1,
        max_steps=3,
        batch_size=4,
        patch=SIZE,
        latent_dim=4,
        patches_per_image=2,
        model={"channels": 4, "depth": 2},
        device="cpu",
    )
    return Path(result["best"])


@pytest.fixture
def shown(monkeypatch):
    """Notifications: the widget's own module and the Reconstruct 2D module whose slots
    it shares."""
    import napari_sim_uq._napari._posterior_widget as post
    import napari_sim_uq._napari._reconstruct2d_widget as rec

    msgs: dict[str, list[str]] = {"error": [], "info": [], "warning": []}
    for mod, kinds in ((rec, msgs), (post, ("warning",))):
        for kind in kinds:
            monkeypatch.setattr(mod, f"show_{kind}", msgs[kind].append)
    return msgs


def _dock(viewer):
    _dock_widget, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return widget


def _viewer_with_mask(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(_blobs(7), name="blobs")
    labels = np.zeros((SIZE, SIZE), np.uint8)
    labels[BOX] = 1
    viewer.add_labels(labels, name="missing")
    return viewer


def test_stop_then_run_through_the_manifest(make_napari_viewer, qtbot, tiny_vae, shown):
    viewer = _viewer_with_mask(make_napari_viewer)
    widget = _dock(viewer)
    assert widget.layer_combo.currentText() == "blobs"
    assert widget.mask_combo.currentText() == "none (NaN pixels only)"
    widget.mask_combo.setCurrentText("missing")
    assert widget.samples_spin.value() == 64 and widget.starts_spin.value() == 10
    assert widget.noise_auto.isChecked() and not widget.noise_spin.isEnabled()
    widget.noise_auto.setChecked(False)  # a known, small noise: observed pixels are pinned
    widget.noise_spin.setValue(1.0)
    widget.checkpoint_edit.setText(str(tiny_vae))

    # ---- Stop during a run: no layers, the widget ready again
    widget.options.set_values({**FAST, "adam_steps": 5000})
    widget.run()
    worker = widget.worker
    assert worker is not None and widget.stop_btn.isEnabled()
    qtbot.waitUntil(lambda: "tiles" in widget.status.text(), timeout=60_000)  # optimising
    widget.stop()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    assert shown["error"] == []
    assert "stopped" in widget.status.text()
    assert [lay.name for lay in viewer.layers] == ["blobs", "missing"]
    assert widget.run_btn.isEnabled() and not widget.stop_btn.isEnabled()

    # ---- a run in the thread worker, as a user runs it
    widget.options.set_values(FAST)
    widget.run()
    with qtbot.waitSignal(widget.worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: not widget.busy, timeout=10_000)  # layers are added one by one
    assert shown["error"] == []
    names = [f"blobs {s}" for s in SUFFIXES]
    assert [lay.name for lay in viewer.layers] == ["blobs", "missing", *names]
    for name in names[:3]:
        assert viewer.layers[name].data.shape == (SIZE, SIZE)
    assert viewer.layers["blobs samples"].data.shape == (6, SIZE, SIZE)
    meta = widget.last_prediction.meta
    weights = meta["mode_weights"]
    assert viewer.layers["blobs modes"].data.shape == (len(weights), SIZE, SIZE)
    assert sum(weights) == pytest.approx(1.0, abs=1e-4)
    assert meta["noise_sigma"] == pytest.approx(1.0) and not meta["noise_sigma_estimated"]
    md = viewer.layers["blobs MAP"].metadata["sim_uq"]
    assert md["task"] == "vae2d" and md["reconstruction"]["n_samples"] == 6

    # the missing box is far less certain than the observed pixels
    std = viewer.layers["blobs posterior std"].data
    missing = np.zeros(std.shape, bool)
    missing[BOX] = True
    assert std[missing].mean() > 5 * std[~missing].mean()

    text = widget.result_label.text()
    n = len(weights)
    assert f"{n} posterior mode{'s' if n > 1 else ''}, weights {weights[0]:.3g}" in text
    assert "noise std 1 (given)" in text
    assert f"{meta['chi2_per_observed_pixel_at_map']:.3g}" in text
    assert widget.status.text().startswith("done: 5 layers for 'blobs'")
    assert widget.run_btn.isEnabled()


def test_bad_masks_and_checkpoints_add_no_layers(make_napari_viewer, monkeypatch, tiny_vae, shown):
    from napari_sim_uq.api import image2d_source

    monkeypatch.setenv("NAPARI_SIM_UQ_NOTHREADS", "1")
    viewer = make_napari_viewer()
    widget = _dock(viewer)
    widget.run()  # no image
    assert "choose a 2D image layer" in shown["error"][-1]

    viewer.add_image(_blobs(3), name="blobs")
    widget.checkpoint_edit.setText(str(tiny_vae))
    widget.options.set_values(FAST)

    # a Labels layer added now becomes the mask; one of another size is refused
    viewer.add_labels(np.zeros((20, 20), np.uint8), name="small")
    assert widget.mask_combo.currentText() == "small"
    widget.run()
    assert "has shape (20, 20)" in shown["error"][-1]
    assert "has shape (20, 20)" in widget.status.text()

    # everything painted: nothing observed
    viewer.add_labels(np.ones((SIZE, SIZE), np.uint8), name="all")
    assert widget.mask_combo.currentText() == "small"  # a chosen mask stays chosen
    widget.mask_combo.setCurrentText("all")
    widget.run()
    assert "every pixel is masked" in shown["error"][-1]

    # a Shapes layer: inside the rectangle is missing
    viewer.add_shapes([[[4, 4], [4, 12], [12, 12], [12, 4]]], name="region")
    widget.mask_combo.setCurrentText("region")
    observed = widget.observed(image2d_source(viewer.layers["blobs"]))
    assert not observed[6:10, 6:10].any() and observed[20:, 20:].all()

    # another task's checkpoint: refused when it is loaded
    widget.mask_combo.setCurrentText("none (NaN pixels only)")
    ae2d = Path(__file__).resolve().parents[1] / "example_data" / "ae2d_demo_model.pt"
    widget.checkpoint_edit.setText(str(ae2d))
    widget.run()
    assert "ae2d" in shown["error"][-1] and "VAE" in shown["error"][-1]
    assert widget.result_label.text() == "modes: –"

    assert [lay.name for lay in viewer.layers] == ["blobs", "small", "all", "region"]
    assert widget.run_btn.isEnabled() and not widget.stop_btn.isEnabled()
