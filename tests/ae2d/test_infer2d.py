"""infer_2d_job: the files it writes, metrics.json against metrics recomputed from those
files, and its refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from ae2d_helpers import SIM_CHECKPOINT, train_tiny
from PIL import Image

from napari_sim_uq.core.data.images2d import read_image_2d
from napari_sim_uq.core.data.normalization import Normalization
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import run
from napari_sim_uq.core.io.tiff_io import read_image
from napari_sim_uq.core.uq import metrics as M
from napari_sim_uq.core.uq.calibrate import conditional_calibration
from napari_sim_uq.tasks.ae2d.infer import infer_2d_job
from napari_sim_uq.tasks.ae2d.synth2d import generate_dataset_2d

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("inf2d")
    files = generate_dataset_2d(root / "data", 6, 0, 3, size=32, seed=1)
    train_tiny(root)
    out = root / "out"
    doc = run(infer_2d_job(root / "data" / "test", root / "ck" / "latest.pt", out, num_samples=4))
    return root, files["test"], out, doc


def test_files_are_written_and_read_back(setup):
    _, test_files, out, doc = setup
    for i, src in enumerate(test_files):
        png = Image.open(out / f"sample_{i:04d}.png")
        assert png.size[0] > 4 * png.size[1] / 2  # four panels side by side
        for key in ("mean", "std", "epistemic_std", "aleatoric_std", "degraded"):
            path = out / f"sample_{i:04d}_{key}.tif"
            arr = tifffile.imread(path)
            assert arr.shape == (32, 32) and arr.dtype == np.float32
            img = read_image(path)  # the plugin's reader: layer name and metadata survive
            np.testing.assert_array_equal(img.data, arr)
            assert img.name == f"{src.stem} {key.replace('_', ' ')}"
        std = tifffile.imread(out / f"sample_{i:04d}_std.tif")
        epi = tifffile.imread(out / f"sample_{i:04d}_epistemic_std.tif")
        alea = tifffile.imread(out / f"sample_{i:04d}_aleatoric_std.tif")
        assert np.all(std > 0)
        np.testing.assert_allclose(std**2, epi**2 + alea**2, rtol=1e-4)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(doc))
    assert sorted(Path(p).name for p in doc["files"]) == sorted(p.name for p in out.iterdir())


def test_metrics_equal_core_metrics_recomputed_from_the_files(setup):
    _, test_files, out, doc = setup
    pooled = {k: [] for k in ("clean", "mean", "std", "deg")}
    for i, src in enumerate(test_files):
        clean = read_image_2d(src).astype(np.float64)
        norm = Normalization("percentile").fit(clean)  # the checkpoint's rule, refitted
        c = norm.apply(clean)
        mean = norm.apply(tifffile.imread(out / f"sample_{i:04d}_mean.tif").astype(np.float64))
        std = norm.apply_std(tifffile.imread(out / f"sample_{i:04d}_std.tif").astype(np.float64))
        deg = norm.apply(tifffile.imread(out / f"sample_{i:04d}_degraded.tif").astype(np.float64))
        row = doc["per_image"][i]
        assert row["file"] == str(src)
        r = c - mean
        want = {
            "psnr": M.psnr(mean, c, 1.0),
            "ssim": M.ssim(mean, c, 1.0),
            "psnr_input": M.psnr(deg, c, 1.0),
            "ssim_input": M.ssim(deg, c, 1.0),
            "zms": M.zms(r, std),
            "cov95": M.coverage(r, std, 0.95),
            "spearman": M.spearman(std, np.abs(r)),
            "uce": M.uce(r, std),
        }
        for k, v in want.items():
            assert row[k] == pytest.approx(v, rel=2e-3, abs=1e-6), k
        for k, v in (("clean", c), ("mean", mean), ("std", std), ("deg", deg)):
            pooled[k].append(v.ravel())
    c, mean, std, deg = (np.concatenate(pooled[k]) for k in ("clean", "mean", "std", "deg"))
    p = doc["pooled"]
    assert p["n_pixels"] == c.size
    assert p["psnr"] == pytest.approx(M.psnr(mean, c, 1.0), rel=1e-3)
    assert p["psnr_input"] == pytest.approx(M.psnr(deg, c, 1.0), rel=1e-3)
    assert p["ssim"] == pytest.approx(np.mean([r["ssim"] for r in doc["per_image"]]))
    assert p["zms"] == pytest.approx(M.zms(c - mean, std), rel=2e-3)
    assert p["cov95"] == pytest.approx(M.coverage(c - mean, std, 0.95), abs=2e-3)
    table = conditional_calibration(c - mean, std, c)
    for got, want in zip(doc["conditional"]["by_std_decile"], table["by_std_decile"], strict=True):
        assert got["n"] == want["n"]
        assert got["zms"] == pytest.approx(want["zms"], rel=5e-3)
    for name, want in table["by_intensity"].items():
        assert doc["conditional"]["by_intensity"][name]["n"] == want["n"]
        assert doc["conditional"]["by_intensity"][name]["zms"] == pytest.approx(
            want["zms"], rel=5e-3
        )
    # the degraded input is the clean image plus N(0, 0.1^2) noise in normalised units
    assert np.std(deg - c) == pytest.approx(0.1, rel=0.1)


def test_existing_results_are_refused_before_any_work(setup):
    root, _, out, _ = setup
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="not overwriting"):
        run(infer_2d_job(root / "data" / "test", root / "ck" / "latest.pt", out))
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # with overwrite, a smaller run replaces the results and drops the stale samples
    doc = run(
        infer_2d_job(
            root / "data" / "test",
            root / "ck" / "latest.pt",
            out,
            num_samples=2,
            max_images=1,
            overwrite=True,
        )
    )
    assert doc["pooled"]["n_images"] == 1
    assert not (out / "sample_0001.png").exists() and (out / "sample_0000.png").exists()
    shutil.rmtree(out)
    run(infer_2d_job(root / "data" / "test", root / "ck" / "latest.pt", out, num_samples=4))


def test_a_sim_checkpoint_is_a_clear_error_and_writes_nothing(setup, tmp_path):
    root = setup[0]
    out = tmp_path / "never"
    with pytest.raises(InputError, match="SIM") as err:
        run(infer_2d_job(root / "data" / "test", SIM_CHECKPOINT, out))
    assert "train-2d" in str(err.value)
    assert not out.exists()


def test_bad_arguments(setup, tmp_path):
    root = setup[0]
    ck = root / "ck" / "latest.pt"
    with pytest.raises(InputError, match="num_samples"):
        run(infer_2d_job(root / "data" / "test", ck, tmp_path / "o", num_samples=0))
    with pytest.raises(InputError, match="no files match"):
        run(infer_2d_job(tmp_path / "missing", ck, tmp_path / "o"))
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        run(infer_2d_job(root / "data" / "test", ck, f))
    with pytest.raises(InputError, match="degradation"):
        run(infer_2d_job(root / "data" / "test", ck, tmp_path / "o", degrade="fog:3"))
    assert not (tmp_path / "o").exists()
