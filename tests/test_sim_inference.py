"""SIM inference (uq.inference): tiling == untiled, chunked Welford statistics, law of total
variance, forward-model reconstruction and its propagated variance, determinism, progress
events, input validation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.nn.modes import mc_dropout_mode
from napari_sim_uq.core.uq.mc import mc_chunk_seed
from napari_sim_uq.core.uq.moments import RunningMoments, welford_merge
from napari_sim_uq.core.uq.tiling import blend_ramp, tile_starts
from napari_sim_uq.tasks.sim.net import SimNetConfig, SimUQNet
from napari_sim_uq.tasks.sim.physics import (
    forward_mean_and_variance,
    sim_forward,
    softmax_psf_covariance,
)
from napari_sim_uq.tasks.sim.predict import SimPrediction, predict_sim, predict_sim_sync

F_HR = 2
PSF_K = 5


pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed: int = 0, **kw) -> SimUQNet:
    torch.manual_seed(seed)
    cfg = {"depth": 1, "base_channels": 8, "hr_factor": F_HR, "psf_size": PSF_K, "dropout": 0.0}
    return SimUQNet(SimNetConfig(**{**cfg, **kw})).eval()


def _frames(h: int, w: int, seed: int = 1, n: int = 9) -> np.ndarray:
    return np.random.default_rng(seed).random((n, h, w), dtype=np.float32)


# ---------------------------------------------------------------- running statistics


@pytest.mark.parametrize("chunks", [[3, 1, 5, 2], [11], [1] * 11, [4, 0, 7]])
def test_running_moments_match_numpy(chunks):
    data = np.random.default_rng(0).normal(3.0, 2.0, size=(11, 3, 4)).astype(np.float64)
    rm_np, rm_t = RunningMoments(), RunningMoments()
    i = 0
    for c in chunks:
        rm_np.update(data[i : i + c])
        rm_t.update(torch.from_numpy(data[i : i + c]).float())
        i += c
    assert rm_np.count == rm_t.count == 11
    np.testing.assert_allclose(rm_np.mean, data.mean(0), rtol=1e-12)
    np.testing.assert_allclose(rm_np.variance(), data.var(0), rtol=1e-12)
    np.testing.assert_allclose(rm_np.variance(ddof=1), data.var(0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(rm_t.mean.numpy(), data.mean(0), rtol=1e-5)
    np.testing.assert_allclose(rm_t.variance().numpy(), data.var(0), rtol=1e-4)


def test_welford_merge_edge_cases():
    a = np.array([1.0, 2.0])
    assert welford_merge(0, None, None, 2, a, a)[1] is a
    n, mean, m2 = welford_merge(2, a, np.zeros(2), 0, None, None)
    assert n == 2 and mean is a
    n, mean, m2 = welford_merge(1, np.array(0.0), None, 1, np.array(2.0), None)
    assert n == 2 and mean == 1.0 and m2 is None
    with pytest.raises(ValueError):
        RunningMoments(track_var=False).variance()


# ---------------------------------------------------------------- MC statistics


def _manual_mc(net: SimUQNet, x: np.ndarray, seed: int, chunks: list[int]):
    """The T per-sample outputs, drawn the way predict_sim documents it (dropout RNG seeded
    with ``seed``, chunks of samples by repeating the input)."""
    xt = torch.from_numpy(x)[None]
    outs = []
    state = torch.get_rng_state()
    try:
        with torch.no_grad(), mc_dropout_mode(net):
            for ci, c in enumerate(chunks):
                torch.manual_seed(mc_chunk_seed(seed, ci))
                outs.append(net(xt.repeat(c, 1, 1, 1)))
    finally:
        torch.set_rng_state(state)
    return {k: torch.cat([getattr(o, k) for o in outs]).double().numpy() for k in outs[0]._fields}


def test_mc_statistics_equal_numpy_over_the_same_samples():
    net = _net(dropout=0.5)
    x = _frames(12, 14)
    res = predict_sim_sync(net, x, mc_samples=7, mc_batch=3, seed=5)
    s = _manual_mc(net, x, 5, [3, 3, 1])
    e = s["emitter"][:, 0]
    assert e.std(0).max() > 1e-3  # the samples really differ
    np.testing.assert_allclose(res.emitter, e.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.emitter_epistemic_std**2, e.var(0), rtol=1e-3, atol=1e-9)
    np.testing.assert_allclose(
        res.emitter_aleatoric_std**2, s["emitter_var"][:, 0].mean(0), rtol=1e-4, atol=1e-10
    )
    np.testing.assert_allclose(res.lp, s["lp"].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.lp_epistemic_std**2, s["lp"].var(0), rtol=1e-3, atol=1e-9)
    np.testing.assert_allclose(res.psf, s["psf"].mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.background, s["background"].mean(), rtol=1e-5)
    np.testing.assert_allclose(res.background_std, s["background"].std(), rtol=1e-3)


def test_law_of_total_variance():
    res = predict_sim_sync(_net(dropout=0.5), _frames(12, 14), mc_samples=6, mc_batch=4)
    for q in ("emitter", "lp", "psf", "rec"):
        tot, al, ep = (
            getattr(res, f"{q}{s}") for s in ("_std", "_aleatoric_std", "_epistemic_std")
        )
        assert ep.max() > 0 and al.max() > 0
        np.testing.assert_allclose(tot**2, al**2 + ep**2, rtol=1e-5, atol=1e-12)


def test_rec_epistemic_equals_spread_of_sample_predictions():
    net = _net(dropout=0.5)
    x = _frames(12, 14)
    res = predict_sim_sync(net, x, mc_samples=5, mc_batch=2, seed=3)
    s = {k: torch.from_numpy(v) for k, v in _manual_mc(net, x, 3, [2, 2, 1]).items()}
    ys = sim_forward(s["emitter"], s["lp"], s["psf"], F_HR, s["background"])
    rec = torch.from_numpy(res.rec).double()
    means = (torch.from_numpy(getattr(res, k)) for k in ("emitter", "lp", "psf"))
    ref_rec = sim_forward(*means, F_HR, res.background)
    np.testing.assert_allclose(res.rec, ref_rec.numpy(), rtol=1e-5, atol=1e-6)
    ref = (ys - rec).square().mean(0).numpy()
    np.testing.assert_allclose(res.rec_epistemic_std**2, ref, rtol=2e-3, atol=1e-9)


# ---------------------------------------------------------------- reconstruction


def test_rec_is_forward_model_of_means_and_rec_std_is_exact_propagation():
    net = _net()
    x = _frames(16, 20)
    res = predict_sim_sync(net, x)
    assert isinstance(res, SimPrediction)
    assert res.emitter.shape == (32, 40) and res.lp.shape == (9, 32, 40)
    assert res.psf.shape == (PSF_K, PSF_K) and res.rec.shape == (9, 16, 20)
    assert all(
        a.dtype == np.float32
        for a in (res.emitter, res.emitter_std, res.lp, res.lp_std, res.psf, res.rec, res.rec_std)
    )
    assert res.emitter_epistemic_std is None and res.background_std is None
    ref = sim_forward(
        torch.from_numpy(res.emitter),
        torch.from_numpy(res.lp),
        torch.from_numpy(res.psf),
        F_HR,
        res.background,
    )
    np.testing.assert_allclose(res.rec, ref.numpy(), rtol=1e-5, atol=1e-6)
    assert (res.rec_std > 0).all()
    # rec_std: exact propagation with the full softmax-PSF covariance
    with torch.no_grad():
        out = net(torch.from_numpy(x)[None])
        w, lowrank = softmax_psf_covariance(out.psf, out.psf_logvar.exp())
        _, var = forward_mean_and_variance(
            out.emitter,
            out.lp,
            out.psf,
            F_HR,
            out.background,
            var_emitter=out.emitter_var,
            var_patterns=out.lp_var,
            var_psf=w,
            psf_lowrank=lowrank,
        )
    np.testing.assert_allclose(res.rec_std, var[0].sqrt().numpy(), rtol=1e-4)
    np.testing.assert_allclose(res.emitter_std, out.emitter_var[0, 0].sqrt().numpy(), rtol=1e-5)
    np.testing.assert_allclose(res.psf_std, out.psf_var[0].sqrt().numpy(), rtol=1e-5)


def test_model_without_variance_heads():
    net = _net(uq_targets=(), dropout=0.5)
    res = predict_sim_sync(net, _frames(10, 12))
    assert res.emitter_std is None and res.lp_std is None and res.psf_std is None
    assert res.rec_std is None and res.rec.shape == (9, 10, 12)
    mc = predict_sim_sync(net, _frames(10, 12), mc_samples=3)
    assert mc.emitter_aleatoric_std is None and mc.rec_aleatoric_std is None
    np.testing.assert_array_equal(mc.emitter_std, mc.emitter_epistemic_std)
    assert mc.rec_std.max() > 0


def test_sigma_scale_multiplies_std_maps():
    net, x = _net(dropout=0.5), _frames(10, 12)
    kw = {"mc_samples": 3, "mc_batch": 3}
    a = predict_sim_sync(net, x, **kw)
    b = predict_sim_sync(net, x, sigma_scale={"emitter": 2.0, "raw": 0.5}, **kw)
    np.testing.assert_allclose(b.emitter_std, 2 * a.emitter_std, rtol=1e-6)
    np.testing.assert_allclose(b.emitter_epistemic_std, 2 * a.emitter_epistemic_std, rtol=1e-6)
    np.testing.assert_allclose(b.rec_std, 0.5 * a.rec_std, rtol=1e-6)
    # exact: the same model, input and thread run the same arithmetic (only the std maps of
    # b are scaled afterwards), which CPU torch repeats bit for bit
    np.testing.assert_array_equal(b.lp_std, a.lp_std)
    np.testing.assert_array_equal(b.emitter, a.emitter)
    assert b.meta["sigma_scale"]["emitter"] == 2.0 and b.meta["sigma_scale"]["lp"] == 1.0


# ---------------------------------------------------------------- tiling


def _receptive_radius(net: SimUQNet, size: int = 48, offset: int = 0) -> int:
    """Largest LR distance at which perturbing one input pixel changes an HR output."""
    x = torch.from_numpy(_frames(size, size, seed=7))[None]
    x2 = x.clone()
    c = size // 2 + offset
    x2[..., c, c] += 1.0
    with torch.no_grad():
        a, b = net(x), net(x2)
    r = 0
    for k in ("emitter", "lp", "emitter_var", "lp_var"):
        d = (getattr(a, k) - getattr(b, k)).abs().amax(dim=(0, 1))
        idx = (d > 0).nonzero().double() / F_HR - (c + 0.5 - 0.5 / F_HR)
        if idx.numel():  # untrained output-space variances are constant (zero-weight heads)
            r = max(r, math.ceil(idx.abs().max().item()))
    assert r > 0, "the perturbation changed no output"
    assert r < c - 2, "the perturbation reached the image border: use a larger probe"
    return r


def test_receptive_radius_bounds_the_measured_one():
    # the analytic bound is an upper bound and tight for this architecture
    for depth in (1, 2):
        net = _net(depth=depth)
        # the reach depends on the pixel's position on the 2^depth grid: try them all
        measured = max(_receptive_radius(net, 64, off) for off in range(2**depth))
        assert measured <= net.receptive_radius <= measured + 1, (depth, measured)


def test_groupnorm_model_is_not_local():
    # with norm="group" every output depends on the statistics of the whole image, so tiling
    # cannot be exact; the default per-pixel norm is local
    x = torch.from_numpy(_frames(48, 48, seed=7))[None]
    x2 = x.clone()
    x2[..., 24, 24] += 1.0
    for norm, local in (("group", False), ("pixel", True), ("none", True)):
        net = _net(norm=norm)
        assert net.tiling_exact is local
        with torch.no_grad():
            d = (net(x).emitter - net(x2).emitter).abs()[0, 0]
        assert (d[:4, :4].max() > 0) is not local, norm


@pytest.mark.parametrize("mc", [False, True])
def test_tiled_equals_untiled(mc):
    # default (per-pixel norm) model, PSF/background heads reading the pooled bottleneck:
    # with the automatic overlap the tiled result equals the untiled one everywhere, the
    # pooled PSF/background included (the pooling pass averages over the whole image)
    net = _net(depth=2, dropout=0.5 if mc else 0.0)
    kw = {"mc_samples": 3, "mc_batch": 2, "seed": 4} if mc else {}
    need = net.receptive_radius + math.ceil((PSF_K // 2) / F_HR)
    overlap = -(-(2 * need + 16) // 4) * 4  # the automatic overlap, aligned to 2^depth
    tile = 2 * overlap + 12
    h, w = tile + 41, 2 * tile - 10  # 2 x 3 tiles, odd height (padded like the model)
    x = _frames(h, w, seed=3)
    full = predict_sim_sync(net, x, **kw)
    tiled = predict_sim_sync(net, x, tile=tile, **kw)
    assert tiled.meta["n_tiles"] == 6 and tiled.meta["overlap"] == overlap
    assert tiled.meta["blend_margin"] == need and tiled.meta["tiling_exact"]
    assert full.meta["n_tiles"] == 1
    keys = ["emitter", "emitter_std", "lp", "lp_std", "rec", "rec_std", "psf", "psf_std"]
    if mc:
        keys += ["emitter_epistemic_std", "rec_epistemic_std"]
        assert full.emitter_epistemic_std.max() > 1e-3
    for k in keys:
        a, t = getattr(full, k), getattr(tiled, k)
        assert a.shape == t.shape
        err = np.abs(a - t).max() / np.abs(a).max()
        assert err < 1e-4, (k, err)
    np.testing.assert_allclose(tiled.background, full.background, rtol=1e-5)
    if mc:
        return
    # an explicit overlap that leaves no room for the receptive field is NOT exact
    small = predict_sim_sync(net, x, tile=tile, overlap=8)
    assert not small.meta["tiling_exact"]
    assert np.abs(small.emitter - full.emitter).max() / np.abs(full.emitter).max() > 1e-4
    # a tile at least as large as the image is the untiled computation: the same arithmetic,
    # so bit for bit (same model, input and thread)
    big = predict_sim_sync(net, x, tile=max(h, w))
    assert big.meta["n_tiles"] == 1
    for k in ("emitter", "emitter_std", "lp_std", "rec", "rec_std", "psf"):
        np.testing.assert_array_equal(getattr(big, k), getattr(full, k))


def test_tile_too_small_for_exact_tiling_says_why():
    net = _net(depth=2)
    with pytest.raises(InputError, match="too small for exact tiling"):
        predict_sim_sync(net, _frames(80, 80), tile=40)
    # an explicit small overlap gives approximate tiling instead
    res = predict_sim_sync(net, _frames(80, 80), tile=40, overlap=8)
    assert res.meta["n_tiles"] == 9 and not res.meta["tiling_exact"]


def test_stock_model_tiles_with_alignment():
    # GroupNorm model: alignment 4, image not a multiple of 4 (padded like the model)
    net = _net(depth=2, norm="group")
    x = _frames(37, 45, seed=5)
    res = predict_sim_sync(net, x, tile=26, overlap=3)
    assert res.meta["tile"] == 24 and res.meta["overlap"] == 4 and res.meta["tile_align"] == 4
    assert not res.meta["tiling_exact"]
    assert res.meta["n_tiles"] == 2 * 3
    for y0, y1, x0, x1 in res.meta["tile_boxes"]:
        assert y1 - y0 == 24 and x1 - x0 == 24
    assert res.emitter.shape == (74, 90) and res.rec.shape == (9, 37, 45)
    for v in (res.emitter, res.emitter_std, res.lp, res.lp_std, res.rec, res.rec_std, res.psf):
        assert np.isfinite(v).all()
    np.testing.assert_allclose(res.psf.sum(), 1.0, rtol=1e-5)
    full = predict_sim_sync(net, x)  # GroupNorm: close, not equal
    assert np.abs(res.emitter - full.emitter).mean() < 0.2 * np.abs(full.emitter).mean()


def test_tile_helpers():
    assert tile_starts(10, 16, 8) == [0]
    assert tile_starts(40, 16, 8) == [0, 8, 16, 24]
    assert tile_starts(41, 16, 8) == [0, 8, 16, 24, 25]
    r = blend_ramp(16)
    np.testing.assert_allclose(r + r[::-1], 1.0, atol=1e-12)
    assert (r[:4] == 0).all() and (r[-4:] == 1).all() and (np.diff(r) >= 0).all()
    assert blend_ramp(0).size == 0


# ---------------------------------------------------------------- determinism


def test_eval_mode_deterministic_and_modes_restored():
    net = _net(dropout=0.5).train()
    x = _frames(12, 14)
    a, b = predict_sim_sync(net, x), predict_sim_sync(net, x)  # same thread: bit for bit
    for k in ("emitter", "emitter_std", "lp", "rec", "rec_std", "psf"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert all(m.training for m in net.modules())  # modes restored


def test_mc_reproducible_per_seed_and_rng_untouched():
    net = _net(dropout=0.5)
    x = _frames(12, 14)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = predict_sim_sync(net, x, mc_samples=4, mc_batch=2, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is not consumed
    b = predict_sim_sync(net, x, mc_samples=4, mc_batch=2, seed=1)
    c = predict_sim_sync(net, x, mc_samples=4, mc_batch=2, seed=2)
    np.testing.assert_array_equal(a.emitter, b.emitter)
    np.testing.assert_array_equal(a.emitter_epistemic_std, b.emitter_epistemic_std)
    assert np.abs(a.emitter - c.emitter).max() > 1e-4
    assert not any(m.training for m in net.modules())


def test_mc_without_dropout_warns_and_gives_zero_epistemic():
    net = _net(dropout=0.0)
    with pytest.warns(UserWarning, match="identical"):
        res = predict_sim_sync(net, _frames(10, 12), mc_samples=5)
    assert res.meta["mc_samples_drawn"] == 1
    for q in ("emitter", "lp", "psf", "rec"):
        ep = getattr(res, f"{q}_epistemic_std")
        assert ep is not None and (ep == 0).all()
    np.testing.assert_allclose(res.emitter_std, res.emitter_aleatoric_std)


# ---------------------------------------------------------------- events


def test_progress_events_and_result():
    net = _net(dropout=0.5)
    x = _frames(40, 40)
    gen = predict_sim(net, x, mc_samples=5, mc_batch=2, tile=24, overlap=4)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    n_tiles = result.meta["n_tiles"]
    assert n_tiles == 4
    total = 2 * n_tiles * 3  # ceil(5 / 2) chunks per tile, pooling pass + main pass
    assert len(events) == total
    assert all(e.stage == "reconstruct" and e.total == total for e in events)
    assert [e.step for e in events] == list(range(1, total + 1))
    assert "MC samples 5/5" in events[-1].message
    assert isinstance(result, SimPrediction)


def test_close_early_stops_cleanly():
    net = _net(dropout=0.5).train()
    gen = predict_sim(net, _frames(40, 40), mc_samples=4, mc_batch=1, tile=24, overlap=4)
    ev = next(gen)
    assert ev.step == 1
    assert not any(m.training for m in net.modules() if not isinstance(m, nn.Dropout2d))
    assert torch.is_grad_enabled()  # no grad-mode leaks across the yield
    gen.close()
    assert all(m.training for m in net.modules())
    with pytest.raises(StopIteration):
        next(gen)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("frames", "kw", "match"),
    [
        (np.zeros((8, 10, 10), np.float32), {}, "expects 9 frames"),
        (np.zeros((2, 9, 10, 10), np.float32), {}, "time series"),
        (np.zeros((9, 10), np.float32), {}, "one SIM stack"),
        (np.zeros((9, 10, 10), np.uint16), {}, "floating point"),
        ([[0.0]], {}, "NumPy array or a torch tensor"),
        ("nan", {}, "NaN"),
        (None, {"tile": 32, "overlap": 16}, "larger than twice the overlap"),
        (None, {"tile": 10, "overlap": 5}, "larger than twice the overlap"),
        (None, {"mc_samples": -1}, "mc_samples"),
        (None, {"mc_batch": 0}, "mc_batch"),
        (None, {"tile": 0}, "tile"),
        (None, {"sigma_scale": {"emitr": 2.0}}, "unknown sigma_scale"),
        (None, {"sigma_scale": {"raw": -1.0}}, "sigma_scale"),
    ],
)
def test_bad_input(frames, kw, match):
    if frames is None:
        frames = _frames(40, 40)
    elif isinstance(frames, str):
        frames = _frames(10, 10)
        frames[3, 2, 2] = np.nan
    with pytest.raises(InputError, match=match):
        predict_sim_sync(_net(), frames, **kw)


def test_alignment_too_small_tile_is_input_error():
    # depth 3 -> multiples of 8: tile 33 -> 32, overlap 16 -> 16: 32 is not > 32
    with pytest.raises(InputError, match="multiples of 8"):
        predict_sim_sync(_net(depth=3), _frames(48, 48), tile=33, overlap=16)


def test_accepts_tensor_and_angle_phase_layout():
    net = _net()
    x = _frames(10, 12)
    a = predict_sim_sync(net, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = predict_sim_sync(net, torch.from_numpy(x).double())
        c = predict_sim_sync(net, x.reshape(3, 3, 10, 12))
    # the float64 tensor is converted into a new float32 buffer: the same values through the
    # same model, compared up to float32 rounding (issue 11); c is a view of x's own buffer
    atol = 1e-6 * np.abs(a.emitter).max()
    np.testing.assert_allclose(b.emitter, a.emitter, rtol=1e-5, atol=atol)
    np.testing.assert_array_equal(a.rec, c.rec)
