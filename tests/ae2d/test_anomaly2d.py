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
    from napari_sim_uq.core.data.images2d import read_image_2d
    from napari_sim_uq.core.data.normalization import Normalization
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


# ----------------------------------------------------------------------------- pooling


def test_pool_scores_against_sorting(rng):
    from napari_sim_uq.tasks.ae2d.anomaly import pool_scores

    v = rng.gamma(0.5, 2.0, (40, 50))  # 2000 pixels: the top 1 % are 20
    assert pool_scores(v, "mean") == pytest.approx(v.mean())
    assert pool_scores(v, "top1") == pytest.approx(np.sort(v.ravel())[-20:].mean())
    assert pool_scores(np.arange(10.0), "top1") == 9.0  # at least one pixel
    # a small bright spot moves the top-1 % pool far more than the mean
    spot = np.zeros((40, 50))
    spot[:4, :5] = 10.0  # 1 % of the pixels
    assert pool_scores(spot, "top1") == pytest.approx(10.0)
    assert pool_scores(spot, "mean") == pytest.approx(0.1)
    with pytest.raises(InputError, match="pool"):
        pool_scores(v, "median")


def test_both_pools_are_reported_and_match_the_pixel_maps(setup, tmp_path):
    from napari_sim_uq.core.data.images2d import read_image_2d
    from napari_sim_uq.core.data.normalization import Normalization
    from napari_sim_uq.tasks.ae2d.anomaly import POOLS, SCORES
    from napari_sim_uq.tasks.ae2d.predict import load_ae2d_model, predict_2d

    _, ck, normal, noise = setup
    doc = run(anomaly_job(ck, normal, noise, tmp_path / "t", pool="top1"))
    assert doc["pool"] == "top1" and set(doc["scores_by_pool"]) == set(POOLS)
    assert doc["scores"] == doc["scores_by_pool"]["top1"]
    with open(tmp_path / "t" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = np.array([int(r["label"]) for r in rows], bool)
    for name in SCORES:
        for pool in POOLS:
            s = np.array([float(r[f"{name}_{pool}"]) for r in rows])
            auc = _auc_by_pairs(s[~labels], s[labels])
            assert auc == pytest.approx(doc["scores_by_pool"][pool][name]["auc"])
        # the main columns are the chosen pool
        np.testing.assert_array_equal(
            [float(r[f"score_{name}"]) for r in rows], [float(r[f"{name}_top1"]) for r in rows]
        )
    # top-1 % of the per-pixel maps, recomputed independently
    model, c = load_ae2d_model(ck)
    row = doc["per_image"][-1]
    img = read_image_2d(row["file"])
    pred = run(predict_2d(model, c, img, mc_samples=1))
    norm = Normalization.from_dict(pred.meta["normalization"])
    x = norm.apply(img.astype(np.float64))
    mu = norm.apply(pred.arrays["mean"].astype(np.float64))
    sd = norm.apply_std(pred.arrays["std"].astype(np.float64))
    k = round(0.01 * x.size)
    top = np.sort(((x - mu) ** 2).ravel())[-k:].mean()
    assert row["mse_top1"] == pytest.approx(top, rel=1e-3)
    assert row["uncertainty_top1"] == pytest.approx(
        np.sort(((x - mu) ** 2 / sd**2).ravel())[-k:].mean(), rel=1e-3
    )
    assert row["uncertainty_top1"] >= row["uncertainty_mean"]
    with pytest.raises(InputError, match="pool"):
        run(anomaly_job(ck, normal, noise, tmp_path / "bad", pool="max"))
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------- the network


def test_conv_ae_options_keep_the_familiar_design_by_default():
    import torch

    from napari_sim_uq.tasks.ae2d.net import AE2DConfig, build_model

    base = {"arch": "conv-ae", "model": "hetero", "base_channels": 4}
    old_keys = [
        f"{part}.{i}.{w}"
        for part, idx in (("encoder", (0, 3, 6)), ("decoder", (0, 2, 4)))
        for i in idx
        for w in ("weight", "bias")
    ]
    model = build_model(base)
    assert [k for k in model.state_dict() if k.split(".")[0] in ("encoder", "decoder")] == old_keys
    assert model.multiple == 4
    # an old checkpoint's config (without the new fields) builds the same network
    assert AE2DConfig.from_dict(base) == AE2DConfig(**base, conv_depth=2, latent_channels=0)
    with torch.no_grad():
        out = model(torch.rand(2, 1, 16, 16))
    assert float(out.mean.min()) >= 0 and float(out.mean.max()) <= 1  # sigmoid head


@pytest.mark.parametrize(("depth", "latent"), [(3, 2), (4, 0)])
def test_deeper_conv_ae_bottleneck_shapes(depth, latent):
    import torch
    from torch import nn

    from napari_sim_uq.tasks.ae2d.net import build_model

    cfg = {"arch": "conv-ae", "model": "hetero", "base_channels": 4, "conv_depth": depth}
    model = build_model({**cfg, "latent_channels": latent, "mean_activation": "linear"})
    assert model.multiple == model.min_size == 2**depth
    x = torch.rand(2, 1, 2 * 2**depth, 3 * 2**depth)
    # the bottleneck: H / 2^depth x W / 2^depth x latent channels
    code = model.encoder(x)
    assert code.shape == (2, latent or 4, 2, 3)
    out = model(x)
    assert out.mean.shape == out.logvar.shape == x.shape
    strided = [m for m in model.encoder if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == depth
    # the linear head is not confined to [0, 1]
    with torch.no_grad():
        model.mean_head.bias.fill_(-3.0)
        assert float(model(x).mean.min()) < 0
    with pytest.raises(InputError, match="multiples of"):
        model(torch.rand(1, 1, 2**depth + 4, 2**depth))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"conv_depth": 1}, "conv_depth"),
        ({"latent_channels": -1}, "latent_channels"),
        ({"mean_activation": "relu"}, "mean_activation"),
    ],
)
def test_conv_ae_option_errors(kw, match):
    from napari_sim_uq.tasks.ae2d.net import AE2DConfig

    with pytest.raises(InputError, match=match):
        AE2DConfig(arch="conv-ae", **kw)


def test_sigmoid_mean_fails_on_dark_images_and_the_demo_design_learns(tmp_path):
    """On the sparse synthetic images (most pixels exactly 0) the heteroscedastic loss
    drives a sigmoid mean head towards 0, where its gradient vanishes: the reconstruction
    does not follow the image (after 60 epochs of the demo it was 0 to 1e-9 everywhere, and
    the "MSE" score only measured mean(x^2)). The demo's design (linear head, variance
    floor) reconstructs unseen images after the same training."""
    import torch

    from napari_sim_uq.tasks.ae2d.demo import anomaly_ae_model
    from napari_sim_uq.tasks.ae2d.predict import load_ae2d_model
    from napari_sim_uq.tasks.ae2d.synth2d import generate_image

    generate_dataset_2d(tmp_path / "d", 8, 0, 0, size=64, seed=5)
    x = np.stack([generate_image(64, (5, 9, i)) for i in range(4)])  # unseen images
    corr = {}
    for name, model in (
        ("sigmoid", {"arch": "conv-ae", "model": "hetero", "base_channels": 8}),
        ("demo", anomaly_ae_model(8)),
    ):
        cfg = Train2DConfig(
            data_dir=str(tmp_path / "d" / "train"),
            ckpt_dir=str(tmp_path / name),
            epochs=25,
            batch_size=8,
            patch=32,
            patches_per_image=4,
            lr=2e-3,
            degrade="none",
            norm_mode="minmax",
            device="cpu",
            model=model,
        )
        run(train_2d_job(cfg))
        m, _ = load_ae2d_model(tmp_path / name / "latest.pt")
        with torch.no_grad():
            mu = m(torch.from_numpy(x)[:, None]).mean[:, 0].numpy()
        corr[name] = np.corrcoef(mu.ravel(), x.ravel())[0, 1]
    # measured: sigmoid -0.07 to -0.09, demo 0.93 (three data seeds)
    assert corr["sigmoid"] < 0.3 and corr["demo"] > 0.8, corr


# ----------------------------------------------------------------------------- benchmark


def test_anomaly_benchmark_quick(tmp_path):
    import importlib.util
    import math
    import sys

    import torch

    bench = Path(__file__).resolve().parents[2] / "bench"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location("bench_anomaly_2d", bench / "anomaly_2d.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(bench))
    out = tmp_path / "anomaly.json"
    threads = torch.get_num_threads()
    try:
        assert mod.main(["--quick", "--designs", "sigmoid,linear-floor", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    res = json.loads(out.read_text())
    assert res["benchmark"] == "anomaly_2d" and res["quick"] is True
    assert {"machine", "settings", "data", "conventions", "designs"} <= set(res)
    assert list(res["designs"]) == ["sigmoid", "linear-floor"]
    for design in res["designs"].values():
        assert design["training"]["epochs"] == 1 and design["training"]["train_seconds"] > 0
        scores = design["scores"]
        for pool in ("mean", "top1"):
            for name in ("uncertainty", "mse"):
                aucs = [scores[k][pool][name]["auc"] for k in mod.KINDS]
                assert all(0.0 <= a <= 1.0 for a in aucs)
                # the same normal images against each kind's equally many abnormal ones:
                # the pooled AUC is the mean of the per-kind AUCs
                assert scores["pooled"][pool][name]["auc"] == pytest.approx(np.mean(aucs))
        for k in mod.KINDS:
            assert all(0.0 <= v <= 1.0 for v in scores[k]["paired"].values())
        assert all(math.isfinite(v) for v in scores["normal_images"]["cv"].values())


def test_demo_anomaly_options():
    from napari_sim_uq.tasks.ae2d.demo import Demo2DConfig, anomaly_ae_model
    from napari_sim_uq.tasks.ae2d.net import AE2DConfig

    for floor in (-12.0, -5.0, 0.0):
        cfg = AE2DConfig.from_dict(anomaly_ae_model(8, floor))
        assert cfg.logvar_min == floor < cfg.logvar_init < cfg.logvar_max
        assert (cfg.arch, cfg.model, cfg.mean_activation) == ("conv-ae", "hetero", "linear")
    cfg = Demo2DConfig(out_dir="x")
    cfg.validate()
    assert (cfg.ae_size, cfg.ae_patch, cfg.ae_logvar_min) == (128, 64, -5.0)
    for bad, match in (
        ({"ae_patch": 256}, "ae_patch"),
        ({"ae_patch": 30}, "ae_patch"),
        ({"ae_logvar_min": 3.0}, "ae_logvar_min"),
    ):
        with pytest.raises(InputError, match=match):
            Demo2DConfig(out_dir="x", **bad).validate()
