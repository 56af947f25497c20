"""The 2D commands of ``sim-uq``: the whole workflow, errors as one line, lazy imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_sim_uq.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

SIM_CHECKPOINT = Path(__file__).parents[2] / "example_data" / "sim_uq_demo_model.pt"


def test_help_of_2d_commands_imports_no_torch():
    code = (
        "import sys\n"
        "from napari_sim_uq.cli import main\n"
        "for argv in (['--version'], ['--help'], ['generate-2d', '--help'],"
        " ['calibrate-2d', '--help'], ['infer-2d', '--help'], ['anomaly', '--help'],"
        " ['demo-2d', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("generate-2d", "train-2d", "calibrate-2d", "infer-2d", "anomaly", "demo-2d"):
        assert name in out.stdout
    assert "--calib-method" in out.stdout and "--num-samples" in out.stdout


def test_train_2d_options_come_from_the_configs(capsys):
    with pytest.raises(SystemExit):
        main(["train-2d", "--help"])
    text = capsys.readouterr().out
    for flag in ("--data-dir", "--out-dir", "--epochs", "--degrade", "--model", "--arch"):
        assert flag in text
    assert "{mc-dropout,hetero}" in text and "{unet,conv-ae}" in text


def test_generate_2d_and_its_overwrite_refusal(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["generate-2d", "--out-dir", str(out), "--n-train", "2", "--n-val", "1"]
    args += ["--n-test", "2", "--size", "32", "--anomalies"]
    assert main(args) == 0
    assert "2 train, 1 val, 2 test" in capsys.readouterr().out
    abnormal = sorted((out / "anomaly" / "abnormal").glob("*.tif"))
    masks = sorted((out / "anomaly" / "masks").glob("*.tif"))
    assert len(abnormal) == 2 and len(masks) == 2
    for a, m, clean in zip(abnormal, masks, sorted((out / "test").glob("*.tif")), strict=True):
        ta, tm, tc = tifffile.imread(a), tifffile.imread(m), tifffile.imread(clean)
        assert ta.dtype == np.uint16 and tm.any()
        assert not np.array_equal(ta[tm > 0], tc[tm > 0])  # changed inside the mask
    before = abnormal[0].stat().st_mtime_ns
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not overwriting" in err and "Traceback" not in err
    assert abnormal[0].stat().st_mtime_ns == before


def test_sim_checkpoint_is_refused_by_the_2d_commands(tmp_path, capsys):
    data = tmp_path / "imgs"
    data.mkdir()
    tifffile.imwrite(data / "a.tif", np.random.default_rng(0).random((32, 32), np.float32))
    out = tmp_path / "out"
    for argv in (
        ["infer-2d", "--data-dir", str(data), "--checkpoint", str(SIM_CHECKPOINT)],
        ["anomaly", "--checkpoint", str(SIM_CHECKPOINT), "--normal-dir", str(data)],
    ):
        extra = ["--out-dir", str(out), "--quiet"]
        if argv[0] == "anomaly":
            extra += ["--abnormal-dir", str(data)]
        assert main(argv + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "SIM reconstruction" in err and "train-2d" in err
        assert not out.exists()
    before = SIM_CHECKPOINT.read_bytes()
    argv = ["calibrate-2d", "--checkpoint", str(SIM_CHECKPOINT), "--data-dir", str(data)]
    assert main([*argv, "--quiet"]) == 2
    assert SIM_CHECKPOINT.read_bytes() == before


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    argv = ["train-2d", "--data-dir", str(tmp_path), "--degrade", "fog:3", "--quiet"]
    assert main([*argv, "--out-dir", str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fog" in err
    assert not (tmp_path / "ck").exists()


@pytest.mark.slow
def test_workflow_train_calibrate_infer_anomaly(tmp_path, capsys):
    d, ck, ae = tmp_path / "data", tmp_path / "ck", tmp_path / "ae"
    gen = ["generate-2d", "--out-dir", str(d), "--n-train", "6", "--n-val", "2"]
    assert main([*gen, "--n-test", "3", "--size", "32", "--anomalies"]) == 0
    tiny = ["--base-channels", "8", "--depth", "2", "--patch", "32", "--batch-size", "8"]
    tiny += ["--device", "cpu", "--quiet"]
    train = ["train-2d", "--data-dir", str(d / "train"), "--val-dir", str(d / "val")]
    assert main([*train, "--out-dir", str(ck), "--epochs", "2", *tiny]) == 0
    assert "trained 2 epochs" in capsys.readouterr().out
    best = ck / "best.pt"

    cal = ["calibrate-2d", "--checkpoint", str(best), "--data-dir", str(d / "val")]
    assert main([*cal, "--mc-samples", "4", "--method", "map", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "sigma scale" in out and "sigma map" in out and "background" in out

    inf = ["infer-2d", "--data-dir", str(d / "test"), "--checkpoint", str(best)]
    inf += ["--out-dir", str(tmp_path / "inf"), "--num-samples", "4", "--quiet"]
    assert main(inf) == 0
    assert "PSNR" in capsys.readouterr().out
    doc = json.loads((tmp_path / "inf" / "metrics.json").read_text())
    assert doc["pooled"]["n_images"] == 3 and doc["calibration"]["sigma_map"] is True
    assert tifffile.imread(tmp_path / "inf" / "sample_0002_std.tif").shape == (32, 32)
    assert main(inf) == 2  # refuses to overwrite, one line
    assert "not overwriting" in capsys.readouterr().err

    ae_args = ["--degrade", "none", "--arch", "conv-ae", "--model", "hetero"]
    ae_args += ["--norm-mode", "minmax", "--patches-per-image", "8"]
    assert main([*train, "--out-dir", str(ae), "--epochs", "3", *tiny, *ae_args]) == 0
    capsys.readouterr()
    an = ["anomaly", "--checkpoint", str(ae / "best.pt"), "--normal-dir", str(d / "test")]
    an += ["--abnormal-dir", str(d / "anomaly" / "abnormal"), "--out-dir", str(tmp_path / "an")]
    assert main([*an, "--quiet"]) == 0
    assert "AUC" in capsys.readouterr().out
    res = json.loads((tmp_path / "an" / "anomaly.json").read_text())
    assert res["n_normal"] == 3 and res["n_abnormal"] == 3
    assert 0.0 <= res["scores"]["mse"]["auc"] <= 1.0
    assert (tmp_path / "an" / "roc.png").exists() and (tmp_path / "an" / "scores.csv").exists()
