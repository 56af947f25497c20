"""Fields smaller than the model's context (issue 11): refused below the minimum, padded with
a warning (Python, napari, layer metadata) above it, and nothing written on refusal."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_sim_uq.cli import main
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import run
from napari_sim_uq.core.io.checkpoint import load_checkpoint
from napari_sim_uq.core.io.tiff_io import read_image, write_image
from napari_sim_uq.tasks.sim.net import SimNetConfig, SimUQNet
from napari_sim_uq.tasks.sim.predict import (
    MIN_SIM_FIELD,
    SmallInputWarning,
    _reflect_index,
    predict_sim_sync,
)
from napari_sim_uq.tasks.sim.reconstruct import load_sim_model, model_context, reconstruct_sim_job

EXAMPLES = Path(__file__).resolve().parents[1] / "example_data"
MODEL = EXAMPLES / "sim_uq_demo_model.pt"
F_HR = 2

pytestmark = pytest.mark.usefixtures("one_thread")


def _net() -> SimUQNet:
    torch.manual_seed(0)
    cfg = SimNetConfig(depth=1, base_channels=8, hr_factor=F_HR, psf_size=5, dropout=0.0)
    return SimUQNet(cfg).eval()


def _frames(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(1).random((9, h, w), dtype=np.float32)


@pytest.mark.parametrize(("n", "before", "total"), [(5, 2, 9), (3, 7, 20), (2, 3, 9), (6, 0, 6)])
def test_reflect_index_matches_numpy_pad(n, before, total):
    a = np.arange(n)
    ref = np.pad(a, (before, total - n - before), mode="reflect")
    np.testing.assert_array_equal(a[_reflect_index(n, before, total).numpy()], ref)


def test_below_the_minimum_is_refused():
    with pytest.raises(InputError, match=rf"4 x 7 raw pixels.*minimum of {MIN_SIM_FIELD}"):
        predict_sim_sync(_net(), _frames(4, 7), context=32)


def test_small_field_is_padded_to_the_context_and_cropped_back():
    net, x = _net(), _frames(12, 20)
    with pytest.warns(SmallInputWarning, match=r"12 x 20 raw pixels.*the 32 x 32"):
        p = predict_sim_sync(net, x, context=32)
    ctx = p.meta["context"]
    assert ctx["limited"] and ctx["padded_to"] == [32, 32] and ctx["pad"] == [10, 10, 6, 6]
    assert p.emitter.shape == (24, 40) and p.emitter_std.shape == (24, 40)
    assert (
        p.lp.shape == (9, 24, 40) and p.rec.shape == (9, 12, 20) and p.rec_std.shape == p.rec.shape
    )
    # the same as padding by hand (torch's replicate padding) and cropping the full result
    padded = F.pad(torch.from_numpy(x)[None], (6, 6, 10, 10), mode="replicate")[0].numpy()
    full = predict_sim_sync(net, padded)
    hr = (slice(20, 44), slice(12, 52))
    np.testing.assert_allclose(p.emitter, full.emitter[hr], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p.emitter_std, full.emitter_std[hr], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p.rec, full.rec[:, 10:22, 6:26], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p.psf, full.psf, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_other_pad_modes(mode):
    net, x = _net(), _frames(10, 10)
    with pytest.warns(SmallInputWarning):
        p = predict_sim_sync(net, x, context=24, pad_mode=mode)
    pad = (7, 7, 7, 7)
    xt = torch.from_numpy(x)[None]
    ref_in = (
        F.pad(xt, pad)
        if mode == "zero"
        else torch.from_numpy(np.pad(x, ((0, 0), (7, 7), (7, 7)), mode="reflect"))[None]
    )
    full = predict_sim_sync(net, ref_in[0].numpy())
    np.testing.assert_allclose(p.emitter, full.emitter[14:34, 14:34], rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="pad_mode"):
        predict_sim_sync(net, x, context=24, pad_mode="wrap")


def test_small_tiles_without_exact_overlap_warn():
    net, x = _net(), _frames(40, 40)
    with pytest.warns(SmallInputWarning, match="tile 16 is smaller than the 32 x 32"):
        p = predict_sim_sync(net, x, context=32, tile=16, overlap=2)
    assert p.meta["n_tiles"] > 1 and not p.meta["tiling_exact"]
    assert "tile_message" in p.meta["context"] and not p.meta["context"]["limited"]
    with warnings.catch_warnings():  # exact tiling (default overlap): nothing to warn about
        warnings.simplefilter("error", SmallInputWarning)
        exact = predict_sim_sync(net, _frames(100, 100), context=96, tile=90)
    assert exact.meta["tiling_exact"] and exact.meta["n_tiles"] > 1
    assert "tile_message" not in exact.meta["context"]


def test_large_enough_fields_are_untouched():
    net, x = _net(), _frames(16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallInputWarning)
        a = predict_sim_sync(net, x, context=16)
        b = predict_sim_sync(net, x)
    assert a.meta["context"]["limited"] is False and b.meta["context"]["limited"] is False
    np.testing.assert_allclose(a.emitter, b.emitter, rtol=1e-5, atol=1e-6)


def test_model_context_comes_from_the_training_fields():
    model, ck = load_sim_model(MODEL)
    assert ck.config["data"]["input_size"] == [48, 48]  # the demo trains on 48 x 48 stacks
    assert model_context(ck, model) == 48
    # a checkpoint without the record: the receptive-field diameter
    del ck.config["data"]["input_size"]
    assert model_context(ck, model) == 2 * model.receptive_radius + 1


def test_small_crop_of_the_sample_through_the_job():
    raw = read_image(EXAMPLES / "sim_stack.tif").data
    crop = raw[:, 32:64, 32:64]
    with pytest.warns(SmallInputWarning, match="32 x 32 raw pixels.*48 x 48"):
        rec = run(reconstruct_sim_job(crop, MODEL, device="cpu"))
    assert rec.arrays["emitter"].shape == (64, 64)
    ctx = rec.metadata["context"]
    assert ctx["limited"] and ctx["needed"] == 48 and ctx["pad_mode"] == "replicate"
    # the crop's result is close to the same region of the whole-field result (measured
    # with bench/small_input.py: 18 % with the crop's own normalisation)
    whole = run(reconstruct_sim_job(raw, MODEL, device="cpu")).arrays["emitter"][64:128, 64:128]
    diff = np.abs(rec.arrays["emitter"] - whole).sum() / whole.sum()
    assert diff < 0.35, diff
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallInputWarning)
        quiet = run(reconstruct_sim_job(crop, MODEL, device="cpu", warn_small_input=False))
    assert quiet.metadata["context"]["limited"]


def test_cli_refuses_a_tiny_stack_and_writes_nothing(tmp_path, capsys):
    raw = read_image(EXAMPLES / "sim_stack.tif").data
    src = write_image(tmp_path / "tiny.tif", raw[:, :6, :6])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    rc = main(
        ["reconstruct", "--checkpoint", str(MODEL), "--input", str(src), "--out-dir", str(out)]
    )
    assert rc != 0
    err = capsys.readouterr().err
    assert "6 x 6 raw pixels" in err and "minimum of 8 x 8" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert load_checkpoint(MODEL).config["data"]["input_size"] == [48, 48]  # model untouched


@pytest.mark.gui
def test_widget_warns_and_flags_the_layers(make_napari_viewer, monkeypatch):
    import napari_sim_uq._napari._reconstruct_widget as mod

    shown: dict[str, list[str]] = {"warning": [], "error": []}
    monkeypatch.setattr(mod, "show_warning", shown["warning"].append)
    monkeypatch.setattr(mod, "show_error", shown["error"].append)
    monkeypatch.setenv("NAPARI_SIM_UQ_NOTHREADS", "1")
    viewer = make_napari_viewer()
    raw = read_image(EXAMPLES / "sim_stack.tif").data
    viewer.add_image(raw[:, :24, :24], name="crop")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-sim-uq", "Reconstruct SIM")
    widget.layer_combo.setCurrentText("crop")
    widget.device_combo.setCurrentText("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallInputWarning)  # shown once, as a notification
        widget.run()
    from qtpy.QtWidgets import QApplication

    for _ in range(200):  # layers are added one per event-loop turn
        QApplication.processEvents()
        if not widget.busy:
            break
    assert shown["error"] == []
    assert len(shown["warning"]) == 1 and "24 x 24 raw pixels" in shown["warning"][0]
    assert "warning" in widget.status.text()
    emitter = viewer.layers["crop emitter"]
    assert emitter.data.shape == (48, 48)
    assert emitter.metadata["sim_uq"]["reconstruction"]["context"]["limited"] is True
