"""SIM training data: normalisation, physics-consistent targets, pairing, crops, loaders."""

import json
import pickle
import shutil

import numpy as np
import pytest
import tifffile
import torch

from napari_sim_uq.core.data.loaders import EpochSampler, make_loader, set_loader_epoch
from napari_sim_uq.core.data.normalization import Normalization
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import run
from napari_sim_uq.tasks.sim import physics
from napari_sim_uq.tasks.sim.dataset import (
    SimStackDataset,
    emitter_normalization,
    frames_from_array,
)
from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_dataset

F = 2  # hr_factor of the generated dataset


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    """3 samples, 16 x 16, f=2, with little noise (high gain, tiny read noise)."""
    d = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(
        lr_size=(16, 16),
        hr_factor=F,
        gain=100.0,
        read_noise=(0.01, 0.02),
        high_noise_regions=0,
        photons=(1000.0, 2000.0),
    )
    run(generate_dataset(d, 3, cfg, workers=1))
    return d


@pytest.fixture
def synth_copy(synth_dir, tmp_path):
    dst = tmp_path / "D"
    shutil.copytree(synth_dir, dst)
    return dst


def write_ij(path, data, **meta):
    tifffile.imwrite(path, np.asarray(data), imagej=True, metadata=meta)
    return path


# --------------------------------------------------------------------------- normalisation


def test_percentile_fit_matches_numpy_and_round_trips(rng):
    x = rng.gamma(2.0, 50.0, size=(9, 20, 24)) + 100.0
    n = Normalization().fit(x)
    lo, hi = np.percentile(x, [0.1, 99.9])
    assert n.offset == pytest.approx(lo, rel=1e-12)
    assert n.scale == pytest.approx(hi - lo, rel=1e-12)
    y = n.apply(x)
    assert y.dtype == np.float64  # float64 in, float64 out
    np.testing.assert_allclose(y, (x - lo) / (hi - lo), rtol=1e-12)
    np.testing.assert_allclose(n.invert(y), x, rtol=1e-6)
    # float32 data and torch tensors
    x32 = x.astype(np.float32)
    y32 = n.apply(x32)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(n.invert(y32), x32, rtol=1e-6)
    t = torch.from_numpy(x32)
    np.testing.assert_allclose(n.invert(n.apply(t)).numpy(), x32, rtol=1e-6)
    # percentile end points map to 0 and 1
    assert n.apply(lo) == pytest.approx(0.0, abs=1e-12)
    assert n.apply(hi) == pytest.approx(1.0)
    # std maps by scale only, variance by scale^2
    s = np.full(3, 0.25)
    np.testing.assert_allclose(n.invert_std(s), 0.25 * (hi - lo))
    np.testing.assert_allclose(n.apply_std(n.invert_std(s)), s)
    np.testing.assert_allclose(n.invert_var(s), 0.25 * (hi - lo) ** 2)


def test_minmax_none_and_custom_percentiles(rng):
    x = rng.normal(10, 3, size=(9, 8, 8))
    mm = Normalization("minmax").fit(x)
    assert (mm.offset, mm.scale) == pytest.approx((x.min(), x.max() - x.min()))
    y = mm.apply(x)
    assert y.min() == pytest.approx(0) and y.max() == pytest.approx(1)
    none = Normalization("none").fit(x)
    assert (none.offset, none.scale) == (0.0, 1.0)
    np.testing.assert_array_equal(none.apply(x), x)
    p = Normalization("percentile", 2.0, 98.0).fit(x)
    assert p.offset == pytest.approx(np.percentile(x, 2.0))


def test_uint16_input(rng):
    x = rng.integers(100, 60000, size=(9, 16, 16), dtype=np.uint16)
    n = Normalization().fit(x)
    lo, hi = np.percentile(x.astype(np.float64), [0.1, 99.9])
    assert (n.offset, n.scale) == pytest.approx((lo, hi - lo), rel=1e-12)
    y = n.apply(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, (x.astype(np.float64) - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(n.invert(y), x, rtol=1e-6)
    t = n.apply(torch.from_numpy(x.astype(np.int32)))
    assert t.dtype == torch.float32


def test_constant_and_nearly_constant_stacks_are_refused():
    with pytest.raises(InputError, match="stack is constant"):
        Normalization().fit(np.full((9, 8, 8), 7, np.uint16), what="'a.tif'")
    with pytest.raises(InputError, match="'a.tif'.*constant"):
        Normalization("minmax").fit(np.full((9, 8, 8), 7.0), what="'a.tif'")
    x = np.zeros((9, 40, 40))
    x[0, 0, 0] = 1.0  # one bright pixel: percentiles equal, min/max not
    with pytest.raises(InputError, match="nearly constant.*minmax"):
        Normalization().fit(x)
    assert Normalization("minmax").fit(x).scale == 1.0
    with pytest.raises(InputError, match="NaN"):
        Normalization().fit(np.array([[0.0, np.nan], [1.0, 2.0]]))


def test_normalization_json_round_trip_and_validation(rng):
    n = Normalization("percentile", 1.0, 99.0).fit(rng.random((9, 8, 8)))
    back = Normalization.from_dict(json.loads(json.dumps(n.to_dict())))
    assert back == n
    with pytest.raises(InputError, match="mode"):
        Normalization("zscore")
    with pytest.raises(InputError, match="scale must be > 0"):
        Normalization.from_dict({**n.to_dict(), "scale": 0.0})
    with pytest.raises(InputError, match="unknown"):
        Normalization.from_dict({**n.to_dict(), "gain": 2})
    with pytest.raises(InputError, match="percentiles"):
        Normalization("percentile", 99.0, 1.0)


def test_emitter_normalization_modes(rng):
    e = rng.gamma(1.0, 100.0, size=(32, 32))
    raw = Normalization(offset=12.0, scale=300.0)
    assert emitter_normalization(e, "raw", raw) == (0.0, 300.0)
    assert emitter_normalization(e, "none", raw) == (0.0, 1.0)
    off, sc = emitter_normalization(e, "minmax_full", raw)
    assert ((e - off) / sc).min() == pytest.approx(0) and ((e - off) / sc).max() == pytest.approx(1)
    off, sc = emitter_normalization(e, "percentile", raw)
    lo, hi = np.percentile(e, [0.1, 99.9])
    assert (off, sc) == pytest.approx((lo, hi - lo))
    with pytest.raises(InputError, match="gt_norm"):
        emitter_normalization(e, "zscore", raw)


# --------------------------------------------------------------------------- physics


def test_raw_gt_norm_is_physics_consistent(synth_dir):
    ds = SimStackDataset(str(synth_dir / "train" / "*.tif"), supervised=True)
    assert len(ds) == 3 and ds.hr_factor == F and ds.has_meta
    for i in range(len(ds)):
        item = ds[i]
        psf = torch.from_numpy(ds.sample_meta(i)["psf"])
        fwd = physics.sim_forward(item["emitter_gt"][0], item["lp_gt"], psf, F, item["background"])
        z = ((item["x"] - fwd) / item["noise_sigma"]).double()
        # residuals of the normalised raw data are unit Gaussian noise
        assert abs(float(z.mean())) < 0.2
        assert 0.7 < float((z**2).mean()) < 1.4
        assert float(z.abs().max()) < 6
        # the background offset matters: forgetting it is a many-sigma error
        n = ds.normalization(i)
        b_wrong = torch.tensor(n.apply_std(ds.sample_meta(i)["background"]))
        fwd_wrong = physics.sim_forward(item["emitter_gt"][0], item["lp_gt"], psf, F, b_wrong)
        assert float((((item["x"] - fwd_wrong) / item["noise_sigma"]) ** 2).mean()) > 25
        # emitter target maps back to photons
        photons = tifffile.imread(synth_dir / "train_gt" / f"sample_{i:05d}.tif")
        e = item["emitter_gt"][0] * item["emitter_norm"]["scale"] + item["emitter_norm"]["offset"]
        np.testing.assert_allclose(e.numpy(), photons, rtol=1e-5, atol=1e-3)
        # the normalised raw is (raw - p0.1) / (p99.9 - p0.1) of the file
        raw = tifffile.imread(synth_dir / "train" / f"sample_{i:05d}.tif").astype(np.float64)
        lo, hi = np.percentile(raw, [0.1, 99.9])
        np.testing.assert_allclose(item["x"].numpy(), (raw - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
        assert float(item["norm"]["offset"]) == pytest.approx(lo, rel=1e-6)


def test_reference_gt_norm_is_not_physics_consistent(synth_dir):
    """The minmax_full target lives in other units: the forward model no longer fits x."""
    ds = SimStackDataset(synth_dir / "train", supervised=True, gt_norm="minmax_full")
    item = ds[0]
    e = item["emitter_gt"]
    assert float(e.min()) == pytest.approx(0) and float(e.max()) == pytest.approx(1)
    psf = torch.from_numpy(ds.sample_meta(0)["psf"])
    fwd = physics.sim_forward(e[0], item["lp_gt"], psf, F, item["background"])
    assert float((((item["x"] - fwd) / item["noise_sigma"]) ** 2).mean()) > 25


# --------------------------------------------------------------------------- pairing, errors


def test_supervised_item_shapes_and_unsupervised_keys(synth_dir):
    ds = SimStackDataset(str(synth_dir / "train" / "*.tif"), supervised=True)
    item = ds[-1]
    assert item["x"].shape == (9, 16, 16) and item["x"].dtype == torch.float32
    assert item["emitter_gt"].shape == (1, 32, 32)
    assert item["lp_gt"].shape == (9, 32, 32)
    assert item["noise_sigma"].shape == (9, 16, 16)
    assert item["background"].shape == () and int(item["index"]) == 2
    assert ds.item_source(2)[0].name == "sample_00002.tif"
    # patterns are not rescaled
    lp = tifffile.imread(synth_dir / "train_gt" / "sample_00002_lp.tif")
    np.testing.assert_array_equal(item["lp_gt"].numpy(), lp)
    un = SimStackDataset(str(synth_dir / "train" / "*.tif"))
    assert set(un[0]) == {"x", "norm", "index"}
    # items do not share memory with the cache
    a = ds[0]
    a["x"].zero_()
    a["lp_gt"].zero_()
    assert float(ds[0]["x"].abs().sum()) > 0 and float(ds[0]["lp_gt"].abs().sum()) > 0
    pickle.loads(pickle.dumps(ds))  # workers started by spawn get a copy


def test_missing_ground_truth(synth_copy):
    (synth_copy / "train_gt" / "sample_00001.tif").unlink()
    pattern = str(synth_copy / "train" / "*.tif")
    expected = str(synth_copy / "train_gt" / "sample_00001.tif")
    with pytest.raises(InputError) as err:
        SimStackDataset(pattern, supervised=True)
    assert str(err.value) == (
        f"no ground truth for 'sample_00001.tif': expected '{expected}' (supervised=True)"
    )
    assert len(SimStackDataset(pattern)) == 3  # unsupervised needs no ground truth


def test_missing_meta_in_some_files_warns_and_drops_meta(synth_copy):
    (synth_copy / "train_meta" / "sample_00000.npz").unlink()
    with pytest.warns(UserWarning, match="sample_00000.npz"):
        ds = SimStackDataset(synth_copy / "train", supervised=True)
    assert not ds.has_meta and "noise_sigma" not in ds[1]


def test_bad_glob_empty_folder_and_list(tmp_path):
    with pytest.raises(InputError, match=r"^no files match 'D/train/\*\.tif'$"):
        SimStackDataset("D/train/*.tif")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        SimStackDataset(tmp_path / "empty")
    with pytest.raises(InputError, match="empty"):
        SimStackDataset([])
    with pytest.raises(InputError, match="file not found"):
        SimStackDataset([tmp_path / "nope.tif"])


@pytest.mark.parametrize("angles,phases", [(2, 2), (5, 3)])
def test_wrong_frame_count(tmp_path, rng, angles, phases):
    n = angles * phases
    path = write_ij(
        tmp_path / "odd.tif",
        rng.random((n, 16, 16), dtype=np.float32),
        axes="ZYX",
        sim_angles=angles,
        sim_phases=phases,
    )
    with pytest.raises(InputError, match=rf"odd.tif'.*has {n} frames.*expected_frames=9"):
        SimStackDataset([path], expected_frames=9)
    ds = SimStackDataset([path])  # read with its metadata when nothing is expected
    assert ds[0]["x"].shape == (n, 16, 16)
    assert len(SimStackDataset([path], expected_frames=n)) == 1


def test_ground_truth_shape_checks(synth_copy):
    pattern = str(synth_copy / "train" / "*.tif")
    with pytest.raises(InputError, match=r"sample_00000.tif'.*expected \(3\*16, 3\*16\)"):
        SimStackDataset(pattern, supervised=True, hr_factor=3)
    assert SimStackDataset(pattern, supervised=True, hr_factor=2).hr_factor == 2
    gt = synth_copy / "train_gt" / "sample_00001.tif"
    tifffile.imwrite(gt, np.ones((33, 32), np.float32))
    with pytest.raises(InputError, match=r"sample_00001.tif'.*33 x 32.*integer multiple"):
        SimStackDataset(pattern, supervised=True)
    tifffile.imwrite(gt, np.ones((48, 48), np.float32))  # f=3 while the others are f=2
    with pytest.raises(InputError, match=r"sample_00001.tif'.*expected \(2\*16, 2\*16\)"):
        SimStackDataset(pattern, supervised=True)
    tifffile.imwrite(gt, np.ones((32, 32), np.float32))
    lp = synth_copy / "train_gt" / "sample_00002_lp.tif"
    tifffile.imwrite(lp, np.ones((4, 32, 32), np.float32), photometric="minisblack")
    with pytest.raises(InputError, match=r"sample_00002_lp.tif'.*\(9, 32, 32\)"):
        SimStackDataset(pattern, supervised=True)


def test_nan_and_2d_files(tmp_path, rng):
    stack = rng.random((9, 16, 16), dtype=np.float32)
    stack[3, 4, 5] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", stack)
    ds = SimStackDataset([tmp_path / "nan.tif"])
    with pytest.raises(InputError, match="nan.tif'.*NaN"):
        ds[0]
    tifffile.imwrite(tmp_path / "flat.tif", rng.random((16, 16), dtype=np.float32))
    with pytest.raises(InputError, match="flat.tif'.*2D image.*not a SIM stack"):
        SimStackDataset([tmp_path / "flat.tif"])
    tifffile.imwrite(tmp_path / "const.tif", np.full((9, 16, 16), 3, np.uint16))
    with pytest.raises(InputError, match="const.tif'.*constant"):
        SimStackDataset([tmp_path / "const.tif"])[0]


# --------------------------------------------------------------------------- time series


def test_time_series_file_gives_one_item_per_time_point(tmp_path, rng):
    ts = (rng.random((3, 9, 16, 16)) * 1000 * np.arange(1, 4)[:, None, None, None]).astype(
        np.uint16
    )
    write_ij(tmp_path / "ts.tif", ts, axes="TZYX")
    tifffile.imwrite(tmp_path / "single.tif", rng.random((9, 16, 16), dtype=np.float32))
    ds = SimStackDataset(tmp_path, expected_frames=9)
    assert [p.name for p in ds.files] == ["single.tif", "ts.tif"]
    assert len(ds) == 4
    for t in range(3):
        path, tt = ds.item_source(1 + t)
        assert (path.name, tt) == ("ts.tif", t)
        x = ds[1 + t]["x"].numpy()
        lo, hi = np.percentile(ts[t].astype(np.float64), [0.1, 99.9])  # per time point
        np.testing.assert_allclose(x, (ts[t] - lo) / (hi - lo), rtol=1e-5, atol=1e-6)


def test_time_series_ground_truth_per_time_point(tmp_path, rng):
    (tmp_path / "s").mkdir()
    (tmp_path / "s_gt").mkdir()
    write_ij(tmp_path / "s" / "a.tif", rng.random((2, 9, 8, 8), dtype=np.float32), axes="TZYX")
    e = rng.random((2, 16, 16), dtype=np.float32)
    tifffile.imwrite(tmp_path / "s_gt" / "a.tif", e)
    tifffile.imwrite(tmp_path / "s_gt" / "a_lp.tif", rng.random((9, 16, 16), dtype=np.float32))
    ds = SimStackDataset(tmp_path / "s", supervised=True, gt_norm="none")
    assert len(ds) == 2 and ds.hr_factor == 2 and not ds.has_meta
    np.testing.assert_array_equal(ds[1]["emitter_gt"][0].numpy(), e[1])


# --------------------------------------------------------------------------- crops


def coded_dataset(root, H=12, W=16, f=3):
    """Raw value = position code of the LR pixel; HR ground truth = code of its LR pixel."""
    for sub in ("tr", "tr_gt", "tr_meta"):
        (root / sub).mkdir(parents=True)
    code = (np.arange(H)[:, None] * 100 + np.arange(W)[None, :]).astype(np.float32)
    raw = np.stack([code + 10000 * k for k in range(9)])
    tifffile.imwrite(root / "tr" / "c.tif", raw)
    hr = np.kron(code, np.ones((f, f), np.float32))
    tifffile.imwrite(root / "tr_gt" / "c.tif", hr)
    tifffile.imwrite(root / "tr_gt" / "c_lp.tif", np.stack([hr + k for k in range(9)]))
    np.savez(root / "tr_meta" / "c.npz", noise_sigma=raw + 0.5, background=np.float32(3.0))
    return code


def test_crop_matches_between_raw_and_ground_truth(tmp_path):
    code = coded_dataset(tmp_path)
    kw = dict(supervised=True, crop=(5, 7), seed=3)
    ds = SimStackDataset(tmp_path / "tr", norm_mode="none", gt_norm="none", **kw)
    assert ds.hr_factor == 3
    windows = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        item = ds[0]
        y0, x0, h, w = ds.crop_window(0)
        windows.add((y0, x0))
        x = item["x"].numpy()
        assert x.shape == (9, 5, 7)
        np.testing.assert_array_equal(x[0], code[y0 : y0 + 5, x0 : x0 + 7])
        np.testing.assert_array_equal(x[4], code[y0 : y0 + 5, x0 : x0 + 7] + 40000)
        e = item["emitter_gt"][0].numpy()
        assert e.shape == (15, 21)
        np.testing.assert_array_equal(e, np.kron(x[0], np.ones((3, 3))))
        np.testing.assert_array_equal(item["lp_gt"][5].numpy(), e + 5)
        np.testing.assert_array_equal(item["noise_sigma"].numpy(), x + 0.5)
    assert len(windows) > 1  # the epoch moves the window
    # the same seed and epoch give the same windows in a fresh dataset; another seed not
    again = SimStackDataset(tmp_path / "tr", norm_mode="none", gt_norm="none", **kw)
    again.set_epoch(5)
    assert again.crop_window(0) == ds.crop_window(0)
    others = {
        SimStackDataset(tmp_path / "tr", crop=(5, 7), seed=s).crop_window(0) for s in range(8)
    }
    assert len(others) > 1
    # with the raw normalisation the crop stays consistent: e' * s == (x' * s + o) per block
    raw_ds = SimStackDataset(tmp_path / "tr", **kw)
    item = raw_ds[0]
    s, o = float(item["norm"]["scale"]), float(item["norm"]["offset"])
    x0_phys = item["x"][0].double().numpy() * s + o
    e_phys = item["emitter_gt"][0].double().numpy() * s
    np.testing.assert_allclose(e_phys, np.kron(x0_phys, np.ones((3, 3))), rtol=1e-5)
    # normalisation is fitted on the full field, not the crop
    assert raw_ds.normalization(0).offset == pytest.approx(
        np.percentile(tifffile.imread(tmp_path / "tr" / "c.tif").astype(np.float64), 0.1)
    )
    with pytest.raises(InputError, match=r"crop \(13, 7\) is larger"):
        SimStackDataset(tmp_path / "tr", crop=(13, 7))


# --------------------------------------------------------------------------- loaders


def test_loader_batches(synth_dir):
    ds = SimStackDataset(str(synth_dir / "train" / "*.tif"), supervised=True)
    batches = list(make_loader(ds, 2, shuffle=False, seed=0))
    assert [int(len(b["x"])) for b in batches] == [2, 1]
    b = batches[0]
    assert b["x"].shape == (2, 9, 16, 16)
    assert b["emitter_gt"].shape == (2, 1, 32, 32)
    assert b["lp_gt"].shape == (2, 9, 32, 32)
    assert b["noise_sigma"].shape == (2, 9, 16, 16)
    assert b["norm"]["scale"].shape == (2,) and b["background"].shape == (2,)
    assert b["index"].tolist() == [0, 1]
    assert len(list(make_loader(ds, 2, shuffle=False, seed=0, drop_last=True))) == 1
    with pytest.raises(InputError, match="batch_size=4"):
        make_loader(ds, 4, shuffle=True, seed=0, drop_last=True)


def test_loader_refuses_mixed_sizes_for_batches(tmp_path, rng):
    tifffile.imwrite(tmp_path / "a.tif", rng.random((9, 16, 16), dtype=np.float32))
    tifffile.imwrite(tmp_path / "b.tif", rng.random((9, 20, 16), dtype=np.float32))
    ds = SimStackDataset(tmp_path)
    with pytest.raises(InputError, match="b.tif' gives.*batch_size=1.*crop"):
        make_loader(ds, 2, shuffle=False, seed=0)
    assert len(list(make_loader(ds, 1, shuffle=False, seed=0))) == 2
    cropped = SimStackDataset(tmp_path, crop=(8, 8))
    (batch,) = list(make_loader(cropped, 2, shuffle=False, seed=0))
    assert batch["x"].shape == (2, 9, 8, 8)


def test_shuffle_is_deterministic_per_seed_and_epoch(synth_dir):
    def orders(seed, epochs):
        ds = SimStackDataset(str(synth_dir / "train" / "*.tif"))
        loader = make_loader(ds, 1, shuffle=True, seed=seed)
        out = []
        for ep in epochs:
            set_loader_epoch(loader, ep)
            out.append([int(b["index"]) for b in loader])
        return out

    a = orders(7, [0, 1, 2, 3])
    assert a == orders(7, [0, 1, 2, 3])
    assert orders(7, [2]) == [a[2]]  # an epoch's order does not depend on the ones before
    assert all(sorted(o) == [0, 1, 2] for o in a)
    s = EpochSampler(30, shuffle=True, seed=7)
    first = list(s)
    assert list(s) == first and sorted(first) == list(range(30)) and first != list(range(30))
    s.set_epoch(1)
    assert list(s) != first
    assert list(EpochSampler(30, shuffle=True, seed=8)) != first
    assert list(EpochSampler(5, shuffle=False)) == list(range(5))


def test_distributed_loader(synth_dir, tmp_path):
    import torch.distributed as dist

    ds = SimStackDataset(str(synth_dir / "train" / "*.tif"))
    with pytest.raises(InputError, match="init_process_group"):
        make_loader(ds, 1, shuffle=True, seed=0, distributed=True)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        loader = make_loader(ds, 2, shuffle=True, seed=0, distributed=True)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        set_loader_epoch(loader, 1)
        assert loader.sampler.epoch == 1
        assert sorted(i for b in loader for i in b["index"].tolist()) == [0, 1, 2]
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- arrays


def test_frames_from_array_layouts(rng):
    st = rng.random((9, 8, 10)).astype(np.float64)
    frames, lay = frames_from_array(st)
    assert frames.shape == (1, 9, 8, 10) and frames.dtype == np.float32 and lay.kind == "sim"
    np.testing.assert_allclose(frames[0], st, rtol=1e-6)
    ap = rng.integers(0, 4000, size=(3, 3, 8, 10), dtype=np.uint16)
    frames, lay = frames_from_array(ap)
    assert lay.kind == "sim_ap" and frames.shape == (1, 9, 8, 10)
    np.testing.assert_array_equal(frames[0, 1 * 3 + 2], ap[1, 2])  # angle-major
    ts = rng.random((4, 9, 8, 10), dtype=np.float32)
    frames, lay = frames_from_array(ts)
    assert lay.kind == "sim_t" and frames.shape == (4, 9, 8, 10)
    frames[0, 0, 0, 0] = -1  # a copy, not a view
    assert ts[0, 0, 0, 0] != -1
    frames, lay = frames_from_array(torch.from_numpy(rng.random((15, 8, 8))), angles=5, phases=3)
    assert (lay.angles, lay.phases) == (5, 3) and frames.shape == (1, 15, 8, 8)


def test_frames_from_array_errors(rng):
    with pytest.raises(InputError, match="this is a 2D image.*not a SIM stack"):
        frames_from_array(rng.random((8, 8)))
    with pytest.raises(InputError, match="has 15 frames"):
        frames_from_array(rng.random((15, 8, 8)))
    with pytest.raises(InputError, match="has 9 frames but its metadata says 2 angles"):
        frames_from_array(rng.random((9, 8, 8)), angles=2, phases=2)
    with pytest.raises(InputError, match="expected_frames=9"):
        frames_from_array(rng.random((15, 8, 8)), angles=5, expected_frames=9)
    bad = rng.random((9, 8, 8))
    bad[0, 0, 0] = np.inf
    with pytest.raises(InputError, match="infinite"):
        frames_from_array(bad, what="layer 'raw'")
