"""`sim-uq evaluate` / `sim-uq calibrate`: metrics checked against independent computations."""

import json
import shutil

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from napari_sim_uq.cli import main
from napari_sim_uq.core.errors import FileFormatError, InputError
from napari_sim_uq.core.events import run
from napari_sim_uq.core.io.checkpoint import load_checkpoint, update_sigma_scale
from napari_sim_uq.core.uq.metrics import calibration_report
from napari_sim_uq.tasks.sim.evaluate import calibrate_sim_job, evaluate_sim_job, widefield_baseline
from napari_sim_uq.tasks.sim.reconstruct import reconstruct_sim_job
from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_dataset
from napari_sim_uq.tasks.sim.train import TrainConfig, train_sim_job

F = 2  # hr_factor


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval")
    d = root / "d"
    cfg = SynthConfig(lr_size=(16, 16), hr_factor=F)
    for seed, split in enumerate(("train", "val", "test")):
        run(generate_dataset(d, 3, cfg, seed=seed, split=split, workers=1))
    # a split without ground truth: the test stacks alone
    shutil.copytree(d / "test", d / "unl")
    tc = TrainConfig(
        train_glob=str(d / "train" / "*.tif"),
        ckpt_dir=str(root / "ck"),
        epochs=1,
        batch_size=3,
        device="cpu",
        max_steps=2,
        model={"base_channels": 4, "depth": 1, "psf_size": 5, "hr_factor": F},
    )
    run(train_sim_job(tc))
    yield {"root": root, "data": d, "ckpt": root / "ck" / "best.pt"}
    torch.set_num_threads(n_threads)


def _copy_ckpt(setup, tmp_path, name="c.pt"):
    dst = tmp_path / name
    shutil.copy(setup["ckpt"], dst)
    return dst


def _evaluate(ckpt, data, split, out=None, **kw):
    return run(evaluate_sim_job(ckpt, data, split, out, device="cpu", **kw))


def _calibrate(ckpt, data, split="val", **kw):
    return run(calibrate_sim_job(ckpt, data, split, device="cpu", **kw))


def _camera(ckpt):
    """alpha, beta and the variance floor straight from the checkpoint's stored state."""
    ck = load_checkpoint(ckpt)
    st = ck.extra["loss_state"]
    sp = torch.nn.functional.softplus
    return float(sp(st["camera.a"])), float(sp(st["camera.c"])), ck.config["loss"]["var_floor"]


# --------------------------------------------------------------------------- metrics.json


def test_metrics_json_matches_an_independent_recomputation(setup, tmp_path):
    d, ckpt = setup["data"], setup["ckpt"]
    doc = _evaluate(ckpt, d, "test", tmp_path / "o")
    on_disk = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert on_disk == doc
    assert (tmp_path / "o" / "calibration_curves.png").stat().st_size > 1000
    assert doc["ground_truth"] and doc["n_samples"] == 3
    assert doc["samples"] == ["sample_00000", "sample_00001", "sample_00002"]
    assert doc["sigma_scale"]["applied"] == {"emitter": 1.0, "lp": 1.0, "raw": 1.0}

    alpha, beta, floor = _camera(ckpt)
    psnr_e, psnr_wf, ssim_e = [], [], []
    raw_r, raw_s, em_r, em_s = [], [], [], []
    for i, name in enumerate(doc["samples"]):
        raw = tifffile.imread(d / "test" / f"{name}.tif").astype(np.float64)
        gt = tifffile.imread(d / "test_gt" / f"{name}.tif").astype(np.float64)
        rec = run(reconstruct_sim_job(d / "test" / f"{name}.tif", ckpt, device="cpu")).arrays
        em = rec["emitter"].astype(np.float64)  # input (photon) units
        dr = gt.max() - gt.min()
        psnr_e.append(peak_signal_noise_ratio(gt, em, data_range=dr))
        ssim_e.append(structural_similarity(gt, em, data_range=dr))
        # widefield: frame mean, cubic spline to the HR grid, affine fit to the GT
        wf = ndimage.zoom(raw.mean(0), F, order=3, grid_mode=True, mode="nearest")
        a, b = np.polyfit(wf.ravel(), gt.ravel(), 1)
        psnr_wf.append(peak_signal_noise_ratio(gt, a * wf + b, data_range=dr))
        row = doc["per_sample"][i]
        assert row["name"] == name
        assert row["emitter"]["data_range"] == pytest.approx(dr, rel=1e-6)
        assert row["emitter"]["psnr"] == pytest.approx(psnr_e[-1], abs=1e-4)
        assert row["emitter"]["ssim"] == pytest.approx(ssim_e[-1], abs=1e-5)
        assert row["widefield"]["psnr"] == pytest.approx(psnr_wf[-1], abs=1e-6)
        # raw-frame predictive sigma: model part + camera noise + floor (normalised units)
        lo, hi = np.percentile(raw, [0.1, 99.9])
        y_n = (rec["rec"].astype(np.float64) - lo) / (hi - lo)
        var_n = (rec["rec_std"].astype(np.float64) / (hi - lo)) ** 2
        var_n += alpha * np.maximum(y_n, 0) + beta + floor
        raw_r.append((raw - lo) / (hi - lo) - y_n)
        raw_s.append(np.sqrt(var_n))
        em_r.append(gt - em)
        em_s.append(rec["emitter_std"].astype(np.float64))
    iq = doc["image_quality"]
    assert iq["emitter"]["psnr"] == pytest.approx(np.mean(psnr_e), abs=1e-4)
    assert iq["emitter"]["ssim"] == pytest.approx(np.mean(ssim_e), abs=1e-5)
    assert iq["widefield"]["psnr"] == pytest.approx(np.mean(psnr_wf), abs=1e-6)
    assert iq["emitter_psnr_gain_over_widefield_db"] == pytest.approx(
        np.mean(psnr_e) - np.mean(psnr_wf), abs=1e-4
    )
    # ZMS and coverage are per-pixel ratios: the same in photons and in normalised units
    for q, rs, ss in (("raw", raw_r, raw_s), ("emitter", em_r, em_s)):
        r, s = np.concatenate([a.ravel() for a in rs]), np.concatenate([a.ravel() for a in ss])
        ref = calibration_report(r, np.zeros_like(r), s)
        cal = doc["calibration"][q]
        assert cal["n"] == r.size and cal["n_excluded"] == 0
        assert cal["zms"] == pytest.approx(ref["zms"], rel=1e-4)
        assert cal["cov68"] == pytest.approx(ref["cov68"], abs=2 / r.size)
        assert cal["cov95"] == pytest.approx(ref["cov95"], abs=2 / r.size)
        assert cal["unscaled"]["zms"] == pytest.approx(cal["zms"])
    for q in ("emitter", "lp", "raw"):
        cal = doc["calibration"][q]
        for k in ("spearman", "uce", "mace", "ause", "calib_ratio", "nll"):
            assert np.isfinite(cal[k]), (q, k)
        assert len(cal["curve"]["mse"]) == 20


def test_widefield_upsampling_keeps_pixel_centres_aligned():
    ramp = np.tile(np.arange(30, dtype=np.float64), (9, 8, 1))  # LR pixel i has value i
    up = widefield_baseline(ramp, 3)
    assert up.shape == (24, 90)
    # HR pixel j has its centre at (j + 0.5) / 3 LR pixels, where the ramp is that - 0.5
    # (away from the border, where the image is extended by replicating its edge pixels)
    expected = (np.arange(90) + 0.5) / 3 - 0.5
    np.testing.assert_allclose(up[5, 30:60], expected[30:60], atol=1e-5)
    np.testing.assert_allclose(widefield_baseline(np.full((9, 4, 4), 7.0), 2), 7.0, rtol=1e-12)


# --------------------------------------------------------------------------- calibrate


def test_calibrate_gives_unit_zms_and_is_relative_to_the_raw_sigma(setup, tmp_path):
    d = setup["data"]
    a = _copy_ckpt(setup, tmp_path, "a.pt")
    before = load_checkpoint(a)
    res = _calibrate(a, d)
    assert set(res["fitted"]) == {"emitter", "lp", "raw"}
    after = load_checkpoint(a)
    for q, s in res["fitted"].items():
        assert after.sigma_scale[q] == pytest.approx(s, rel=1e-12)
        # "before" used the old scale (1), "after" the new one: ZMS = 1 in closed form
        assert res["before"][q]["zms"] == pytest.approx(s * s, rel=1e-9)
        assert res["after"][q]["zms"] == pytest.approx(1.0, abs=1e-9)
    # nothing but the sigma scale changed
    assert after.config_hash == before.config_hash
    assert after.optimizer_state is not None and "loss_state" in after.extra
    for k, v in before.model_state.items():
        assert torch.equal(v, after.model_state[k])

    # evaluating on the SAME split with the stored scales gives ZMS 1
    doc = _evaluate(a, d, "val")
    for q in ("emitter", "lp", "raw"):
        cal = doc["calibration"][q]
        assert cal["sigma_scale_applied"] == pytest.approx(res["fitted"][q])
        assert cal["zms"] == pytest.approx(1.0, abs=1e-3)
        assert cal["unscaled"]["zms"] == pytest.approx(res["fitted"][q] ** 2, rel=1e-6)

    # a checkpoint that already has other scales gets the same fit (relative to raw sigma)
    b = _copy_ckpt(setup, tmp_path, "b.pt")
    update_sigma_scale(b, {"emitter": 3.0, "lp": 0.5, "raw": 2.0, "psf": 1.7})
    res_b = _calibrate(b, d)
    for q, s in res["fitted"].items():
        # another model run (its own load of the weights): equal up to float32 rounding of the
        # model outputs (issue 11); a stored scale leaking into the fit would be a factor 0.5-3
        assert res_b["fitted"][q] == pytest.approx(s, rel=1e-6)
    assert res_b["before"]["emitter"]["zms"] == pytest.approx(res["fitted"]["emitter"] ** 2 / 9)
    stored = load_checkpoint(b).sigma_scale
    assert stored["psf"] == 1.7  # scales it does not fit are kept
    assert stored["raw"] == pytest.approx(res["fitted"]["raw"])


def test_calibrate_out_writes_a_copy_and_never_overwrites(setup, tmp_path):
    d = setup["data"]
    src = _copy_ckpt(setup, tmp_path)
    out = tmp_path / "calibrated.pt"
    res = _calibrate(src, d, quantities=["raw"], max_samples=2)
    assert set(res["fitted"]) == {"raw"} and res["n_samples"] == 2
    src_scale = load_checkpoint(src).sigma_scale
    res2 = _calibrate(src, d, quantities="raw", max_samples=2, out=out)
    assert res2["written"] == str(out)
    assert load_checkpoint(out).sigma_scale == src_scale  # same fit, same scales
    before = src.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        _calibrate(src, d, out=out)
    assert src.read_bytes() == before


# --------------------------------------------------------------------------- refusals, errors


def test_evaluate_refuses_to_overwrite(setup, tmp_path):
    d, ckpt = setup["data"], setup["ckpt"]
    out = tmp_path / "o"
    _evaluate(ckpt, d, "test", out, max_samples=1)
    text = (out / "metrics.json").read_text()
    with pytest.raises(FileExistsError, match="metrics.json"):
        _evaluate(ckpt, d, "test", out, max_samples=2)
    assert (out / "metrics.json").read_text() == text
    doc = _evaluate(ckpt, d, "test", out, max_samples=2, overwrite=True)
    assert doc["n_samples"] == 2 == json.loads((out / "metrics.json").read_text())["n_samples"]


def test_without_ground_truth_only_raw_is_evaluated_and_fitted(setup, tmp_path):
    d = setup["data"]
    ckpt = _copy_ckpt(setup, tmp_path)
    doc = _evaluate(ckpt, d, "unl", tmp_path / "o")
    assert doc["ground_truth"] is False and doc["image_quality"] == {}
    assert doc["calibration"]["raw"]["available"] is True
    assert doc["calibration"]["emitter"]["available"] is False
    assert "no ground truth" in doc["calibration"]["emitter"]["reason"]
    assert any("only the raw-frame calibration" in n for n in doc["notes"])
    # the raw calibration is that of the same stacks with ground truth
    ref = _evaluate(ckpt, d, "test")
    assert doc["calibration"]["raw"]["zms"] == pytest.approx(ref["calibration"]["raw"]["zms"])

    res = _calibrate(ckpt, d, "unl")
    assert set(res["fitted"]) == {"raw"}
    assert any("emitter not fitted" in n for n in res["notes"])
    with pytest.raises(InputError, match="no ground truth"):
        _calibrate(ckpt, d, "unl", quantities=["emitter", "raw"])


def test_clear_errors(setup, tmp_path):
    d, ckpt = setup["data"], setup["ckpt"]
    with pytest.raises(InputError, match="no split 'nope'.*splits found: .*test"):
        _evaluate(ckpt, d, "nope")
    with pytest.raises(InputError, match="does not exist"):
        _evaluate(ckpt, tmp_path / "missing", "test")
    (d / "empty").mkdir(exist_ok=True)
    with pytest.raises(InputError, match="no raw stacks"):
        _evaluate(ckpt, d, "empty")
    bad = tmp_path / "bad"
    (bad / "test").mkdir(parents=True)
    tifffile.imwrite(bad / "test" / "s.tif", np.random.default_rng(0).random((4, 16, 16)))
    with pytest.raises(InputError, match="frames"):
        _evaluate(ckpt, bad, "test")
    # ground-truth folder present but one file missing
    partial = tmp_path / "partial"
    shutil.copytree(d / "test", partial / "test")
    shutil.copytree(d / "test_gt", partial / "test_gt")
    (partial / "test_gt" / "sample_00001_lp.tif").unlink()
    with pytest.raises(InputError, match="sample_00001_lp"):
        _evaluate(ckpt, partial, "test")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(ckpt.read_bytes()[:5000])
    with pytest.raises(FileFormatError):
        _evaluate(broken, d, "test")
    with pytest.raises(InputError, match="max_samples"):
        _evaluate(ckpt, d, "test", max_samples=0)
    with pytest.raises(InputError, match="quantities"):
        _calibrate(ckpt, d, quantities=["psf"])


# --------------------------------------------------------------------------- CLI


def test_cli_evaluate_and_calibrate(setup, tmp_path, capsys):
    d = setup["data"]
    ckpt = _copy_ckpt(setup, tmp_path)
    common = ["--checkpoint", str(ckpt), "--data-dir", str(d), "--device", "cpu", "--quiet"]
    rc = main(["evaluate", *common, "--out-dir", str(tmp_path / "o"), "--mc-samples", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    for word in ("PSNR", "emitter", "widefield", "raw", "metrics:"):
        assert word in out
    doc = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert doc["mc_samples"] == 2 and doc["split"] == "test"

    rc = main(["evaluate", *common, "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("sim-uq evaluate: error: not overwriting")

    rc = main(["evaluate", *common, "--split", "nope", "--out-dir", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no split 'nope'" in err

    rc = main(["calibrate", *common, "--max-samples", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "ZMS after" in out and f"stored in {ckpt}" in out
    assert set(load_checkpoint(ckpt).sigma_scale) >= {"emitter", "lp", "raw"}

    rc = main(["calibrate", *common, "--out", str(ckpt)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "already exists" in err

    rc = main(["calibrate", *common, "--split", "unl", "--quantities", "emitter"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no ground truth" in err


# --------------------------------------------------------------------------- issue 15


def test_calibrate_stores_the_emitter_map_and_evaluate_applies_it(setup, tmp_path):
    """The stored map is what evaluate applies: its emitter ZMS equals a recomputation
    from predict_sim, the stored scale and the stored map (core classes only)."""
    from napari_sim_uq.core.uq.calibrate import sigma_map_from_dict
    from napari_sim_uq.tasks.sim.calibration import relative_intensity
    from napari_sim_uq.tasks.sim.dataset import SimStackDataset
    from napari_sim_uq.tasks.sim.predict import predict_sim_sync
    from napari_sim_uq.tasks.sim.reconstruct import load_sim_model

    d = setup["data"]
    a = _copy_ckpt(setup, tmp_path, "a.pt")
    res = _calibrate(a, d, method="map-intensity")
    ck = load_checkpoint(a)
    assert set(ck.extra["sigma_map"]) == {"emitter"}
    assert res["sigma_map"]["emitter"] == ck.extra["sigma_map"]["emitter"]
    # 3 calibration stacks are too few for a self-check reference (MIN_REFERENCE_STACKS)
    assert res["self_check_reference"] is None and "self_check" not in ck.extra
    assert {"scale_only", "map"} <= set(res["emitter_conditional"])

    doc = _evaluate(a, d, "test")
    em = doc["calibration"]["emitter"]
    assert em["sigma_map_applied"] == "per-class sigma map"
    assert len(em["by_std_decile"]) == 10
    assert {"background", "structure", "dim", "mid", "bright"} == set(em["by_intensity"])
    bi = em["by_intensity"]
    assert bi["background"]["n"] + bi["structure"]["n"] == em["subset_pixels"]

    smap = sigma_map_from_dict(ck.extra["sigma_map"]["emitter"])
    s_e = ck.sigma_scale["emitter"]
    model, ck2 = load_sim_model(a, "cpu")
    ds = SimStackDataset(
        str(d / "test"), supervised=True, expected_frames=9, hr_factor=F, cache=False
    )
    num, n = 0.0, 0
    for i in range(len(ds)):
        item = ds[i]
        p = predict_sim_sync(model, item["x"].numpy(), device="cpu")
        sig = s_e * p.emitter_std.astype(np.float64)
        cal = smap(sig, relative_intensity(p.emitter))
        r = item["emitter_gt"].numpy()[0] - p.emitter
        num += float(np.sum((r / cal) ** 2))
        n += r.size
    assert em["zms"] == pytest.approx(num / n, rel=1e-4)
    # the scale-only numbers are reported next to it
    assert len(em["scale_only"]["by_std_decile"]) == 10 and em["scale_only"]["zms"] > 0

    # method "scale" removes the map again; evaluate then reports no map
    _calibrate(a, d, method="scale")
    assert "sigma_map" not in load_checkpoint(a).extra
    assert _evaluate(a, d, "test")["calibration"]["emitter"]["sigma_map_applied"] is None
    with pytest.raises(InputError, match="method"):
        _calibrate(a, d, method="isotonic")


def test_self_check_in_evaluate_and_reconstruct(setup, tmp_path):
    d = setup["data"]
    a = _copy_ckpt(setup, tmp_path, "a.pt")
    _calibrate(a, d)
    doc = _evaluate(a, d, "test")
    sc = doc["self_check"]
    assert sc["n_stacks"] == doc["n_samples"]
    assert sc["n_flagged"] == sum(not r["self_check"]["ok"] for r in doc["per_sample"])
    assert "default range" in sc["reference"]  # no reference from 3 calibration stacks
    # the raw ZMS of the self-check is the per-stack raw ZMS with the stored scale
    for row in doc["per_sample"]:
        s_raw = load_checkpoint(a).sigma_scale["raw"]
        assert row["self_check"]["raw_zms"] == pytest.approx(
            row["zms_unscaled"]["raw"] / s_raw**2, rel=1e-6
        )
    stack = sorted((d / "test").glob("*.tif"))[0]
    rec = run(reconstruct_sim_job(stack, a, device="cpu", mc_samples=3))
    check = rec.metadata["self_check"]
    assert check["raw_zms"] > 0 and isinstance(check["ok"], bool) and check["message"]
    # MC dropout: the emitter std parts are outputs too, and add up in quadrature
    al, ep = rec.arrays["emitter_aleatoric_std"], rec.arrays["emitter_epistemic_std"]
    tot = rec.arrays["emitter_std"]
    assert np.sqrt(al.astype(np.float64) ** 2 + ep**2) == pytest.approx(tot, rel=1e-4, abs=1e-7)
    rec0 = run(reconstruct_sim_job(stack, a, device="cpu"))
    assert "emitter_epistemic_std" not in rec0.arrays


def test_cli_evaluates_several_splits(setup, tmp_path, capsys):
    d = setup["data"]
    ckpt = _copy_ckpt(setup, tmp_path)
    common = ["--checkpoint", str(ckpt), "--data-dir", str(d), "--device", "cpu", "--quiet"]
    rc = main(["calibrate", *common, "--method", "map"])
    out = capsys.readouterr().out
    assert rc == 0 and "emitter sigma map stored" in out and "ZMS per std decile" in out
    rc = main(["evaluate", *common, "--split", "test", "val", "--out-dir", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert rc == 0
    for split in ("test", "val"):
        doc = json.loads((tmp_path / "o" / split / "metrics.json").read_text())
        assert doc["split"] == split
        assert doc["calibration"]["emitter"]["sigma_map_applied"] == (
            "per-quantile isotonic sigma map"
        )
        assert f"{split}: 3 stacks" in out
    assert out.count("raw-domain self-check") == 2


def test_reconstruct_without_a_usable_camera_state_skips_only_the_self_check(setup, tmp_path):
    import dataclasses

    a = _copy_ckpt(setup, tmp_path, "a.pt")
    ck = load_checkpoint(a)
    extra = {**ck.extra, "loss_state": {"camera.nonsense": torch.zeros(3)}}
    dataclasses.replace(ck, extra=extra).save(a, overwrite=True)
    stack = sorted((setup["data"] / "test").glob("*.tif"))[0]
    rec = run(reconstruct_sim_job(stack, a, device="cpu"))
    assert rec.arrays["emitter"].shape == (32, 32)
    check = rec.metadata["self_check"]
    assert check["raw_zms"] is None and "not available" in check["message"]


def test_map_calibrated_with_mc_then_evaluated_without_an_emitter_std(setup, tmp_path):
    """A model without an emitter variance head, calibrated with MC dropout (so an emitter
    map is stored) and evaluated without: the emitter is reported unavailable once, with
    the reason, and nothing else breaks."""
    d = setup["data"]
    tc = TrainConfig(
        train_glob=str(d / "train" / "*.tif"),
        ckpt_dir=str(tmp_path / "ck"),
        epochs=1,
        batch_size=3,
        device="cpu",
        max_steps=1,
        model={
            "base_channels": 4,
            "depth": 1,
            "psf_size": 5,
            "hr_factor": F,
            "uq_targets": ["lp", "psf"],
        },
    )
    run(train_sim_job(tc))
    ck = tmp_path / "ck" / "best.pt"
    _calibrate(ck, d, mc_samples=2)
    assert "emitter" in load_checkpoint(ck).extra["sigma_map"]
    doc = _evaluate(ck, d, "test")
    em = doc["calibration"]["emitter"]
    assert em == {"available": False, "reason": em["reason"]} and "emitter" in em["reason"]
    assert not any("emitter_calibrated" in n for n in doc["notes"])
    assert sum(n.startswith("emitter:") for n in doc["notes"]) == 1
    assert doc["calibration"]["raw"]["available"]
