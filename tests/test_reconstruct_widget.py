"""The "Reconstruct SIM" dock widget, opened through the plugin manifest in a real viewer."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_thread")]

PLUGIN = "napari-sim-uq"
SUFFIXES = [
    "emitter",
    "emitter std",
    "light pattern",
    "light pattern std",
    "PSF",
    "PSF std",
    "reconstruction std",
]


def _assert_same_float32(got, want):
    """Two separate float32 reconstructions of the same input: equal up to rounding; another
    input, model, normalisation or MC setting is far outside this."""
    want = np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def _dock(viewer):
    _dock_widget, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Reconstruct SIM")
    return widget


def _run_threaded(qtbot, widget):
    widget.run()
    worker = widget.worker
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: not widget.busy, timeout=10_000)  # layers are added one by one


@pytest.fixture
def errors(monkeypatch):
    import napari_sim_uq._napari._reconstruct_widget as mod

    shown: list[str] = []
    monkeypatch.setattr(mod, "show_error", shown.append)
    return shown


def test_reconstruct_through_the_manifest(make_napari_viewer, qtbot, monkeypatch, errors):
    from napari_sim_uq import reconstruct_sim

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "sim_stack")
    widget = _dock(viewer)
    assert widget.layer_combo.currentText() == "SIM sample"
    assert widget.checkpoint_edit.text() == ""  # bundled example model
    widget.device_combo.setCurrentText("cpu")

    # in a thread worker, as a user runs it
    _run_threaded(qtbot, widget)
    assert errors == []
    names = [f"SIM sample {s}" for s in SUFFIXES]
    assert [lay.name for lay in viewer.layers] == ["SIM sample", "SIM sample GT emitter", *names]
    emitter = viewer.layers["SIM sample emitter"]
    assert emitter.data.shape == (192, 192)
    np.testing.assert_allclose(emitter.scale, (0.5, 0.5))
    np.testing.assert_allclose(emitter.translate, (-0.25, -0.25))
    assert emitter.metadata["sim_uq"]["reconstruction"]["model_type"] == "sim_uq_net"
    first = emitter.data.copy()

    # the console API on the same layer gives the same emitter: it runs on this thread, the
    # widget ran in a worker with its own torch thread count, so up to float32 rounding (not
    # bit for bit, issue 11)
    console = reconstruct_sim(viewer.layers["SIM sample"], device="cpu")
    _assert_same_float32(console[0][0], first)

    # a second run (synchronous, MC dropout on) replaces the layers instead of adding copies
    monkeypatch.setenv("NAPARI_SIM_UQ_NOTHREADS", "1")
    assert widget.layer_combo.currentText() == "SIM sample"  # choice kept
    widget.mc_spin.setValue(2)
    widget.run()
    assert errors == []
    parts = ["SIM sample emitter aleatoric std", "SIM sample emitter epistemic std"]
    assert [lay.name for lay in viewer.layers] == [
        "SIM sample",
        "SIM sample GT emitter",
        *names,
        *parts,
    ]
    again = viewer.layers["SIM sample emitter"]
    assert again.metadata["sim_uq"]["reconstruction"]["mc_samples"] == 2
    # the raw-domain self-check: in the metadata and the status line
    check = again.metadata["sim_uq"]["reconstruction"]["self_check"]
    assert check["ok"] and 0.5 < check["raw_zms"] < 2.0
    assert "self-check: raw ZMS" in widget.status.text()
    # a run without MC samples removes the std parts of the MC run (they would look current)
    widget.mc_spin.setValue(0)
    widget.run()
    assert [lay.name for lay in viewer.layers] == ["SIM sample", "SIM sample GT emitter", *names]
    widget.mc_spin.setValue(2)
    widget.run()
    assert not np.array_equal(again.data, first)  # MC averaging changes the mean
    assert widget.worker is None and widget.run_btn.isEnabled()

    # the console API with the viewer goes through the same path: still no duplicates
    layers = reconstruct_sim(viewer.layers["SIM sample"], viewer=viewer, device="cpu")
    assert [lay.name for lay in layers] == names
    assert len(viewer.layers) == 2 + len(names)
    _assert_same_float32(viewer.layers["SIM sample emitter"].data, first)


def test_2d_layer_gives_a_notification(make_napari_viewer, qtbot, errors):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cells_2d")
    widget = _dock(viewer)
    widget.layer_combo.setCurrentText("cells 2D")
    widget.device_combo.setCurrentText("cpu")
    _run_threaded(qtbot, widget)
    assert len(errors) == 1 and "2D image" in errors[0]
    assert "2D image" in widget.status.text()
    assert [lay.name for lay in viewer.layers] == ["cells 2D"]
    assert widget.run_btn.isEnabled() and not widget.stop_btn.isEnabled()


def test_missing_checkpoint_and_no_layer(make_napari_viewer, tmp_path, errors):
    viewer = make_napari_viewer()
    widget = _dock(viewer)
    widget.run()  # nothing to reconstruct
    assert errors and "choose a raw SIM" in errors[-1]
    viewer.add_image(np.ones((9, 16, 16), np.float32), name="stack")
    assert widget.layer_combo.currentText() == "stack"
    widget.checkpoint_edit.setText(str(tmp_path / "missing.pt"))
    widget.run()
    assert "does not exist" in errors[-1]
    assert widget.worker is None and widget.run_btn.isEnabled()


def test_wiener_baseline_and_pattern_check(make_napari_viewer, monkeypatch, errors):
    """The Wiener option adds a classical reconstruction on the emitter's grid and the
    spectrum/carrier layers whose carriers are the estimate of the console function."""
    from napari_sim_uq import estimate_sim_patterns

    monkeypatch.setenv("NAPARI_SIM_UQ_NOTHREADS", "1")
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "sim_stack")
    widget = _dock(viewer)
    widget.device_combo.setCurrentText("cpu")
    widget.wiener_check.setChecked(True)
    widget.run()
    assert errors == []
    wiener = viewer.layers["SIM sample Wiener SIM"]
    emitter = viewer.layers["SIM sample emitter"]
    assert wiener.data.shape == emitter.data.shape
    np.testing.assert_allclose(wiener.scale, emitter.scale)
    np.testing.assert_allclose(wiener.translate, emitter.translate)
    est = estimate_sim_patterns(viewer.layers["SIM sample"])
    carriers = viewer.layers["SIM sample carriers"]
    assert carriers.data.shape == (6, 2) and not carriers.visible
    # +k and -k of each angle sit symmetrically about the spectrum's centre bin
    np.testing.assert_allclose(carriers.data[0::2] + carriers.data[1::2], np.full((3, 2), 96.0))
    np.testing.assert_allclose(carriers.data[0::2, 1] - 48, est.wave_vectors[:, 0] * 96)
    assert viewer.layers["SIM sample power spectrum"].data.shape == (96, 96)
    meta = wiener.metadata["sim_uq"]["patterns"]
    np.testing.assert_allclose(meta["periods_raw_px"], est.periods)
    # the estimated light patterns, their std calibrated by the bundled model's stored scale
    from napari_sim_uq import example_model_path
    from napari_sim_uq.core.io.checkpoint import load_checkpoint
    from napari_sim_uq.tasks.sim.calibration import stored_pattern_estimate_scale
    from napari_sim_uq.tasks.sim.classical.patterns import parametric_patterns

    scale = stored_pattern_estimate_scale(load_checkpoint(example_model_path()))
    assert scale is not None
    lp = viewer.layers["SIM sample light pattern (estimated)"]
    lp_std = viewer.layers["SIM sample light pattern (estimated) std"]
    mean, std = parametric_patterns(est, 2)
    np.testing.assert_allclose(lp.data, mean, atol=1e-5)
    np.testing.assert_allclose(lp_std.data, std * scale, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(lp.scale[1:], emitter.scale)
    assert lp_std.metadata["sim_uq"]["std_sigma_scale"] == pytest.approx(scale)


def test_ensemble_checkpoint_gives_the_epistemic_layer(
    make_napari_viewer, tmp_path, monkeypatch, errors
):
    import torch

    from napari_sim_uq import ensemble_sim, example_model_path
    from napari_sim_uq.core.io.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(example_model_path())
    members = []
    for i in range(2):  # two members: the bundled model with slightly different heads
        g = torch.Generator().manual_seed(i)
        state = {k: v.clone() for k, v in ck.model_state.items()}
        w = state["emitter_head.weight"]
        state["emitter_head.weight"] = w + 0.05 * w.abs().mean() * torch.randn(w.shape, generator=g)
        members.append(tmp_path / f"m{i}.pt")
        save_checkpoint(
            members[-1],
            model_state=state,
            config=ck.config,
            normalization=ck.normalization,
            extra={"loss_state": ck.extra["loss_state"]},
        )
    ens = ensemble_sim(members, tmp_path / "ens.pt")

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "sim_stack")
    widget = _dock(viewer)
    widget.device_combo.setCurrentText("cpu")
    widget.checkpoint_edit.setText(str(ens))
    monkeypatch.setenv("NAPARI_SIM_UQ_NOTHREADS", "1")
    widget.run()
    assert errors == []
    epi = viewer.layers["SIM sample emitter epistemic std"]
    assert "SIM sample emitter aleatoric std" in viewer.layers
    assert (epi.data > 0).mean() > 0.5  # the members disagree (without MC dropout)
    meta = viewer.layers["SIM sample emitter"].metadata["sim_uq"]["reconstruction"]
    assert meta["mc_samples"] == 0 and meta["ensemble_members"] == 2
