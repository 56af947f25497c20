"""2D training on the core loop and 2D prediction (tiny models, small images)."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
import torch

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import run
from napari_sim_uq.core.io.checkpoint import load_checkpoint
from napari_sim_uq.tasks.ae2d.predict import load_ae2d_model, predict_2d
from napari_sim_uq.tasks.ae2d.synth2d import generate_dataset_2d
from napari_sim_uq.tasks.ae2d.train import Train2DConfig, train_2d_job

TINY = {"base_channels": 8, "depth": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("d2")
    files = generate_dataset_2d(root / "data", 4, 2, 2, size=48, seed=0)
    return root, files


def _cfg(root, name, **kw):
    base = dict(
        data_dir=str(root / "data" / "train"),
        val_dir=str(root / "data" / "val"),
        ckpt_dir=str(root / name),
        epochs=2,
        batch_size=4,
        patch=32,
        patches_per_image=2,
        model=TINY,
        device="cpu",
    )
    return Train2DConfig(**{**base, **kw})


def test_training_writes_checkpoints_and_metrics(data):
    root, _ = data
    res = run(train_2d_job(_cfg(root, "ck")))
    assert res["epochs_done"] == 2 and res["steps"] == 4
    ck = load_checkpoint(res["latest"])
    assert ck.model_type == "ae2d" and ck.config["model"]["base_channels"] == 8
    assert ck.normalization["mode"] == "percentile" and ck.sigma_scale == {"mean": 1.0}
    with open(root / "ck" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "val_loss", "val_mse", "val_zms"} <= set(rows[0])
    with pytest.raises(FileExistsError, match="resume"):
        run(train_2d_job(_cfg(root, "ck")))


def test_a_stopped_run_resumes_to_the_uninterrupted_result(data):
    root, _ = data
    full = run(train_2d_job(_cfg(root, "full", epochs=3)))
    job = train_2d_job(_cfg(root, "stopped", epochs=3))
    for ev in job:
        if ev.stage == "train" and ev.step == 3:  # mid-epoch 2
            job.close()  # the Stop button
            break
    assert load_checkpoint(root / "stopped" / "latest.pt").step == 3
    resumed = run(train_2d_job(_cfg(root, "stopped", epochs=3, resume=True)))
    assert resumed["steps"] == full["steps"]
    a = load_checkpoint(full["latest"]).model_state
    b = load_checkpoint(resumed["latest"]).model_state
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_bad_options_fail_before_any_work(data, tmp_path):
    root, _ = data
    with pytest.raises(InputError, match="data_dir is required"):
        run(train_2d_job(Train2DConfig(ckpt_dir=str(tmp_path / "x"))))
    with pytest.raises(InputError, match="unknown degradation|valid"):
        run(train_2d_job(_cfg(root, "bad", degrade="sparkle")))
    with pytest.raises(InputError, match="multiple of 4"):
        run(train_2d_job(_cfg(root, "bad2", patch=30)))
    assert not (root / "bad").exists() and not (root / "bad2").exists()


@pytest.fixture(scope="module")
def model(data):
    root, _ = data
    res = run(train_2d_job(_cfg(root, "m")))
    return load_ae2d_model(res["latest"])


def test_prediction_is_in_the_image_units(model, data):
    # percentile normalisation per image: an affine change of the input's units changes
    # the mean the same way and scales every std (independent of the network)
    net, ck = model
    _, files = data
    from napari_sim_uq.core.data.images2d import read_image_2d

    img = read_image_2d(files["test"][0])
    a = run(predict_2d(net, ck, img, mc_samples=6, seed=1))
    b = run(predict_2d(net, ck, 3.0 * img + 100.0, mc_samples=6, seed=1))
    scale = float(np.ptp(img))
    np.testing.assert_allclose(b.arrays["mean"], 3 * a.arrays["mean"] + 100, atol=1e-4 * scale)
    for key in ("std", "epistemic_std", "aleatoric_std"):
        np.testing.assert_allclose(b.arrays[key], 3 * a.arrays[key], rtol=1e-3, atol=1e-5 * scale)
    tot = np.sqrt(a.arrays["epistemic_std"] ** 2 + a.arrays["aleatoric_std"] ** 2)
    np.testing.assert_allclose(a.arrays["std"], tot, rtol=1e-5)
    assert a.arrays["mean"].shape == img.shape and a.meta["mc_samples"] == 6


def test_prediction_input_errors(model):
    net, ck = model
    with pytest.raises(InputError, match="NaN"):
        run(predict_2d(net, ck, np.full((32, 32), np.nan)))
    with pytest.raises(InputError, match="smaller than the minimum"):
        run(predict_2d(net, ck, np.ones((3, 3))))
    with pytest.raises(InputError, match="stack"):
        run(predict_2d(net, ck, np.zeros((5, 32, 32))))
    rgb = np.random.default_rng(0).random((32, 40, 3))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = run(predict_2d(net, ck, rgb, mc_samples=2))
    assert any("colour" in str(x.message) for x in w) and out.arrays["mean"].shape == (32, 40)


def test_degrade_first_and_anomaly_scores(model, data):
    net, ck = model
    _, files = data
    from napari_sim_uq.core.data.images2d import read_image_2d

    img = read_image_2d(files["test"][1])
    p = run(predict_2d(net, ck, img, mc_samples=4, degrade="noise:0.2", scores=True))
    d = p.arrays["degraded"]
    assert d.shape == img.shape and not np.allclose(d, img)
    # the score is (x - mu)^2 / sigma^2 of the (degraded) input, in normalised units
    from napari_sim_uq.core.data.normalization import Normalization

    n = Normalization("percentile").fit(img)
    z2 = (n.apply(d) - n.apply(p.arrays["mean"])) ** 2 / n.apply_std(p.arrays["std"]) ** 2
    np.testing.assert_allclose(p.arrays["anomaly_score"], z2, rtol=2e-3, atol=1e-4)
    assert p.meta["image_score"] == pytest.approx(float(z2.mean()), rel=2e-3)
