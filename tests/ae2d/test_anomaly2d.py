"""anomaly_job: scores, AUC/EER/F1 against independent computations, files, refusals."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import run
from napari_sim_uq.core.io.tiff_io import write_image
from napari_sim_uq.tasks.ae2d.anomaly import anomaly_job
from napari_sim_uq.tasks.ae2d.synth2d import generate_dataset_2d
from napari_sim_uq.tasks.ae2d.train import Train2DConfig, train_2d_job

pytestmark = pytest.mark.usefixtures("one_thread")

SIM_CHECKPOINT = Path(__file__).parents[2] / "example_data" / "sim_uq_demo_model.pt"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("anom2d")
    generate_dataset_2d(root / "data", 6, 0, 4, size=32, seed=2)
    cfg = Train2DConfig(
        data_dir=str(root / "data" / "train"),
        ckpt_dir=str(root / "ck"),
        epochs=10,
        batch_size=8,
        patch=32,
        patches_per_image=8,
        lr=3e-3,
        degrade="none",
        norm_mode="minmax",
        device="cpu",
        model={"arch": "conv-ae", "model": "hetero", "base_channels": 8},
    )
    run(train_2d_job(cfg))
    # trivially abnormal: white noise, nothing like the smooth training structures
    noise = root / "noise"
    rng = np.random.default_rng(0)
    for i in range(4):
        write_image(noise / f"noise_{i}.tif", rng.uniform(0, 1, (32, 32)).astype(np.float32))
    return root, root / "ck" / "latest.pt", root / "data" / "test", noise


def _auc_by_pairs(neg, pos):
    """P(score_pos > score_neg) + 0.5 P(tie), by enumerating every pair."""
    wins = [1.0 if p > n else 0.5 if p == n else 0.0 for n, p in itertools.product(neg, pos)]
    return float(np.mean(wins))


def test_separable_sets_give_auc_one_and_files(setup, tmp_path):
    _, ck, normal, noise = setup
    out = tmp_path / "a"
    doc = run(anomaly_job(ck, normal, noise, out))
    assert doc["n_normal"] == 4 and doc["n_abnormal"] == 4
    for name in ("uncertainty", "mse"):
        rep = doc["scores"][name]
        assert rep["auc"] == 1.0 and rep["eer"] == 0.0 and rep["f1"] == 1.0
    # the files: CSV scores reproduce the AUC; the JSON is the returned document
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and [int(r["label"]) for r in rows] == [0] * 4 + [1] * 4
    for name in ("uncertainty", "mse"):
        s = np.array([float(r[f"score_{name}"]) for r in rows])
        assert _auc_by_pairs(s[:4], s[4:]) == doc["scores"][name]["auc"]
        np.testing.assert_array_equal(s, [r[name] for r in doc["per_image"]])
    assert json.loads((out / "anomaly.json").read_text()) == json.loads(json.dumps(doc))
    assert Image.open(out / "roc.png").size[0] > 100
    assert doc["notes"] == []  # a model trained with --degrade none


def test_scores_match_their_definitions(setup, tmp_path):
    from napari_sim_uq.core.data.normalization import Normalization
    from napari_sim_uq.tasks.ae2d.data import read_image_2d
    from napari_sim_uq.tasks.ae2d.predict import load_ae2d_model, predict_2d

    _, ck, normal, noise = setup
    doc = run(anomaly_job(ck, normal, noise, tmp_path / "a"))
    model, c = load_ae2d_model(ck)
    row = doc["per_image"][0]
    img = read_image_2d(row["file"])
    pred = run(predict_2d(model, c, img, mc_samples=1))
    norm = Normalization.from_dict(pred.meta["normalization"])
    x = norm.apply(img.astype(np.float64))
    mu = norm.apply(pred.arrays["mean"].astype(np.float64))
    sd = norm.apply_std(pred.arrays["std"].astype(np.float64))
    assert row["uncertainty"] == pytest.approx(np.mean((x - mu) ** 2 / sd**2), rel=1e-3)
    assert row["mse"] == pytest.approx(np.mean((x - mu) ** 2), rel=1e-3)


def test_identical_sets_give_auc_one_half(setup, tmp_path):
    _, ck, normal, _ = setup
    doc = run(anomaly_job(ck, normal, normal, tmp_path / "same"))
    for name in ("uncertainty", "mse"):
        assert doc["scores"][name]["auc"] == 0.5
        assert doc["scores"][name]["eer"] == pytest.approx(0.5)


def test_refusals(setup, tmp_path):
    _, ck, normal, noise = setup
    out = tmp_path / "a"
    run(anomaly_job(ck, normal, noise, out))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="not overwriting"):
        run(anomaly_job(ck, normal, noise, out))
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    run(anomaly_job(ck, normal, noise, out, overwrite=True))
    with pytest.raises(InputError, match="SIM"):
        run(anomaly_job(SIM_CHECKPOINT, normal, noise, tmp_path / "sim"))
    assert not (tmp_path / "sim").exists()
    with pytest.raises(InputError, match="mc_samples"):
        run(anomaly_job(ck, normal, noise, tmp_path / "b", mc_samples=0))
    with pytest.raises(InputError, match="no files match"):
        run(anomaly_job(ck, normal, tmp_path / "missing", tmp_path / "b"))
    assert not (tmp_path / "b").exists()
