"""The masked-autoencoder task end to end on tiny models: training (both blocks), resume,
inpainting (observed pixels kept, tiles, masks, NaN, random tokens), calibration, the CLI,
the console function and clear errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from mae_helpers import TINY_ARGS, write_clean_images

from napari_sim_uq.cli import main
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import run
from napari_sim_uq.core.io.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
VAE_CHECKPOINT = ROOT / "example_data" / "vae2d_demo_model.pt"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mae")
    write_clean_images(root / "train", 4)
    write_clean_images(root / "val", 2, seed=50)
    write_clean_images(root / "calib", 2, seed=80)
    write_clean_images(root / "test", 1, size=44, seed=90)
    return root


@pytest.fixture(scope="module")
def tiny_mae(data) -> Path:
    argv = ["train-mae", "--data-dir", str(data / "train"), "--val-dir", str(data / "val")]
    assert main([*argv, "--out-dir", str(data / "ck"), *TINY_ARGS]) == 0
    return data / "ck" / "latest.pt"


def test_train_mae_writes_checkpoint_and_metrics(tiny_mae):
    ck = load_checkpoint(tiny_mae)
    assert ck.model_type == "mae2d"
    m = ck.config["model"]
    assert (m["block"], m["img_size"], m["patch_size"], m["embed_dim"]) == ("vit", 16, 4, 16)
    assert ck.config["train"]["optimizer"] == "adamw" and ck.config["data"]["mask_ratio"] == 0.75
    rows = (tiny_mae.parent / "metrics.csv").read_text().splitlines()
    head = rows[0].split(",")
    assert len(rows) == 3 and "val_psnr_masked" in head
    last = dict(zip(head, rows[-1].split(","), strict=True))
    # PSNR of the hidden pixels is the validation MSE in dB (data range 1)
    assert float(last["val_psnr_masked"]) == pytest.approx(
        10 * math.log10(1 / float(last["val_mse_masked"])), rel=1e-6
    )


def test_resume_refuses_another_network(tiny_mae, tmp_path):
    run_dir = tmp_path / "ck"
    shutil.copytree(tiny_mae.parent, run_dir)
    data = load_checkpoint(tiny_mae).config["train"]["data_dir"]
    args = [
        a if a != "16" or i != TINY_ARGS.index("--embed-dim") + 1 else "24"
        for i, a in enumerate(TINY_ARGS)
    ]
    argv = ["train-mae", "--data-dir", data, "--out-dir", str(run_dir), "--resume"]
    assert main([*argv, *args]) == 2  # another embed_dim: refused, nothing overwritten
    assert (
        load_checkpoint(run_dir / "latest.pt").train_state == load_checkpoint(tiny_mae).train_state
    )


def test_energy_block_trains_without_nan(data, tmp_path):
    from napari_sim_uq.api import train_mae

    s = train_mae(
        data / "train", tmp_path / "e", block="energy", epochs=2, max_steps=3, batch_size=4,
        patch=16, patches_per_image=2, embed_dim=16, num_heads=2, warmup_steps=1,
        model={"head_dim": 4, "steps": 3},
    )  # fmt: skip
    assert s["steps"] == 3
    for row in s["history"]:
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))
    ck = load_checkpoint(Path(s["latest"]))
    assert ck.config["model"]["block"] == "energy" and ck.config["model"]["steps"] == 3
    # the block's defaults come from the source documents unless overridden
    assert ck.config["train"]["lr"] == 5e-5


def test_masked_loss_scores_hidden_tokens_only():
    from napari_sim_uq.tasks.mae2d.train import masked_token_loss

    target = torch.zeros(2, 4, 16)
    pred = torch.zeros(2, 4, 16)
    visible = torch.tensor([[True, False, True, False], [False, False, True, True]])
    pred[visible] = 100.0  # errors on visible tokens: ignored
    pred[0, 1] = 2.0  # one hidden token with error 2 per pixel
    loss, mse = masked_token_loss(pred, target, visible)
    assert float(mse) == pytest.approx(4.0 / 4)  # 4 hidden tokens, one with MSE 4
    # loss_norm="patch": divided by the token's variance + 0.01 (here 0.01)
    loss_p, _ = masked_token_loss(pred, target, visible, "patch")
    assert float(loss_p) == pytest.approx(1.0 / 0.01)


def _model(path):
    from napari_sim_uq.tasks.mae2d.inpaint import load_mae_model

    return load_mae_model(path)


def test_random_token_mask_fraction_and_grid():
    from napari_sim_uq.tasks.mae2d.inpaint import random_token_mask

    m = random_token_mask((42, 30), 4, 0.75, seed=3)
    assert m.shape == (42, 30)
    grid = m[::4, ::4]  # one pixel per token (11 x 8 tokens, partial ones included)
    assert grid.size == 88 and grid.sum() == round(0.75 * 88)
    # every token is all hidden or all shown
    full = np.kron(grid, np.ones((4, 4), bool))[:42, :30]
    np.testing.assert_array_equal(m, full)


def test_inpaint_keeps_observed_pixels_and_fills_missing(tiny_mae, data):
    from napari_sim_uq.tasks.mae2d.inpaint import inpaint_2d

    model, ck = _model(tiny_mae)
    img = tifffile.imread(data / "test" / "im_0.tif").astype(np.float32)  # 44 x 44: 4 tiles
    mask = np.ones_like(img, bool)
    mask[10:30, 5:25] = False
    img_nan = img.copy()
    img_nan[40:, :3] = np.nan  # NaN pixels are missing too
    pred = run(inpaint_2d(model, ck, img_nan, mask=mask, num_samples=6, seed=1))
    a = pred.arrays
    observed = mask & np.isfinite(img_nan)
    assert set(a) == {"inpainted", "std", "masked_input"}
    np.testing.assert_array_equal(a["inpainted"][observed], img[observed])
    assert np.isnan(a["masked_input"][~observed]).all()
    assert np.isfinite(a["inpainted"]).all()
    assert (a["std"][~observed] > 0).all() and np.isfinite(a["std"][~observed]).all()
    assert pred.meta["n_missing"] == int((~observed).sum())
    assert pred.meta["tiles"] == 16  # tiles of 16 at 0, 12, 24, 28 (overlap 4) per axis
    # the fill is of the image's scale (the normalisation is undone)
    lo, hi = np.percentile(img, [0, 100])
    fill = a["inpainted"][~observed]
    assert lo - 0.5 * (hi - lo) < fill.mean() < hi + 0.5 * (hi - lo)
    # the same seed gives the same result; one pass gives no std
    again = run(inpaint_2d(model, ck, img_nan, mask=mask, num_samples=6, seed=1))
    np.testing.assert_allclose(again.arrays["inpainted"], a["inpainted"], rtol=1e-5, atol=1e-3)
    one = run(inpaint_2d(model, ck, img, mask=mask, num_samples=1))
    assert "std" not in one.arrays


def test_std_is_the_spread_of_the_passes(tiny_mae):
    """The std is the spread of the passes: passes that differ in nothing (no extra hidden
    tokens, dropout off) give a std of 0 up to rounding, and decoder dropout alone gives a
    positive one."""
    from napari_sim_uq.tasks.mae2d.inpaint import inpaint_2d

    model, ck = _model(tiny_mae)
    img = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    mask = np.ones((16, 16), bool)
    mask[4:12, 4:12] = False
    pred = run(inpaint_2d(model, ck, img, mask=mask, num_samples=4, drop_visible=0.0))
    # the tiny model has no dropout left active (dropout 0.1 in the decoder): passes differ
    # only by dropout; compare with dropout off
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    still = run(inpaint_2d(model, ck, img, mask=mask, num_samples=4, drop_visible=0.0))
    assert float(np.nanmax(still.arrays["std"][~mask])) < 1e-5 * float(img.max())
    assert float(pred.arrays["std"][~mask].mean()) > 0


def test_augment_makes_the_mean_equivariant_to_rotations_and_reflections(tiny_mae):
    """``augment=True`` averages the deterministic pass over the 8 symmetries of the tile:
    the reconstruction of a rotated / reflected image (and mask) is then the rotated /
    reflected reconstruction, which the plain pass is not (its positions are fixed)."""
    from napari_sim_uq.tasks.mae2d.inpaint import inpaint_2d, random_token_mask

    model, ck = _model(tiny_mae)
    img = np.random.default_rng(3).random((16, 16)).astype(np.float32)
    observed = ~random_token_mask((16, 16), 4, 0.5, seed=4)

    def mean(im, obs, augment):
        pred = run(inpaint_2d(model, ck, im, mask=obs, num_samples=1, augment=augment))
        return pred.arrays["inpainted"]

    base = mean(img, observed, True)
    for t in (np.rot90, lambda a: np.rot90(a, 2), np.fliplr, lambda a: np.rot90(a).T):
        moved = mean(np.ascontiguousarray(t(img)), np.ascontiguousarray(t(observed)), True)
        np.testing.assert_allclose(moved, t(base), rtol=1e-4, atol=1e-5)
    plain = mean(img, observed, False)
    turned = mean(
        np.ascontiguousarray(np.rot90(img)), np.ascontiguousarray(np.rot90(observed)), False
    )
    assert np.abs(turned - np.rot90(plain)).max() > 1e-3
    # observed pixels are kept; the averaged mean differs from the plain one where hidden
    np.testing.assert_array_equal(base[observed], img[observed])
    assert np.abs(base - plain)[~observed].max() > 1e-4
    with pytest.raises(InputError, match="augment"):
        run(inpaint_2d(model, ck, img, mask=observed, augment="yes"))


def test_inpaint_errors(tiny_mae):
    from napari_sim_uq.tasks.mae2d.inpaint import inpaint_2d

    model, ck = _model(tiny_mae)
    img = np.ones((20, 20), np.float32)
    with pytest.raises(InputError, match="mask has shape"):
        run(inpaint_2d(model, ck, img, mask=np.ones((10, 10))))
    with pytest.raises(InputError, match="nothing is observed"):
        run(inpaint_2d(model, ck, np.full((20, 20), np.nan)))
    with pytest.raises(InputError, match="mask_ratio"):
        run(inpaint_2d(model, ck, img, mask_ratio=1.0))
    with pytest.raises(InputError, match="overlap"):
        run(inpaint_2d(model, ck, img, overlap=3))
    with pytest.raises(InputError, match="num_samples"):
        run(inpaint_2d(model, ck, img, num_samples=0))


def test_calibrate_mae_fits_the_scale_that_makes_zms_one(tiny_mae, data, tmp_path):
    from napari_sim_uq.tasks.mae2d.calibrate import calibrate_mae_job, hidden_pixel_residuals

    path = tmp_path / "m.pt"
    shutil.copy(tiny_mae, path)
    t = run(calibrate_mae_job(path, data / "calib", num_samples=4, seed=2, method="scale"))
    s = t["sigma_scale"]["mean"]
    assert load_checkpoint(path).sigma_scale["mean"] == pytest.approx(s)
    assert t["sigma_map"] is None and not (load_checkpoint(path).extra or {}).get("sigma_map")
    # after: ZMS = 1 on the calibration pixels (closed form of the fitted scale)
    assert t["after"]["pooled"]["zms"] == pytest.approx(1.0, rel=1e-6)
    assert t["before"]["pooled"]["zms"] == pytest.approx(s * s, rel=1e-6)
    # the stored scale is applied at inference: the same residuals with the calibrated std
    model, ck = _model(path)
    clean = tifffile.imread(data / "calib" / "im_0.tif").astype(np.float32)
    opts = dict(mask_ratio=0.75, num_samples=4, seed=11)
    r, s_cal, _, _ = run(hidden_pixel_residuals(model, ck, clean, **opts))
    _, s_raw, _, _ = run(hidden_pixel_residuals(model, ck, clean, calibrated=False, **opts))
    np.testing.assert_allclose(s_cal, s * s_raw, rtol=1e-4)
    # calibrating again gives the same scale (the model's own std is used)
    t2 = run(calibrate_mae_job(path, data / "calib", num_samples=4, seed=2, method="scale"))
    assert t2["sigma_scale"]["mean"] == pytest.approx(s, rel=1e-5)


def test_calibrate_mae_map_intensity_is_stored_and_applied(tiny_mae, data, tmp_path):
    """The default calibration: the scale, then a monotone map of the std per class of the
    predicted intensity, stored in the checkpoint; inpainting applies exactly that map
    (the per-pixel factor of the scaled std and the predicted intensity); calibrating with
    method 'scale' afterwards removes it. (The map itself is tested against known
    miscalibration in tests/test_calibrate_core.py.)"""
    from napari_sim_uq.core.uq.calibrate import ClassSigmaMap, sigma_map_ratio, stored_sigma_map
    from napari_sim_uq.tasks.mae2d.calibrate import calibrate_mae_job, hidden_pixel_residuals

    path = tmp_path / "m.pt"
    shutil.copy(tiny_mae, path)
    t = run(calibrate_mae_job(path, data / "calib", num_samples=4, seed=2, n_bins=4, n_classes=3))
    assert t["method"] == "map-intensity"
    smap = stored_sigma_map(load_checkpoint(path), "mean")
    assert isinstance(smap, ClassSigmaMap) and len(smap.maps) == 3
    assert t["sigma_map"] == smap.to_dict()
    # the reported "after" table is the stored map applied to the calibration pixels
    assert t["after"]["pooled"]["n"] == t["after_scale_only"]["pooled"]["n"] == t["n_pixels"]
    # inference applies scale and map: recomputed from the model's own std
    model, ck = _model(path)
    s = ck.sigma_scale["mean"]
    clean = tifffile.imread(data / "calib" / "im_1.tif").astype(np.float32)
    opts = dict(mask_ratio=0.75, num_samples=4, seed=11)
    _, s_cal, _, m = run(hidden_pixel_residuals(model, ck, clean, **opts))
    _, s_raw, _, _ = run(hidden_pixel_residuals(model, ck, clean, calibrated=False, **opts))
    expect = s * s_raw * sigma_map_ratio(smap, s * s_raw, m)
    np.testing.assert_allclose(s_cal, expect, rtol=1e-3)
    assert not np.allclose(s_cal, s * s_raw, rtol=1e-3)  # the map changed something
    # 'scale' removes the map; the CLI's default stores one again
    run(calibrate_mae_job(path, data / "calib", num_samples=4, seed=2, method="scale"))
    assert stored_sigma_map(load_checkpoint(path), "mean") is None
    argv = ["calibrate-mae", "--checkpoint", str(path), "--data-dir", str(data / "calib")]
    assert main([*argv, "--num-samples", "4", "--n-bins", "4", "--n-classes", "2", "--quiet"]) == 0
    assert len(stored_sigma_map(load_checkpoint(path), "mean").maps) == 2
    with pytest.raises(InputError, match="method must be one of"):
        run(calibrate_mae_job(path, data / "calib", method="isotonic"))


def test_cli_inpaint_files_and_metrics(tiny_mae, data, tmp_path):
    out = tmp_path / "o"
    argv = ["inpaint", "--checkpoint", str(tiny_mae), "--input", str(data / "test" / "im_0.tif")]
    argv += ["--mask-ratio", "0.75", "--num-samples", "4", "--baseline", "--out-dir", str(out)]
    assert main([*argv, "--quiet"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"inpainted.tif", "std.tif", "masked_input.tif", "panels.png", "metrics.json"} <= names
    doc = json.loads((out / "metrics.json").read_text())
    m = doc["metrics"]
    # the metrics of the hidden pixels, recomputed from the written files
    truth = tifffile.imread(data / "test" / "im_0.tif").astype(np.float64)
    inp = tifffile.imread(out / "inpainted.tif").astype(np.float64)
    hidden = np.isnan(tifffile.imread(out / "masked_input.tif"))
    assert hidden.mean() == pytest.approx(0.75, abs=0.05)
    # units: the true image's 0.1-99.9 percentile range is 1
    lo, hi = np.percentile(truth, [0.1, 99.9])
    mse = np.mean(((inp - truth)[hidden] / (hi - lo)) ** 2)
    assert m["psnr_missing"] == pytest.approx(10 * np.log10(1 / mse), abs=0.05)
    assert math.isfinite(m["psnr_missing_biharmonic"]) and 0 < m["coverage95_missing"] <= 1
    # no silent overwrite; --mask and --mask-ratio exclude each other
    assert main([*argv, "--quiet"]) == 2
    with pytest.raises(SystemExit):
        main([*argv, "--mask", str(data / "test" / "im_0.tif"), "--overwrite", "--quiet"])


def test_cli_errors_are_one_line(tiny_mae, data, tmp_path, capsys):
    base = ["inpaint", "--input", str(data / "test" / "im_0.tif"), "--out-dir", str(tmp_path)]
    assert main([*base, "--checkpoint", str(tmp_path / "nope.pt"), "--quiet"]) == 2
    assert main([*base, "--checkpoint", str(VAE_CHECKPOINT), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "train-mae" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.tif"))


def test_console_inpaint_2d_layers(tiny_mae, data):
    from napari_sim_uq.api import inpaint_2d

    img = tifffile.imread(data / "test" / "im_0.tif")
    layers = inpaint_2d(img, tiny_mae, mask_ratio=0.5, num_samples=3, name="cells")
    names = [kw["name"] for _, kw, _ in layers]
    assert names == ["cells inpainted", "cells MAE std", "cells masked input"]
    meta = layers[0][1]["metadata"]
    assert "psnr_missing" in json.dumps(meta, default=str)
