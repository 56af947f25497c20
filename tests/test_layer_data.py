"""Training data from arrays (layer data), emitter-only ground truth, and split generation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.tasks.sim.dataset import SimStackDataset
from napari_sim_uq.tasks.sim.layer_data import safe_stem, write_training_arrays

pytestmark = pytest.mark.usefixtures("one_thread")


def test_stack_and_emitter_pair_up(tmp_path, rng):
    raw = rng.random((9, 16, 16), dtype=np.float32) * 100
    emitter = rng.random((32, 32), dtype=np.float32)
    info = write_training_arrays(tmp_path, raw, emitter=emitter, name="SIM sample #1")
    assert info["train_glob"] == str(tmp_path / "train" / "SIM_sample_1.tif")
    assert info["hr_factor"] == 2 and info["n_items"] == 1
    np.testing.assert_array_equal(tifffile.imread(info["train_glob"]), raw)
    ds = SimStackDataset(info["train_glob"], supervised=True)
    assert not ds.has_patterns and ds.hr_factor == 2
    item = ds[0]
    assert item["x"].shape == (9, 16, 16) and item["emitter_gt"].shape == (1, 32, 32)
    assert "lp_gt" not in item  # emitter-only supervision

    # written again without ground truth: the stale emitter file goes away
    info = write_training_arrays(tmp_path, raw, name="SIM sample #1")
    assert info["hr_factor"] is None and len(info["files"]) == 1
    with pytest.raises(InputError, match="no ground truth"):
        SimStackDataset(info["train_glob"], supervised=True)


def test_time_series_and_layouts(tmp_path, rng):
    series = rng.random((3, 9, 16, 16), dtype=np.float32)
    info = write_training_arrays(tmp_path, series, emitter=np.ones((3, 48, 48)), name="ts")
    assert info["n_items"] == 3 and info["hr_factor"] == 3
    assert len(SimStackDataset(info["train_glob"], supervised=True)) == 3
    # (A, P, H, W) with another number of angles
    info = write_training_arrays(tmp_path, rng.random((2, 3, 16, 16)), name="ap", angles=2)
    assert SimStackDataset(info["train_glob"])[0]["x"].shape == (6, 16, 16)


@pytest.mark.parametrize(
    "raw, emitter, match",
    [
        (np.ones((16, 16)), None, "2D image"),
        (np.ones((9, 16, 16)), np.ones((33, 32)), "integer multiple"),
        (np.ones((9, 16, 16)), np.ones((2, 32, 32)), "expected an emitter image"),
        (np.ones((9, 16, 16)), np.full((32, 32), np.nan), "NaN"),
    ],
)
def test_bad_arrays(tmp_path, raw, emitter, match):
    with pytest.raises(InputError, match=match):
        write_training_arrays(tmp_path, raw, emitter=emitter, name="x")


def test_expected_frames_and_names(tmp_path):
    with pytest.raises(InputError, match="9 are expected"):
        write_training_arrays(tmp_path, np.ones((6, 16, 16)), angles=2, expected_frames=9)
    assert safe_stem("a/b c:d") == "a_b_c_d" and safe_stem("///") == "layer"


def test_patterns_for_some_files_only_is_an_error(tmp_path, rng):
    for name in ("a", "b"):
        write_training_arrays(tmp_path, rng.random((9, 8, 8)), emitter=np.ones((16, 16)), name=name)
    tifffile.imwrite(tmp_path / "train_gt" / "a_lp.tif", np.ones((9, 16, 16), np.float32))
    with pytest.raises(InputError, match="no ground-truth light pattern for 'b.tif'"):
        SimStackDataset(str(tmp_path / "train" / "*.tif"), supervised=True)


def test_generate_splits_seeds_and_progress(tmp_path):
    from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_splits

    cfg = SynthConfig(lr_size=(8, 8), hr_factor=1, n_filaments=(1, 1), n_rings=(0, 0))
    job = generate_splits(tmp_path, {"train": 2, "val": 0, "test": 1}, cfg, seed=5)
    events = []
    while True:
        try:
            events.append(next(job))
        except StopIteration as stop:
            result = stop.value
            break
    assert sorted(result) == ["test", "train"]
    assert {(e.step, e.total) for e in events} >= {(2, 3), (3, 3)}
    doc = json.loads((tmp_path / "dataset.json").read_text())
    assert doc["splits"]["train"]["seed"] == 5 and doc["splits"]["test"]["seed"] == 2005
    assert not (tmp_path / "val").exists()
    with pytest.raises(InputError, match="nothing to generate"):
        next(generate_splits(tmp_path / "x", {"train": 0}, cfg))
