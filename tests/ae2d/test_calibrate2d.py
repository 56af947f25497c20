"""calibrate_2d_job: the fitted scale / map, what is stored, and that nothing else in the
checkpoint changes."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from ae2d_helpers import SIM_CHECKPOINT, train_tiny

from napari_sim_uq.core.data.images2d import read_image_2d
from napari_sim_uq.core.data.normalization import Normalization
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import run
from napari_sim_uq.core.io.checkpoint import load_checkpoint
from napari_sim_uq.core.uq.calibrate import ClassSigmaMap, SigmaMap, sigma_map_from_dict
from napari_sim_uq.tasks.ae2d.calibrate import calibrate_2d_job, image_seed
from napari_sim_uq.tasks.ae2d.predict import load_ae2d_model, predict_2d
from napari_sim_uq.tasks.ae2d.synth2d import generate_dataset_2d

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("cal2d")
    files = generate_dataset_2d(root / "data", 6, 3, 0, size=32, seed=0)
    train_tiny(root)
    return root / "ck" / "latest.pt", root / "data" / "val", files["val"]


@pytest.fixture
def ckpt(trained, tmp_path):
    path = tmp_path / "model.pt"
    shutil.copy(trained[0], path)
    return path


def _std(ckpt_path, files, mc=4):
    """The total std (normalised units) of predict_2d on each calibration image, with the
    seeds calibrate_2d_job uses."""
    model, ck = load_ae2d_model(ckpt_path)
    out = []
    for i, f in enumerate(files):
        s = image_seed(0, i)
        pred = run(
            predict_2d(
                model,
                ck,
                read_image_2d(f),
                mc_samples=mc,
                seed=s,
                degrade_seed=s,
                degrade="noise:0.1",
            )
        )
        out.append(pred)
    return out


def test_scale_is_fitted_in_sample_and_applied_by_predict(trained, ckpt):
    _, val_dir, val_files = trained
    before = _std(ckpt, val_files)
    res = run(calibrate_2d_job(ckpt, val_dir, mc_samples=4))
    s = res["sigma_scale"]["mean"]
    assert res["method"] == "scale" and res["sigma_map"] is None
    assert res["n_images"] == 3 and res["n_pixels"] == 3 * 32 * 32
    # ZMS(s sigma) = ZMS(sigma) / s^2 = 1 on the data it was fitted on (closed form)
    assert res["before"]["pooled"]["zms"] == pytest.approx(s**2, rel=1e-9)
    assert res["after"]["pooled"]["zms"] == pytest.approx(1.0, rel=1e-9)
    assert load_checkpoint(ckpt).sigma_scale["mean"] == pytest.approx(s)
    after = _std(ckpt, val_files)
    for b, a in zip(before, after, strict=True):
        np.testing.assert_allclose(a.arrays["std"], s * b.arrays["std"], rtol=1e-5)
        np.testing.assert_allclose(a.arrays["mean"], b.arrays["mean"], rtol=1e-6)
        assert a.meta["sigma_scale"] == pytest.approx(s)
    # the model's own std is used: calibrating again gives the same scale
    again = run(calibrate_2d_job(ckpt, val_dir, mc_samples=4))
    assert again["sigma_scale"]["mean"] == pytest.approx(s, rel=1e-6)
    assert again["previous_sigma_scale"]["mean"] == pytest.approx(s)


def test_map_is_stored_and_applied_after_the_scale(trained, ckpt):
    _, val_dir, val_files = trained
    before = _std(ckpt, val_files)
    res = run(calibrate_2d_job(ckpt, val_dir, mc_samples=4, method="map", n_bins=5))
    s = res["sigma_scale"]["mean"]
    ck = load_checkpoint(ckpt)
    smap = SigmaMap.from_dict(ck.extra["sigma_map"]["mean"])
    assert smap == SigmaMap.from_dict(res["sigma_map"])
    assert res["after_scale_only"]["pooled"]["zms"] == pytest.approx(1.0, rel=1e-9)
    after = _std(ckpt, val_files)
    for b, a in zip(before, after, strict=True):
        # the map acts in normalised units (where it was fitted)
        norm = Normalization.from_dict(a.meta["normalization"])
        want = norm.invert_std(smap(s * norm.apply_std(b.arrays["std"].astype(np.float64))))
        np.testing.assert_allclose(a.arrays["std"], want, rtol=1e-4)
        # every part gets the same factor: total^2 = epistemic^2 + aleatoric^2
        tot2 = a.arrays["epistemic_std"] ** 2 + a.arrays["aleatoric_std"] ** 2
        np.testing.assert_allclose(a.arrays["std"] ** 2, tot2, rtol=1e-4)
        assert a.meta["sigma_map"] is True
    # per-bin fit: in-sample ZMS per decile of sigma is close to 1 (5 bins, 3k pixels)
    assert 0.8 < res["after"]["pooled"]["zms"] < 1.25
    # method "scale" removes the map again
    run(calibrate_2d_job(ckpt, val_dir, mc_samples=4, method="scale"))
    assert "sigma_map" not in load_checkpoint(ckpt).extra


def test_intensity_map_uses_the_predicted_intensity(trained, ckpt):
    _, val_dir, val_files = trained
    before = _std(ckpt, val_files)
    res = run(calibrate_2d_job(ckpt, val_dir, mc_samples=4, method="map-intensity", n_bins=4))
    s = res["sigma_scale"]["mean"]
    cmap = sigma_map_from_dict(load_checkpoint(ckpt).extra["sigma_map"]["mean"])
    assert isinstance(cmap, ClassSigmaMap) and len(cmap.maps) == 5  # n_classes default
    after = _std(ckpt, val_files)
    for b, a in zip(before, after, strict=True):
        norm = Normalization.from_dict(a.meta["normalization"])
        mu = norm.apply(b.arrays["mean"].astype(np.float64))
        sd = norm.apply_std(b.arrays["std"].astype(np.float64))
        np.testing.assert_allclose(a.arrays["std"], norm.invert_std(cmap(s * sd, mu)), rtol=1e-4)
    # in-sample, every class of the predicted intensity is calibrated by its own map
    assert res["after"]["pooled"]["zms"] == pytest.approx(1.0, abs=0.2)


def test_nothing_else_in_the_checkpoint_changes(trained, ckpt):
    old = load_checkpoint(ckpt)
    run(calibrate_2d_job(ckpt, trained[1], mc_samples=2, method="map", n_bins=4))
    new = load_checkpoint(ckpt)
    assert new.config == old.config and new.config_hash == old.config_hash
    assert new.train_state == old.train_state and new.normalization == old.normalization
    assert new.package_version == old.package_version
    for k, v in old.model_state.items():
        assert torch.equal(new.model_state[k], v)
    assert new.optimizer_state is not None
    stale = {k for k in old.extra if k != "sigma_map"}
    assert stale <= set(new.extra)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["model.pt"]  # no temp files


def test_degrade_none_calibrates_the_reconstruction_of_the_input(trained, ckpt):
    res = run(calibrate_2d_job(ckpt, trained[1], mc_samples=2, degrade="none"))
    assert res["degrade"] == "none"
    assert res["after"]["pooled"]["zms"] == pytest.approx(1.0, rel=1e-9)


def test_bad_calls_are_clear_errors_and_leave_the_file(trained, ckpt, tmp_path):
    data = ckpt.read_bytes()
    with pytest.raises(InputError, match="method"):
        run(calibrate_2d_job(ckpt, trained[1], method="isotonic"))
    with pytest.raises(InputError, match="mc_samples"):
        run(calibrate_2d_job(ckpt, trained[1], mc_samples=0))
    with pytest.raises(InputError, match="no image files"):
        (tmp_path / "empty").mkdir()
        run(calibrate_2d_job(ckpt, tmp_path / "empty"))
    assert ckpt.read_bytes() == data
    sim = tmp_path / "sim.pt"
    shutil.copy(SIM_CHECKPOINT, sim)
    sim_bytes = sim.read_bytes()
    with pytest.raises(InputError, match="SIM"):
        run(calibrate_2d_job(sim, trained[1]))
    assert sim.read_bytes() == sim_bytes


def test_a_model_without_std_is_refused(trained, tmp_path):
    ck = load_checkpoint(trained[0])
    cfg = dict(ck.config)
    cfg["model"] = {**cfg["model"], "aleatoric": False}
    state = {k: v for k, v in ck.model_state.items() if "logvar" not in k}
    path = tmp_path / "noalea.pt"
    dataclasses.replace(ck, config=cfg, model_state=state, config_hash="").save(path)
    with pytest.raises(InputError, match="no std"):
        run(calibrate_2d_job(path, trained[1], mc_samples=1))
