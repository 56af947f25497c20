"""`sim-uq train-vae` and `sim-uq posterior` end to end on a tiny VAE, the console
functions, and clear errors (nothing written) for bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from vae_helpers import write_clean_images

from napari_sim_uq.cli import main
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.io.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SIM_CHECKPOINT = ROOT / "example_data" / "sim_uq_demo_model.pt"
AE2D_CHECKPOINT = ROOT / "example_data" / "ae2d_demo_model.pt"


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vae")
    write_clean_images(root / "train", 3)
    write_clean_images(root / "val", 1, seed=50)
    argv = ["train-vae", "--data-dir", str(root / "train"), "--val-dir", str(root / "val")]
    tiny = ["--epochs", "2", "--batch-size", "4", "--patch", "16", "--latent-dim", "4"]
    tiny += ["--patches-per-image", "2", "--channels", "4", "--depth", "2", "--quiet"]
    assert main([*argv, "--out-dir", str(root / "ck"), *tiny]) == 0
    return root / "ck" / "latest.pt"


def test_train_vae_stores_sigma_model(tiny_vae):
    ck = load_checkpoint(tiny_vae)
    assert ck.model_type == "vae2d"
    assert ck.config["model"]["latent_dim"] == 4 and ck.config["model"]["patch"] == 16
    sigma = ck.extra["sigma_model"]
    assert 0 < sigma < 1  # RMS reconstruction error in normalised units
    rows = (tiny_vae.parent / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "val_recon_rmse" in rows[0]
    # the stored sigma_model is the last validation's reconstruction RMS
    last = dict(zip(rows[0].split(","), rows[-1].split(","), strict=True))
    assert sigma == pytest.approx(float(last["val_recon_rmse"]), rel=0.3)


def test_train_vae_resumes_with_its_decoder_std(tiny_vae, tmp_path):
    import shutil

    run_dir = tmp_path / "ck"
    shutil.copytree(tiny_vae.parent, run_dir)
    before = load_checkpoint(run_dir / "latest.pt")
    data = Path(before.config["train"]["data_dir"])
    argv = ["train-vae", "--data-dir", str(data), "--out-dir", str(run_dir), "--quiet"]
    tiny = ["--batch-size", "4", "--patch", "16", "--latent-dim", "4", "--patches-per-image"]
    tiny += ["2", "--channels", "4", "--depth", "2", "--val-dir", str(data.parent / "val")]
    assert main([*argv, *tiny, "--epochs", "3"]) == 2  # latest.pt exists: no silent restart
    # a decoder std far from its initial 0.1 in the stopped run's state: a resumed run
    # must continue from it (restored by the task's load_extra), not from 0.1
    before.extra = {**before.extra, "log_sigma_dec": math.log(0.5)}
    before.save(run_dir / "latest.pt")
    assert main([*argv, *tiny, "--epochs", "3", "--resume"]) == 0
    after = load_checkpoint(run_dir / "latest.pt")
    assert after.train_state["epoch"] == 3
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4
    sigma_dec = float(rows[-1].split(",")[rows[0].split(",").index("train_sigma_dec")])
    assert sigma_dec == pytest.approx(0.5, rel=0.05)
    assert "log_sigma_dec" in after.extra and after.extra["sigma_model"] > 0


def test_posterior_cli_writes_every_output(tiny_vae, tmp_path):
    rng = np.random.default_rng(0)
    from napari_sim_uq.tasks.sim.samples import image2d_clean

    clean = image2d_clean(seed=99, size=24)
    noisy = (clean + rng.normal(0, 20, clean.shape)).astype(np.float32)
    mask = np.ones(clean.shape, np.uint8)
    mask[5:12, 6:15] = 0
    tifffile.imwrite(tmp_path / "in.tif", noisy)
    tifffile.imwrite(tmp_path / "mask.tif", mask)
    out = tmp_path / "out"
    argv = ["posterior", "--checkpoint", str(tiny_vae), "--input", str(tmp_path / "in.tif")]
    argv += ["--mask", str(tmp_path / "mask.tif"), "--n-samples", "16", "--n-starts", "3"]
    argv += ["--overlap", "4", "--out-dir", str(out), "--quiet"]
    assert main(argv) == 0
    doc = json.loads((out / "posterior.json").read_text())
    assert doc["n_tiles"] == 4  # 24 px with patch 16, overlap 4: 2 x 2 tiles
    assert doc["mode_weights"] is None and len(doc["modes_per_tile"]) == 4
    assert doc["noise_sigma_estimated"] is True
    assert set(doc["timings"]) >= {"optimisation_s", "hessians_s", "sampling_s", "total_s"}
    samples = tifffile.imread(out / "samples.tif")
    assert samples.shape == (16, 24, 24)
    std = tifffile.imread(out / "posterior_std.tif")
    assert std[5:12, 6:15].mean() > std[mask == 1].mean()
    assert not (out / "modes.tif").exists()  # several tiles: no per-mode images
    assert (out / "summary.png").stat().st_size > 10_000
    # a second run refuses to overwrite; --overwrite replaces
    assert main(argv) == 2
    assert main([*argv, "--overwrite", "--n-samples", "4"]) == 0
    assert tifffile.imread(out / "samples.tif").shape == (4, 24, 24)


def test_single_patch_image_gives_modes_and_weights(tiny_vae, tmp_path):
    from napari_sim_uq.api import posterior_2d

    img = np.random.default_rng(1).random((12, 14)).astype(np.float32)
    img[2:5, 2:5] = np.nan
    layers = posterior_2d(img, tiny_vae, n_samples=8, n_starts=4, name="x")
    names = [kw["name"] for _, kw, _ in layers]
    assert names == ["x MAP", "x posterior mean", "x posterior std", "x samples", "x modes"]
    md = layers[-1][1]["metadata"]["sim_uq"]
    weights = md["reconstruction"]["mode_weights"]
    assert abs(sum(weights) - 1) < 1e-6 and len(weights) == layers[-1][0].shape[0]
    assert md["task"] == "vae2d"


@pytest.mark.parametrize(
    "checkpoint, message",
    [(SIM_CHECKPOINT, "train-vae"), (AE2D_CHECKPOINT, "train-vae")],
)
def test_another_tasks_checkpoint_is_refused(checkpoint, message, tmp_path):
    from napari_sim_uq.api import posterior_2d

    with pytest.raises(InputError, match=message):
        posterior_2d(np.zeros((16, 16), np.float32), checkpoint)
    tifffile.imwrite(tmp_path / "in.tif", np.zeros((16, 16), np.float32))
    out = tmp_path / "out"
    argv = ["posterior", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "in.tif")]
    assert main([*argv, "--out-dir", str(out), "--quiet"]) == 2
    assert not out.exists()


def test_bad_mask_and_missing_input_write_nothing(tiny_vae, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "in.tif", np.ones((20, 20), np.float32))
    tifffile.imwrite(tmp_path / "m.tif", np.ones((10, 20), np.uint8))
    tifffile.imwrite(tmp_path / "none.tif", np.zeros((20, 20), np.uint8))
    out = tmp_path / "out"
    base = ["posterior", "--checkpoint", str(tiny_vae), "--out-dir", str(out), "--quiet"]
    cases = [
        (["--input", str(tmp_path / "in.tif"), "--mask", str(tmp_path / "m.tif")], "mask"),
        (["--input", str(tmp_path / "in.tif"), "--mask", str(tmp_path / "none.tif")], "masked"),
        (["--input", str(tmp_path / "missing.tif")], "missing.tif"),
    ]
    for extra, word in cases:
        assert main([*base, *extra]) == 2
        assert word in capsys.readouterr().err
        assert not out.exists()
