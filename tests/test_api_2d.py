"""Console API of the 2D task (reconstruct_2d, anomaly_map, train_2d): no Qt, no napari."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import napari_sim_uq as squ
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.uq import explore
from napari_sim_uq.core.uq.metrics import psnr
from napari_sim_uq.tasks.ae2d.synth2d import generate_image

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = Path(__file__).resolve().parents[1] / "example_data"
SIM_MODEL = EXAMPLES / "sim_uq_demo_model.pt"
SUFFIXES = ["mean", "std", "epistemic std", "aleatoric std"]
TINY = {"base_channels": 8, "depth": 2, "dropout": 0.1}


def _images(n: int, size: int = 48, seed: int = 0) -> list[np.ndarray]:
    """Clean synthetic images in [0, 1000] (a microscope-like intensity range)."""
    return [1000.0 * generate_image(size, (seed, i)) for i in range(n)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained from in-memory arrays (train_2d with arrays)."""
    out = tmp_path_factory.mktemp("ae2d") / "run"
    summary = squ.train_2d(
        _images(4),
        out,
        epochs=1,
        batch_size=4,
        patch=32,
        patches_per_image=2,
        model=dict(TINY),
        device="cpu",
    )
    return SimpleNamespace(out=out, summary=summary, ckpt=Path(summary["latest"]))


class FakeViewer:
    """What the API uses of a napari viewer: ``layers`` (by name) and ``add_image``."""

    def __init__(self):
        self.layers = FakeLayers()

    def add_image(self, data, **kw):
        lay = SimpleNamespace(data=data, **kw)
        self.layers.append(lay)
        return lay


class FakeLayers(list):
    def __contains__(self, name):
        return any(lay.name == name for lay in self)

    def __getitem__(self, key):
        if isinstance(key, str):
            return next(lay for lay in self if lay.name == key)
        return super().__getitem__(key)


def _layer(data, name="cells", scale=(0.5, 0.25), translate=(10.0, -3.0), rgb=False):
    """A duck-typed napari Image layer with a pixel size and an offset."""
    return SimpleNamespace(
        data=data,
        name=name,
        scale=scale,
        translate=translate,
        metadata={},
        multiscale=False,
        rgb=rgb,
    )


def test_training_from_arrays_writes_them_and_records_the_folder(trained):
    from napari_sim_uq.core.data.images2d import read_image_2d
    from napari_sim_uq.core.io.checkpoint import load_checkpoint

    s = trained.summary
    assert s["epochs_done"] == 1 and s["steps"] == 2  # 4 images x 2 patches / batch 4
    folder = trained.out / "layer_data" / "train"
    files = sorted(folder.glob("*.tif"))
    assert len(files) == 4
    np.testing.assert_allclose(read_image_2d(files[1]), _images(4)[1], rtol=1e-6)
    ck = load_checkpoint(trained.ckpt)
    assert ck.model_type == "ae2d"
    assert Path(ck.config["train"]["data_dir"]) == folder
    assert ck.config["model"]["base_channels"] == 8


def test_reconstruct_2d_layers_names_and_placement(trained):
    img = _images(1, 40, seed=3)[0]
    layer = _layer(img)
    out = squ.reconstruct_2d(layer, trained.ckpt, mc_samples=4, degrade="noise:0.1")
    names = [kw["name"] for _d, kw, _k in out]
    assert names == [f"cells {s}" for s in SUFFIXES] + ["cells degraded"]
    for data, kw, kind in out:
        assert kind == "image" and data.shape == img.shape and data.dtype == np.float32
        assert kw["scale"] == (0.5, 0.25) and kw["translate"] == (10.0, -3.0)
        md = kw["metadata"]["sim_uq"]
        assert md["source"] == "cells" and md["task"] == "ae2d"
        rec = md["reconstruction"]
        assert rec["model_type"] == "ae2d" and len(rec["config_hash"]) == 12
        assert rec["mc_samples"] == 4 and rec["degrade"] == "noise:0.1"
        assert rec["checkpoint"] == str(trained.ckpt)
    arr = {kw["name"].split(" ", 1)[1]: d for d, kw, _k in out}
    # law of total variance: total^2 = epistemic^2 + aleatoric^2
    np.testing.assert_allclose(
        arr["std"] ** 2,
        arr["epistemic std"] ** 2 + arr["aleatoric std"] ** 2,
        rtol=1e-4,
        atol=1e-6 * float(arr["std"].max()) ** 2,
    )
    assert (arr["epistemic std"] > 0).all() and (arr["aleatoric std"] > 0).all()
    # the degraded input: noise of std 0.1 in normalised units (percentile 0.1-99.9 %)
    span = np.percentile(img, 99.9) - np.percentile(img, 0.1)
    noise = (arr["degraded"] - img) / span
    assert abs(noise.std() - 0.1) < 0.01, noise.std()
    # the explorer pairs every mean with its total std by name
    cat = {kw["name"]: kw["metadata"] for _d, kw, _k in out}
    assert explore.mean_std_pairs(cat) == [("cells mean", "cells std")]
    # ... and by metadata when the layers were renamed
    renamed = {"my mean": cat["cells mean"], "sigma": cat["cells std"]}
    assert explore.find_std_layer("my mean", renamed) == "sigma"


def test_reconstruct_2d_one_sample_has_no_epistemic_layer(trained):
    img = _images(1, 32, seed=4)[0]
    out = squ.reconstruct_2d(img, trained.ckpt, mc_samples=1)
    names = [kw["name"] for _d, kw, _k in out]
    assert names == ["array mean", "array std", "array aleatoric std"]
    np.testing.assert_allclose(out[1][0], out[2][0])  # total = aleatoric


def test_anomaly_map_scores_and_image_score(trained):
    img = _images(1, 32, seed=5)[0]
    ((data, kw, kind),) = squ.anomaly_map(_layer(img, "x"), trained.ckpt, mc_samples=3)
    assert kw["name"] == "x anomaly score" and kw["scale"] == (0.5, 0.25)
    md = kw["metadata"]["sim_uq"]
    assert md["image_score"] == pytest.approx(float(data.mean()), rel=1e-5)
    assert md["reconstruction"]["mc_samples"] == 3
    # an independent check of the score (x - mu)^2 / sigma^2 from the reconstruction of the
    # same input with the same seed (the normalisation's scale cancels)
    mean, std = (
        d.astype(np.float64)
        for d, _kw, _k in squ.reconstruct_2d(img, trained.ckpt, mc_samples=3)[:2]
    )
    np.testing.assert_allclose(data, (img - mean) ** 2 / std**2, rtol=1e-3, atol=1e-4)


def test_rgb_is_converted_with_a_warning(trained):
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0, 255, (32, 32, 3)).astype(np.uint8)
    with pytest.warns(UserWarning, match="colour"):
        got = squ.reconstruct_2d(rgb, trained.ckpt, mc_samples=2)
    grey = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    want = squ.reconstruct_2d(grey, trained.ckpt, mc_samples=2)
    np.testing.assert_allclose(got[0][0], want[0][0], rtol=1e-5, atol=1e-3)
    # an RGB napari layer too
    with pytest.warns(UserWarning, match="colour"):
        squ.reconstruct_2d(_layer(rgb, rgb=True), trained.ckpt, mc_samples=1)


@pytest.mark.parametrize(
    "data, match",
    [
        (np.where(np.eye(32) > 0, np.nan, 1.0), "NaN"),
        (np.arange(9.0).reshape(3, 3), "smaller than the minimum"),
        (np.ones((3, 32, 32)), "stack"),
        (np.full((32, 32), "a"), "data type"),
    ],
)
def test_bad_input_is_refused_and_adds_nothing(trained, data, match):
    viewer = FakeViewer()
    with pytest.raises(InputError, match=match):
        squ.reconstruct_2d(data, trained.ckpt, viewer=viewer, mc_samples=1)
    with pytest.raises(InputError, match=match):
        squ.anomaly_map(data, trained.ckpt, viewer=viewer, mc_samples=1)
    assert len(viewer.layers) == 0


def test_sim_checkpoint_and_missing_file_are_refused(tmp_path):
    viewer = FakeViewer()
    img = _images(1, 32)[0]
    with pytest.raises(InputError, match="SIM reconstruction model.*train-2d"):
        squ.reconstruct_2d(img, SIM_MODEL, viewer=viewer, mc_samples=1)
    with pytest.raises(InputError, match="does not exist"):
        squ.anomaly_map(img, tmp_path / "nope.pt", viewer=viewer)
    assert len(viewer.layers) == 0


def test_viewer_layers_are_added_then_replaced(trained):
    viewer = FakeViewer()
    img = _images(1, 32, seed=6)[0]
    first = squ.reconstruct_2d(_layer(img), trained.ckpt, viewer=viewer, mc_samples=2)
    assert [lay.name for lay in viewer.layers] == [f"cells {s}" for s in SUFFIXES]
    assert first[0].scale == (0.5, 0.25)
    squ.reconstruct_2d(_layer(img), trained.ckpt, viewer=viewer, mc_samples=2)
    assert len(viewer.layers) == len(SUFFIXES)  # replaced, not duplicated


def test_train_2d_refuses_bad_options_before_writing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(InputError):
        squ.train_2d(_images(2), out, epochs=0)
    with pytest.raises(InputError, match="NaN"):
        squ.train_2d([np.full((32, 32), np.nan)], out, epochs=1)
    with pytest.raises(InputError, match="degrad|unknown"):
        squ.train_2d(_images(2), out, degrade="fog:3")
    with pytest.raises(InputError, match="no files|no such"):
        squ.train_2d(str(tmp_path / "missing"), out, epochs=1)
    assert not out.exists()


def test_bundled_model_denoises_synthetic_images():
    path = squ.example_2d_model_path()
    assert path.stat().st_size < 2_000_000
    from scipy.stats import spearmanr

    from napari_sim_uq.core.data.degrade import degrade_array
    from napari_sim_uq.core.io.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    assert ck.model_type == "ae2d" and ck.optimizer_state is None
    assert ck.config["model"]["base_channels"] == 16 and ck.config["model"]["depth"] == 3
    assert 0 < ck.sigma_scale["mean"] < 1  # calibrated on held-out images

    clean = generate_image(64, 1, "mixed")  # not a training image
    # "degrade first": normalised, then noise:0.1, as the model was trained and calibrated
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = squ.reconstruct_2d(clean, mc_samples=8, degrade="noise:0.1", seed=1)
    mean, std, _epi, _alea, noisy = (d for d, _kw, _k in out)
    gain = psnr(mean, clean, 1.0) - psnr(noisy, clean, 1.0)
    assert gain > 6.0, gain  # measured: 13.5 dB
    zms = float(np.mean((mean - clean) ** 2 / std**2))
    assert 0.4 < zms < 2.5, zms  # measured: 1.02
    # a noisy image given as it is: still denoised, and the std ranks the errors
    noisy, _ = degrade_array(clean, "noise:0.1", 7)
    mean, std = (d for d, _kw, _k in squ.reconstruct_2d(noisy, mc_samples=8)[:2])
    assert psnr(mean, clean, 1.0) - psnr(noisy, clean, 1.0) > 4.0  # measured: 7.4 dB
    rho = spearmanr(std.ravel(), np.abs(mean - clean).ravel())[0]
    assert rho > 0.3, rho  # measured: 0.58
