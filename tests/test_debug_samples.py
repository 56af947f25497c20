"""Training debug folders (``--debug-every-epochs``) and ``sim-uq plot-metrics``."""

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_sim_uq.cli import main
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import run
from napari_sim_uq.core.plots import plot_metrics_csv, read_metrics_csv
from napari_sim_uq.tasks.sim import debug as dbg
from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_dataset
from napari_sim_uq.tasks.sim.train import TrainConfig, train_sim_job

TINY_MODEL = {"hr_factor": 2, "base_channels": 4, "depth": 1, "psf_size": 5}
PNGS = (
    "std_maps.png",
    "std_histograms.png",
    "calibration.png",
    "nll_maps.png",
    "raw_std_vs_noise_sigma.png",
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dbgdata")
    cfg = SynthConfig(lr_size=(16, 16), hr_factor=2, psf_sigma_lr=(0.8, 1.0))
    run(generate_dataset(root, 4, cfg, seed=0, workers=1))
    run(generate_dataset(root, 2, cfg, seed=1, split="val", workers=1))
    return root


def _cfg(data, ckpt, **kw):
    base = dict(
        train_glob=str(data / "train" / "*.tif"),
        val_glob=str(data / "val" / "*.tif"),
        ckpt_dir=str(ckpt),
        epochs=2,
        batch_size=2,
        lr=3e-3,
        device="cpu",
        supervised=True,
        model=dict(TINY_MODEL),
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ck") / "run"
    events = []
    res = run(train_sim_job(_cfg(data, ckpt, debug_every_epochs=1)), events.append)
    return ckpt, res, events


def test_debug_folders_have_every_file(trained):
    ckpt, _, events = trained
    root = ckpt / "debug_samples"
    assert sorted(p.name for p in root.iterdir()) == ["epoch_001", "epoch_002"]  # no temp left
    debug_events = [e for e in events if e.stage == "debug"]
    assert [e.step for e in debug_events] == [1, 2]
    assert str(root / "epoch_002") in debug_events[-1].message
    for ep in ("epoch_001", "epoch_002"):
        folder = root / ep
        names = {p.name for p in folder.iterdir()}
        assert {"uq_uncertainty.npz", "uq_summary.json", *PNGS} <= names
        summary = json.loads((folder / "uq_summary.json").read_text())
        assert summary["plots"] == list(summary["plots"]) and set(PNGS) <= set(summary["plots"])
        assert "plot_errors" not in summary
        for png in PNGS:
            with Image.open(folder / png) as im:
                im.load()
                assert im.format == "PNG" and im.size[0] > 50 and im.size[1] > 50


def test_npz_shapes(trained):
    ckpt, _, _ = trained
    a = np.load(ckpt / "debug_samples" / "epoch_002" / "uq_uncertainty.npz")
    B, F, H, W, f, k = 2, 9, 16, 16, 2, 5
    shapes = {
        "x": (B, F, H, W),
        "emitter": (B, f * H, f * W),
        "emitter_std": (B, f * H, f * W),
        "lp": (B, F, f * H, f * W),
        "lp_std": (B, F, f * H, f * W),
        "psf": (B, k, k),
        "psf_std": (B, k, k),
        "rec": (B, F, H, W),
        "rec_std": (B, F, H, W),
        "raw_std": (B, F, H, W),
        "emitter_gt": (B, f * H, f * W),
        "lp_gt": (B, F, f * H, f * W),
        "noise_sigma": (B, F, H, W),
        "nll_emitter": (B, f * H, f * W),
        "nll_raw": (B, F, H, W),
    }
    for key, shape in shapes.items():
        assert a[key].shape == shape, key
        assert a[key].dtype == np.float32 and np.isfinite(a[key]).all(), key
    assert int(a["epoch"]) == 2 and list(a["index"]) == [0, 1]
    assert (a["noise_sigma"] > 0).all()


def test_summary_matches_the_arrays(trained):
    ckpt, _, _ = trained
    folder = ckpt / "debug_samples" / "epoch_001"
    a = np.load(folder / "uq_uncertainty.npz")
    s = json.loads((folder / "uq_summary.json").read_text())
    assert s["epoch"] == 1 and s["n_samples"] == 2
    assert set(s["std"]) == set(dbg.STD_KEYS)
    for key, st in s["std"].items():
        v = a[key].astype(np.float64)
        assert st["mean"] == pytest.approx(v.mean(), rel=1e-12)
        assert st["p95"] == pytest.approx(np.percentile(v, 95), rel=1e-12)
        assert st["min"] == pytest.approx(v.min()) and st["max"] == pytest.approx(v.max())
    assert s["nll"]["raw"] == pytest.approx(a["nll_raw"].astype(np.float64).mean(), rel=1e-9)
    assert s["camera"]["alpha"] == pytest.approx(float(a["camera_alpha"]))


def test_raw_variance_is_model_plus_camera_plus_floor(trained):
    from napari_sim_uq.core.io.checkpoint import load_checkpoint

    ckpt, _, _ = trained
    a = np.load(ckpt / "debug_samples" / "epoch_002" / "uq_uncertainty.npz")
    # the camera parameters of the checkpoint written just before the debug folder
    state = load_checkpoint(ckpt / "latest.pt").extra["loss_state"]
    alpha = float(torch.nn.functional.softplus(state["camera.a"]))
    beta = float(torch.nn.functional.softplus(state["camera.c"]))
    assert float(a["camera_alpha"]) == pytest.approx(alpha, rel=1e-6)
    assert float(a["camera_beta"]) == pytest.approx(beta, rel=1e-6)
    rec = a["rec"].astype(np.float64)
    expected = (
        a["rec_std"].astype(np.float64) ** 2
        + alpha * np.maximum(rec, 0)
        + beta
        + float(a["var_floor"])
    )
    np.testing.assert_allclose(a["raw_std"].astype(np.float64) ** 2, expected, rtol=1e-5)


def test_nll_maps_follow_the_loss_convention(trained):
    ckpt, _, _ = trained
    a = np.load(ckpt / "debug_samples" / "epoch_002" / "uq_uncertainty.npz")
    f64 = {k: a[k].astype(np.float64) for k in a.files}
    # raw: V = raw_std^2, no 0.5*log(2 pi) term
    v = f64["raw_std"] ** 2
    ref = 0.5 * ((f64["x"] - f64["rec"]) ** 2 / v + np.log(v))
    np.testing.assert_allclose(f64["nll_raw"], ref, rtol=1e-4, atol=1e-5)
    # emitter against ground truth: V = emitter_std^2 + var_floor
    v = f64["emitter_std"] ** 2 + f64["var_floor"]
    ref = 0.5 * ((f64["emitter_gt"] - f64["emitter"]) ** 2 / v + np.log(v))
    np.testing.assert_allclose(f64["nll_emitter"], ref, rtol=1e-4, atol=1e-5)


def test_debug_off_writes_nothing(data, tmp_path):
    events = []
    run(train_sim_job(_cfg(data, tmp_path / "ck", epochs=1)), events.append)
    assert not (tmp_path / "ck" / "debug_samples").exists()
    assert not [e for e in events if e.stage == "debug"]
    with pytest.raises(InputError, match="debug_every_epochs"):
        run(train_sim_job(_cfg(data, tmp_path / "ck2", debug_every_epochs=-1)))


def _fast_plots(monkeypatch):
    """Replace the (slow) figures by a stub that writes a small file."""

    def stub(a, path):
        Path(path).write_bytes(b"png")

    for name in ("_plot_std_maps", "_plot_calibration", "_plot_nll_maps", "_plot_noise_sigma"):
        monkeypatch.setattr(dbg, name, stub)


def test_a_failing_plot_warns_once_and_training_goes_on(data, tmp_path, monkeypatch):
    def broken(a, path):
        raise RuntimeError("no plotting today")

    _fast_plots(monkeypatch)
    monkeypatch.setattr(dbg, "_plot_histograms", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run(train_sim_job(_cfg(data, tmp_path / "ck", debug_every_epochs=1)))
    assert res["epochs_done"] == 2
    msgs = [str(w.message) for w in caught if "std_histograms.png" in str(w.message)]
    assert len(msgs) == 1
    s = json.loads(
        (tmp_path / "ck" / "debug_samples" / "epoch_002" / "uq_summary.json").read_text()
    )
    assert "std_histograms.png" in s["plot_errors"]
    assert "std_histograms.png" not in s["plots"] and "std_maps.png" in s["plots"]


def test_replaces_an_existing_epoch_folder_atomically(tmp_path, monkeypatch):
    from napari_sim_uq.tasks.sim.loss import SimLoss
    from napari_sim_uq.tasks.sim.net import SimUQNet

    _fast_plots(monkeypatch)
    monkeypatch.setattr(dbg, "_plot_histograms", dbg._plot_noise_sigma)  # the stub
    torch.manual_seed(0)
    model = SimUQNet(TINY_MODEL)
    crit = SimLoss({"camera_noise": "none"}, 2)
    batch = {"x": torch.rand(1, 9, 8, 8)}
    p1 = dbg.write_debug_samples(model, crit, batch, tmp_path, epoch=3, supervised=False)
    (p1 / "stale.txt").write_text("old")
    p2 = dbg.write_debug_samples(model, crit, batch, tmp_path, epoch=3, supervised=False)
    assert p1 == p2 == tmp_path / "epoch_003"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_003"]
    assert not (p2 / "stale.txt").exists()
    names = {p.name for p in p2.iterdir()}
    assert "nll_maps.png" not in names and "uq_summary.json" in names
    a = np.load(p2 / "uq_uncertainty.npz")
    assert "nll_raw" not in a.files and "emitter_gt" not in a.files
    assert float(a["camera_alpha"]) == 0.0
    assert model.training  # mode restored


def test_plot_metrics_writes_a_png(trained, tmp_path):
    ckpt, _, _ = trained
    m = read_metrics_csv(ckpt / "metrics.csv")
    assert list(m["epoch"]) == [1.0, 2.0] and "val_raw_cov95" in m
    assert main(["plot-metrics", str(ckpt / "metrics.csv"), "--out", str(tmp_path / "m.png")]) == 0
    with Image.open(tmp_path / "m.png") as im:
        assert im.format == "PNG" and im.size[0] > 100


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "no such file"),
        ("", "empty"),
        ("epoch,train_loss\n", "no rows"),
        ("step,loss\n1,2\n", "no 'epoch' column"),
        ("epoch,train_loss\n1,abc\n", "not a number"),
        ("epoch,train_loss\n1,2,3\n", "more values"),
    ],
)
def test_plot_metrics_bad_csv(tmp_path, capsys, content, match):
    path = tmp_path / "metrics.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=match):
        plot_metrics_csv(path)
    assert main(["plot-metrics", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sim-uq plot-metrics: error:") and "Traceback" not in err
    assert not (tmp_path / "metrics.png").exists()


def test_metrics_with_empty_cells_are_nan(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,train_loss,val_raw_zms\n2,1.5,\n1,2.0,0.9\n")
    m = read_metrics_csv(path)
    assert list(m["epoch"]) == [1.0, 2.0]
    assert m["val_raw_zms"][0] == 0.9 and math.isnan(m["val_raw_zms"][1])
    assert Path(plot_metrics_csv(path)).name == "metrics.png"
