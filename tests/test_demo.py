"""`sim-uq demo` (jobs/demo.py) on a tiny configuration: every product is written, the
figure shows the held-out stack, the sigma scale lands in the checkpoint, nothing of the
user's is overwritten."""

import json

import numpy as np
import pytest
from PIL import Image

from napari_sim_uq.cli import main
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import run
from napari_sim_uq.core.io.checkpoint import load_checkpoint
from napari_sim_uq.core.io.tiff_io import read_image
from napari_sim_uq.tasks.sim.demo import STRUCTURE_WEIGHT, DemoConfig, demo_job

TINY = dict(
    n_train=4,
    n_val=2,
    n_calib=2,
    n_test=2,
    n_shifted=2,
    lr_size=16,
    depth=1,
    base_channels=4,
    epochs=2,
    batch_size=2,
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    (out / "my_notes.txt").write_text("keep me")
    events = []
    res = run(demo_job(DemoConfig(out_dir=str(out), device="cpu", **TINY)), events.append)
    return out, res, events


def test_demo_writes_every_product(demo):
    out, res, events = demo
    for name in ("data/train", "data/val", "data/test", "data/test_gt", "checkpoints/best.pt"):
        assert (out / name).exists(), name
    assert len(list((out / "data" / "train").glob("*.tif"))) == 4
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert "emitter" in json.dumps(metrics)
    stems = {p.name for p in (out / "reconstruction").iterdir()}
    assert "sample_00000_emitter.tif" in stems and "sample_00000_emitter_std.tif" in stems
    img = np.asarray(Image.open(out / "summary.png"))
    assert img.ndim == 3 and img.shape[0] > 400 and img.shape[1] > 600
    assert img.std() > 10  # not a blank page
    saved = json.loads((out / "demo.json").read_text())
    assert saved["summary"] == res["summary"] and saved["epochs_trained"] == 2
    assert {e.stage for e in events} >= {"generate", "train", "validate", "summary"}
    assert (out / "my_notes.txt").read_text() == "keep me"
    # the domain-shift split: other optics (Airy PSF) and thinner structures, evaluated too
    meta = json.loads((out / "data" / "dataset.json").read_text())
    shifted = json.loads((out / "evaluation" / "test_shifted" / "metrics.json").read_text())
    assert shifted["split"] == "test_shifted" and shifted["n_samples"] == 2
    assert saved["test_shifted"]["n_samples"] == 2 and saved["test"]["n_samples"] == 2
    assert "self_check_fraction_flagged" in saved["test_shifted"]
    assert "airy" in json.dumps(meta)


def test_demo_calibrates_the_checkpoint_on_held_out_data(demo):
    out, res, _ = demo
    ck = load_checkpoint(out / "checkpoints" / "best.pt")
    scale = ck.sigma_scale
    assert scale["raw"] != 1.0 and scale["emitter"] != 1.0
    # trained with the structure weight, calibrated with the emitter sigma map
    assert ck.config["loss"]["sup_structure_weight"] == STRUCTURE_WEIGHT > 0
    assert set(ck.extra["sigma_map"]) == {"emitter"}
    # the reconstruction applies it: its uq.json records the same scale
    uq = json.loads((out / "reconstruction" / "sample_00000_uq.json").read_text())
    assert uq["sigma_scale"]["emitter"] == pytest.approx(scale["emitter"])
    # the written emitter overlays the held-out ground truth (same HR grid)
    gt = read_image(out / "data" / "test_gt" / "sample_00000.tif")
    rec = read_image(out / "reconstruction" / "sample_00000_emitter.tif")
    assert rec.data.shape == gt.data.shape
    np.testing.assert_allclose(rec.scale, gt.scale, rtol=1e-6)


def test_demo_refuses_to_replace_an_earlier_demo(demo, tmp_path):
    out, _, _ = demo
    before = (out / "checkpoints" / "best.pt").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a demo"):
        run(demo_job(DemoConfig(out_dir=str(out), device="cpu", **TINY)))
    assert (out / "checkpoints" / "best.pt").read_bytes() == before
    assert main(["demo", "--out-dir", str(out), "--quiet", "--n-train", "4"]) == 2


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"n_train": 0}, "n_train"),
        ({"lr_size": 4}, "lr_size"),
        ({"train_minutes": 0}, "train_minutes"),
        ({"mc_samples": -1}, "mc_samples"),
        ({"structure_weight": -1.0}, "structure_weight"),
        ({"n_shifted": -1}, "n_shifted"),
    ],
)
def test_demo_bad_options(kw, match, tmp_path):
    with pytest.raises(InputError, match=match):
        run(demo_job(DemoConfig(out_dir=str(tmp_path / "o"), **{**TINY, **kw})))
    assert not (tmp_path / "o").exists()


def test_self_supervised_demo_trains_on_raw_stacks_with_the_instrument(tmp_path):
    out = tmp_path / "ss"
    small = {**TINY, "n_train": 12, "lr_size": 48, "n_shifted": 0, "epochs": 1}
    res = run(demo_job(DemoConfig(out_dir=str(out), device="cpu", self_supervised=True, **small)))
    ck = load_checkpoint(res["checkpoint"])
    assert ck.config["train"]["supervised"] is False
    assert ck.config["model"]["patterns"] == "estimated"
    assert len(ck.config["instrument"]["wave_vectors_cycles_per_raw_px"]) == 3
    meta = json.loads((out / "data" / "dataset.json").read_text())
    assert all(s["config"]["fixed_instrument"] for s in meta["splits"].values())
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    # the light-pattern layer is the instrument's cosines: far better than uniform light
    assert metrics["image_quality"]["lp"]["psnr"] > 15
    # the pattern std is reported per std decile and per fringe class of the true pattern
    lp = metrics["calibration"]["lp"]
    assert len(lp["by_std_decile"]) == 10
    assert set(lp["by_intensity"]) == {"dark fringe", "slope", "bright fringe"}
