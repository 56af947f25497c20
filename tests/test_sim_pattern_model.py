"""Light patterns from the instrument (``patterns="estimated"``, issue 16): the known-wave-
vector phase fit against the generator's truth, patterns on crops and tiles against the
whole field, the training data, and a trained model's predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.tasks.sim.classical.estimate import (
    PatternEstimate,
    estimate_phases,
    pattern_errors,
)
from napari_sim_uq.tasks.sim.classical.patterns import parametric_patterns
from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_sample

F = 2
# an instrument the dataset-level estimate finds on 48 x 48 fields (test_sim_classical)
FIXED = dict(lr_size=(48, 48), hr_factor=F, period_lr=(3.0, 3.0), angle_offset=(0.4, 0.4))


def test_estimate_phases_with_known_wave_vectors_matches_the_truth():
    cfg = SynthConfig(lr_size=(96, 96), hr_factor=F, fixed_instrument=True)
    phase, mod = [], []
    for index in range(6):
        s = generate_sample(cfg, seed=11, index=index)
        p = s.params
        k_raw = np.asarray(p["wave_vectors"]) * F
        est = estimate_phases(s.raw, k_raw, p["psf_sigma_lr"], binning=F)
        assert est.ok.sum() >= 2, est.messages
        err = pattern_errors(est, p["wave_vectors"], p["phases"], p["modulation"], F)
        assert np.all(err["k_rel"] < 1e-12)  # given, not refined
        phase += list(err["phase_max"][est.ok])
        mod += list(err["modulation"][est.ok])
    # worst frame of each angle: typically 0.1 rad on 96-pixel fields (known crosstalk of
    # the band separation, docs/classical-sim.md), never a wrong fringe
    assert np.median(phase) < 0.12 and max(phase) < 0.35, phase
    assert np.median(mod) < 0.05 and max(mod) < 0.15, mod


def test_estimate_phases_bad_input():
    raw = np.random.default_rng(0).normal(size=(9, 32, 32))
    with pytest.raises(InputError, match="wave_vectors"):
        estimate_phases(raw, np.zeros((2, 2)), 1.0)
    with pytest.raises(InputError, match="psf_sigma"):
        estimate_phases(raw, np.full((3, 2), 0.2), None)


def test_patterns_of_a_crop_are_the_crop_of_the_whole_field_patterns():
    k_hr = np.array([[0.15, 0.02], [-0.06, 0.14], [-0.09, -0.12]])
    phases = np.arange(9.0).reshape(3, 3)
    est = PatternEstimate.from_truth(k_hr, phases, 0.7, 1.0, (40, 30), F)
    est.phase_std = np.full((3, 3), 0.05)
    est.modulation_std = np.full((3, 3), 0.02)
    est.k_std = np.full(3, 1e-4)
    mean, std = parametric_patterns(est, F)
    assert mean.shape == (9, 80, 60)
    # the cosine model itself: frame (a, p) at HR pixel [0, 0] has phase phases[a, p]
    u = np.arange(60)
    np.testing.assert_allclose(
        mean[4, 0], 1 + 0.7 * np.cos(2 * np.pi * k_hr[1, 0] * u + phases[1, 1]), atol=1e-5
    )
    y0, x0, h, w = 7, 3, 16, 20
    m2, s2 = parametric_patterns(est, F, (h, w), (y0, x0))
    hr = (slice(None), slice(F * y0, F * (y0 + h)), slice(F * x0, F * (x0 + w)))
    np.testing.assert_allclose(m2, mean[hr], atol=1e-5)
    np.testing.assert_allclose(s2, std[hr], atol=1e-6)
    # a crop reaching beyond the field continues the cosines (tiles with padding)
    m3, _ = parametric_patterns(est, F, (10, 10), (-4, -4))
    np.testing.assert_allclose(m3[:, 8:, 8:], mean[:, :12, :12], atol=1e-5)


@pytest.fixture(scope="module")
def fixed_dataset(tmp_path_factory):
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.sim.synth import generate_splits

    d = tmp_path_factory.mktemp("fixed")
    run(generate_splits(d, {"train": 12, "val": 2}, SynthConfig(**FIXED), seed=21, workers=1))
    return d


def test_fit_instrument_and_dataset_items_carry_the_patterns(fixed_dataset):
    from napari_sim_uq.tasks.sim.dataset import SimStackDataset
    from napari_sim_uq.tasks.sim.pattern_model import Instrument, fit_instrument

    ds = SimStackDataset(str(fixed_dataset / "train" / "*.tif"), supervised=True, crop=(24, 24))
    inst, ests = fit_instrument(ds, 3, 3, F)
    assert len(ests) == len(ds) and inst.n_stacks == len(ds)
    meta = ds.sample_meta(0)
    k_true = np.asarray(meta["wave_vectors"]) * F
    # wave vectors up to sign, within 1 % (48-pixel fields)
    for a in range(3):
        d = min(np.linalg.norm(inst.wave_vectors[a] - s * k_true[a]) for s in (1, -1))
        assert d < 0.01 * np.linalg.norm(k_true[a])
    assert Instrument.from_dict(inst.to_dict()).to_dict() == inst.to_dict()
    ds.set_pattern_estimates(ests, F)
    ds.set_epoch(3)
    item = ds[1]
    y0, x0, h, w = ds.crop_window(1)
    full, _ = parametric_patterns(ests[1], F)
    hr = (slice(None), slice(F * y0, F * (y0 + h)), slice(F * x0, F * (x0 + w)))
    np.testing.assert_allclose(item["lp_est"].numpy(), full[hr], atol=1e-5)
    assert item["lp_est_var"].shape == item["lp_gt"].shape
    # the estimated patterns are close to the generator's (relative to the fringes)
    err = float(((item["lp_est"] - item["lp_gt"]) ** 2).mean())
    assert err < 0.1 * float(((item["lp_gt"] - 1) ** 2).mean())


def test_fit_instrument_refuses_stacks_of_different_instruments(tmp_path):
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.sim.dataset import SimStackDataset
    from napari_sim_uq.tasks.sim.pattern_model import fit_instrument
    from napari_sim_uq.tasks.sim.synth import generate_splits

    # the default generator draws a new period and orientation for every stack
    cfg = SynthConfig(lr_size=(48, 48), hr_factor=F)
    run(generate_splits(tmp_path, {"train": 6}, cfg, seed=3, workers=1))
    ds = SimStackDataset(str(tmp_path / "train" / "*.tif"))
    with pytest.raises(InputError, match="one instrument"):
        fit_instrument(ds, 3, 3, F)


@pytest.fixture(scope="module")
def trained(fixed_dataset, tmp_path_factory):
    from napari_sim_uq.core.events import run
    from napari_sim_uq.tasks.sim.train import TrainConfig, train_sim_job

    ck = tmp_path_factory.mktemp("ck")
    cfg = TrainConfig(
        train_glob=str(fixed_dataset / "train" / "*.tif"),
        val_glob=str(fixed_dataset / "val" / "*.tif"),
        ckpt_dir=str(ck),
        epochs=2,
        batch_size=4,
        crop=32,
        lr=3e-3,
        device="cpu",
        model={
            "hr_factor": F,
            "base_channels": 8,
            "depth": 2,
            "psf_size": 9,
            "patterns": "estimated",
        },
    )
    events = []
    run(train_sim_job(cfg), events.append)
    return ck / "best.pt", events


def test_training_reports_the_instrument_estimate_before_the_first_epoch(trained):
    _, events = trained
    stages = [e.stage for e in events]
    assert stages[:2] == ["prepare", "prepare"] and "train" in stages
    assert "periods" in events[1].message and "PSF sigma" in events[1].message


def test_trained_model_carries_its_instrument_and_predicts_with_it(trained, fixed_dataset):
    from napari_sim_uq.core.io.tiff_io import read_image
    from napari_sim_uq.tasks.sim.dataset import SimStackDataset
    from napari_sim_uq.tasks.sim.pattern_model import stack_patterns
    from napari_sim_uq.tasks.sim.physics import gaussian_psf, sim_forward
    from napari_sim_uq.tasks.sim.predict import predict_sim_sync
    from napari_sim_uq.tasks.sim.reconstruct import load_sim_model

    model, ck = load_sim_model(trained[0])
    inst = model.instrument
    assert ck.config["instrument"]["n_stacks"] == 12
    assert model.cfg.patterns == "estimated"
    ds = SimStackDataset(str(fixed_dataset / "val" / "*.tif"), supervised=True)
    item = ds[0]
    x = item["x"].numpy()
    pred = predict_sim_sync(model, x)
    assert pred.meta["patterns_source"] == "estimated"
    # the patterns are the instrument's cosines for this stack, close to the generator's
    est = stack_patterns(inst, x)
    np.testing.assert_allclose(pred.lp, parametric_patterns(est, F)[0], atol=1e-5)
    lp_gt = item["lp_gt"].numpy()
    assert np.mean((pred.lp - lp_gt) ** 2) < 0.1 * np.mean((lp_gt - 1) ** 2)
    # the PSF is the instrument's Gaussian; the raw prediction is the forward model of the
    # outputs with the least-squares background
    psf = gaussian_psf(inst.psf_sigma * F, 9).numpy()
    np.testing.assert_allclose(pred.psf, psf, atol=1e-6)
    y0 = sim_forward(
        torch.from_numpy(pred.emitter)[None, None],
        torch.from_numpy(pred.lp)[None],
        torch.from_numpy(pred.psf)[None],
        F,
        0.0,
    )[0].numpy()
    assert pred.background == pytest.approx(float(np.mean(x - y0)), abs=1e-4)
    np.testing.assert_allclose(pred.rec, y0 + pred.background, atol=1e-4)
    # tiles see the same cosines (the patterns continue across tile borders)
    tiled = predict_sim_sync(model, x, tile=24, overlap=4)
    np.testing.assert_allclose(tiled.lp, pred.lp, atol=1e-5)
    # MC dropout: the patterns are the instrument's in every sample (no epistemic part)
    mc = predict_sim_sync(model, x, mc_samples=3, mc_batch=2)
    np.testing.assert_allclose(mc.lp, pred.lp, atol=1e-5)
    assert mc.lp_epistemic_std is not None and float(mc.lp_epistemic_std.max()) < 1e-5
    # the widget/console path loads it the same way
    assert read_image(ds.item_source(0)[0]).data.shape[0] == 9


def test_model_with_estimated_patterns_needs_its_instrument():
    from napari_sim_uq.tasks.sim.net import SimNetConfig, SimUQNet
    from napari_sim_uq.tasks.sim.predict import predict_sim_sync

    model = SimUQNet(SimNetConfig(hr_factor=F, base_channels=8, depth=2, patterns="estimated"))
    with pytest.raises(InputError, match="instrument"):
        predict_sim_sync(model, np.random.default_rng(0).random((9, 32, 32)))


def test_frames_without_a_fitted_phase_get_an_unknown_fringe_not_nan():
    from napari_sim_uq.tasks.sim.pattern_model import _fill_unfitted

    k_hr = np.array([[0.15, 0.02], [-0.06, 0.14], [-0.09, -0.12]])
    est = PatternEstimate.from_truth(k_hr, np.zeros((3, 3)), 0.8, 1.0, (16, 16), F)
    est.phase_std = np.full((3, 3), 0.05)
    est.modulation_std = np.full((3, 3), 0.02)
    est.phases[1] = np.nan  # as _phases returns for an angle without signal
    est.frame_modulation[1] = np.nan
    est.modulation[1] = np.nan
    est = _fill_unfitted(est)
    assert list(est.ok) == [True, False, True] and "angle 1" in est.messages[0]
    mean, std = parametric_patterns(est, F)
    assert np.isfinite(mean).all() and np.isfinite(std).all()
    np.testing.assert_allclose(mean[3:6], 1.0)  # uniform illumination
    # std: a fringe of the stack's typical depth (0.8) at a uniformly unknown phase,
    # sqrt(E[(0.8 cos(theta + U))^2]) = 0.8 / sqrt(2) everywhere (Monte Carlo check)
    u = np.random.default_rng(0).uniform(0, 2 * np.pi, 200_000)
    mc = float(np.sqrt(np.mean((0.8 * np.cos(1.3 + u)) ** 2)))
    np.testing.assert_allclose(std[3:6], mc, rtol=0.01)
    # and the mark survives the JSON round trip
    again = PatternEstimate.from_dict(est.to_dict())
    np.testing.assert_array_equal(again.unfitted, est.unfitted)


def test_model_with_estimated_patterns_starts_with_a_dim_emitter():
    import torch

    from napari_sim_uq.tasks.sim.net import SimNetConfig, SimUQNet

    x = torch.rand(1, 9, 32, 32)
    torch.manual_seed(0)
    own = SimUQNet(SimNetConfig(hr_factor=F, base_channels=8, depth=2))
    torch.manual_seed(0)
    est = SimUQNet(SimNetConfig(hr_factor=F, base_channels=8, depth=2, patterns="estimated"))
    with torch.no_grad():
        e_own, e_est = own(x).emitter, est(x).emitter
    # softplus(bias) with the head's small random weights: about 0.69 against 0.05
    assert float(e_own.mean()) > 0.4
    assert float(e_est.mean()) < 0.15


def test_ensemble_of_instrument_models_shares_the_instrument(trained, fixed_dataset, tmp_path):
    from napari_sim_uq.core.io.checkpoint import load_checkpoint
    from napari_sim_uq.tasks.sim.dataset import SimStackDataset
    from napari_sim_uq.tasks.sim.ensemble import combine_sim_checkpoints
    from napari_sim_uq.tasks.sim.predict import predict_sim_sync
    from napari_sim_uq.tasks.sim.reconstruct import load_sim_model

    ck = load_checkpoint(trained[0])
    state = {k: v.clone() for k, v in ck.model_state.items()}
    state["emitter_head.bias"] += 0.3  # a second member that differs
    ck.model_state = state
    ck.save(tmp_path / "other.pt")
    ens, _ = load_sim_model(
        combine_sim_checkpoints([trained[0], tmp_path / "other.pt"], tmp_path / "e.pt")
    )
    assert ens.instrument is not None and ens.n_members == 2
    x = SimStackDataset(str(fixed_dataset / "val" / "*.tif"))[0]["x"].numpy()
    pred = predict_sim_sync(ens, x)
    singles = [
        predict_sim_sync(load_sim_model(p)[0], x) for p in (trained[0], tmp_path / "other.pt")
    ]
    # every member sees the instrument's patterns and profiles its own background
    np.testing.assert_allclose(pred.lp, singles[0].lp, atol=1e-5)
    np.testing.assert_allclose(
        pred.emitter, (singles[0].emitter + singles[1].emitter) / 2, atol=1e-5
    )
    assert pred.background == pytest.approx(
        (singles[0].background + singles[1].background) / 2, abs=1e-4
    )
    assert float(pred.emitter_epistemic_std.max()) > 1e-3
