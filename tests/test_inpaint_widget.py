"""The "Masked reconstruction" dock widget (masked autoencoder, tasks/mae2d), opened through
the plugin manifest in a real viewer, with a tiny MAE trained here: Stop adds no layers; a
run with a painted missing box gives the inpainted, MAE std and masked input layers (the
observed pixels kept, a finite positive std on the missing ones); a run with random tokens
replaces them and records the hidden pixels' metrics; bad images, masks and checkpoints
give one-line errors and no layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_thread")]

PLUGIN = "napari-sim-uq"
WIDGET = "Masked reconstruction"
SIZE = 40  # larger than the tiny model's 16 x 16 images: 9 overlapping tiles
BOX = (slice(12, 24), slice(8, 28))  # the missing region painted on the Labels layer
SUFFIXES = ["inpainted", "MAE std", "masked input"]
FAST = {"num_samples": 8, "device": "cpu"}
ROOT = Path(__file__).resolve().parents[1]


def _clean(seed: int, size: int = SIZE) -> np.ndarray:
    """A clean image made like the 2D sample (textured nuclei)."""
    from napari_sim_uq.tasks.sim.samples import image2d_clean

    return image2d_clean(seed=seed, size=size).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_mae(tmp_path_factory) -> Path:
    """A ViT MAE (16 x 16 images, 4-pixel tokens) trained for three steps."""
    from napari_sim_uq.api import train_mae

    out = tmp_path_factory.mktemp("mae")
    result = train_mae(
        [_clean(s, 48) for s in range(4)],
        out,
        epochs=1,
        max_steps=3,
        batch_size=4,
        patch=16,
        patches_per_image=2,
        embed_dim=16,
        depth=1,
        num_heads=2,
        model={"decoder_dim": 16, "decoder_heads": 2},
        warmup_steps=0,
        device="cpu",
    )
    return Path(result["best"])


@pytest.fixture
def shown(monkeypatch):
    """Notifications: the widget's own module and the Reconstruct 2D module whose slots
    it shares."""
    import napari_sim_uq._napari._inpaint_widget as inp
    import napari_sim_uq._napari._reconstruct2d_widget as rec

    msgs: dict[str, list[str]] = {"error": [], "info": [], "warning": []}
    for mod, kinds in ((rec, msgs), (inp, ("warning",))):
        for kind in kinds:
            monkeypatch.setattr(mod, f"show_{kind}", msgs[kind].append)
    return msgs


def _dock(viewer):
    _dock_widget, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return widget


def _wait_for_run(widget, qtbot) -> None:
    with qtbot.waitSignal(widget.worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: not widget.busy, timeout=10_000)  # layers are added one by one


def test_stop_then_runs_through_the_manifest(make_napari_viewer, qtbot, tiny_mae, shown):
    from napari_sim_uq._napari._inpaint_widget import NAN_PIXELS, RANDOM_TOKENS

    viewer = make_napari_viewer()
    image = _clean(7)
    viewer.add_image(image, name="cells")
    widget = _dock(viewer)
    assert widget.layer_combo.currentText() == "cells"
    assert widget.mask_combo.currentText() == NAN_PIXELS
    assert widget.ratio_spin.value() == pytest.approx(0.75) and not widget.ratio_spin.isEnabled()
    assert widget.samples_spin.value() == 16 and widget.drop_spin.value() == pytest.approx(0.25)
    labels = np.zeros((SIZE, SIZE), np.uint8)
    labels[BOX] = 1
    viewer.add_labels(labels, name="missing")
    assert widget.mask_combo.currentText() == "missing"  # a region to paint: chosen
    widget.checkpoint_edit.setText(str(tiny_mae))

    # ---- Stop during a run: no layers, the widget ready again
    widget.options.set_values({**FAST, "num_samples": 50_000})
    widget.run()
    worker = widget.worker
    assert worker is not None and widget.stop_btn.isEnabled() and not widget.run_btn.isEnabled()
    qtbot.waitUntil(lambda: "tile" in widget.status.text(), timeout=60_000)  # passes run
    widget.stop()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    assert shown["error"] == []
    assert "stopped" in widget.status.text()
    assert [lay.name for lay in viewer.layers] == ["cells", "missing"]
    assert widget.run_btn.isEnabled() and not widget.stop_btn.isEnabled()

    # ---- a run with the painted box, in the thread worker, as a user runs it
    widget.options.set_values(FAST)
    widget.run()
    _wait_for_run(widget, qtbot)
    assert shown["error"] == []
    names = [f"cells {s}" for s in SUFFIXES]
    assert [lay.name for lay in viewer.layers] == ["cells", "missing", *names]
    inpainted, std, masked = (viewer.layers[n].data for n in names)
    for data in (inpainted, std, masked):
        assert data.shape == (SIZE, SIZE)
    missing = labels > 0
    np.testing.assert_array_equal(inpainted[~missing], image[~missing])
    assert np.isfinite(inpainted).all()
    assert np.isfinite(std[missing]).all() and (std[missing] > 0).all()
    assert np.isnan(masked[missing]).all() and np.isfinite(masked[~missing]).all()
    meta = widget.last_prediction.meta
    assert meta["n_missing"] == missing.sum() and meta["num_samples"] == 8
    assert meta["mask_ratio"] is None and "metrics" not in meta  # no truth for the box
    assert meta["augment"] is False
    md = viewer.layers["cells inpainted"].metadata["sim_uq"]
    assert md["source"] == "cells" and md["reconstruction"]["model"] == "mae2d"
    text = widget.result_label.text()
    assert f"mean std of the {missing.sum()} missing pixels: {meta['std_mean_missing']:.4g}" in text
    check = meta["leave_out_check"]
    assert f"leave-out check on {check['n_pixels']} observed pixels" in text
    assert "PSNR" not in text
    assert widget.status.text().startswith("done: 3 layers for 'cells'")

    # ---- random tokens: the image is its own truth; the layers are replaced; the mean
    # averaged over the tile symmetries (Advanced)
    widget.mask_combo.setCurrentText(RANDOM_TOKENS)
    assert widget.ratio_spin.isEnabled()
    widget.options.set_values({**FAST, "augment": True})
    widget.run()
    _wait_for_run(widget, qtbot)
    assert shown["error"] == []
    assert widget.last_prediction.meta["augment"] is True
    assert [lay.name for lay in viewer.layers] == ["cells", "missing", *names]
    inpainted, std, masked = (viewer.layers[n].data for n in names)
    hidden = np.isnan(masked)
    assert hidden.mean() == pytest.approx(0.75)  # 75 of the 100 4 x 4 tokens
    np.testing.assert_array_equal(inpainted[~hidden], image[~hidden])
    assert np.isfinite(std[hidden]).all() and (std[hidden] > 0).all()
    metrics = viewer.layers["cells MAE std"].metadata["sim_uq"]["reconstruction"]["metrics"]
    for key in ("psnr_missing", "psnr_missing_biharmonic", "zms_missing", "coverage95_missing"):
        assert np.isfinite(metrics[key]), key
    assert viewer.layers["cells inpainted"].metadata["sim_uq"]["reconstruction"]["mask_ratio"] == (
        pytest.approx(0.75)
    )
    text = widget.result_label.text()
    assert f"hidden pixels: PSNR {metrics['psnr_missing']:.3g} dB" in text
    assert f"(biharmonic {metrics['psnr_missing_biharmonic']:.3g} dB" in text
    assert widget.run_btn.isEnabled() and not widget.stop_btn.isEnabled()


def test_bad_input_gives_one_line_errors_and_no_layers(
    make_napari_viewer, monkeypatch, tmp_path, tiny_mae, shown
):
    import napari_sim_uq.api as api
    from napari_sim_uq._napari._inpaint_widget import NAN_PIXELS, NO_RESULT, RANDOM_TOKENS

    monkeypatch.setenv("NAPARI_SIM_UQ_NOTHREADS", "1")
    image2d_source = api.image2d_source
    viewer = make_napari_viewer()
    widget = _dock(viewer)
    widget.options.set_values(FAST)

    def fails(*fragments: str) -> str:
        n = len(shown["error"])
        widget.run()
        assert len(shown["error"]) == n + 1, widget.status.text()
        msg = shown["error"][-1]
        for fragment in fragments:
            assert fragment in msg
        assert "\n" not in msg and "Traceback" not in msg
        assert widget.status.text() == msg and widget.result_label.text() == NO_RESULT
        assert widget.run_btn.isEnabled() and not widget.stop_btn.isEnabled()
        return msg

    fails("choose a 2D image layer")  # no image

    viewer.add_image(np.full((SIZE, SIZE), np.nan, np.float32), name="blank")
    widget.checkpoint_edit.setText(str(tiny_mae))
    fails("every pixel is masked (or NaN)")
    viewer.layers.remove("blank")

    viewer.add_image(_clean(3), name="cells")
    fails("has no NaN pixels", RANDOM_TOKENS)  # nothing missing

    # a Labels layer added now becomes the mask; one of another size is refused
    viewer.add_labels(np.zeros((20, 20), np.uint8), name="small")
    assert widget.mask_combo.currentText() == "small"
    fails("has shape (20, 20)")
    viewer.add_labels(np.zeros((SIZE, SIZE), np.uint8), name="unpainted")
    assert widget.mask_combo.currentText() == "small"  # a chosen mask stays chosen
    widget.mask_combo.setCurrentText("unpainted")
    fails("nothing is missing", "'unpainted'")

    # a Shapes layer: inside the rectangle is missing
    viewer.add_shapes([[[4, 4], [4, 12], [12, 12], [12, 4]]], name="region")
    widget.mask_combo.setCurrentText("region")
    observed = widget.observed(image2d_source(viewer.layers["cells"]))
    assert not observed[6:10, 6:10].any() and observed[20:, 20:].all()

    # checkpoints: random tokens need no mask, so only the checkpoint can be wrong
    widget.mask_combo.setCurrentText(RANDOM_TOKENS)
    widget.checkpoint_edit.setText(str(tmp_path / "nope.pt"))
    fails("does not exist", "sim-uq train-mae")
    widget.checkpoint_edit.setText(str(tmp_path))
    fails("is a folder")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint" * 10)
    widget.checkpoint_edit.setText(str(garbage))
    fails("not a napari-sim-uq checkpoint")
    widget.checkpoint_edit.setText(str(ROOT / "example_data" / "vae2d_demo_model.pt"))
    fails("vae2d", "masked reconstruction", "train-mae")  # another task's checkpoint
    # empty: the bundled example model, with a clear error where it is missing
    monkeypatch.setattr(api, "EXAMPLE_MAE_MODEL", "no_such_model.pt")
    widget.checkpoint_edit.clear()
    fails("bundled example masked autoencoder", "no_such_model.pt")

    assert [lay.name for lay in viewer.layers] == ["cells", "small", "unpainted", "region"]
    assert shown["info"] == []

    # after the errors a good run works (on the calling thread here)
    widget.mask_combo.setCurrentText(NAN_PIXELS)
    data = _clean(3)
    data[BOX] = np.nan
    viewer.add_image(data, name="holes")
    widget.layer_combo.setCurrentText("holes")
    widget.checkpoint_edit.setText(str(tiny_mae))
    n_errors = len(shown["error"])
    widget.run()
    assert len(shown["error"]) == n_errors
    assert widget.status.text().startswith("done: 3 layers for 'holes'"), widget.status.text()
    inpainted = viewer.layers["holes inpainted"].data
    assert np.isfinite(inpainted).all()
    np.testing.assert_array_equal(inpainted[np.isfinite(data)], data[np.isfinite(data)])
