"""Batched torch image-quality metrics against scikit-image, NumPy and the NumPy metrics."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import data as skdata
from skimage import metrics as skm

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.uq import metrics as M

pytestmark = pytest.mark.usefixtures("one_thread")

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _smooth(rng, shape, sigma=3.0):
    img = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (img - img.min()) / (img.max() - img.min())


def _camera():
    return skdata.camera().astype(np.float64) / 255.0  # bundled with scikit-image


def _test_pairs(rng):
    """(x, ref) pairs in [0, 1]: camera crops, noisy versions, smooth random images."""
    cam = _camera()
    pairs = []
    for (r, c), noise in itertools.product([(100, 150), (300, 40)], (0.0, 0.02, 0.1)):
        ref = cam[r : r + 96, c : c + 112]
        x = np.clip(ref + noise * rng.standard_normal(ref.shape), 0.0, 1.0)
        if noise == 0.0:
            x = ndimage.gaussian_filter(ref, 1.0)  # blurred, not noisy
        pairs.append((x, ref))
    for noise in (0.01, 0.05, 0.3):
        ref = _smooth(rng, (96, 112))
        pairs.append((ref + noise * rng.standard_normal(ref.shape), ref))
    return pairs


# ------------------------------------------------------------------ scikit-image agreement


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_psnr_ssim_match_skimage_per_image(rng, dtype):
    pairs = _test_pairs(rng)
    x = np.stack([p[0] for p in pairs]).astype(dtype)
    ref = np.stack([p[1] for p in pairs]).astype(dtype)
    got_psnr = M.psnr_batch(x, ref, 1.0)
    got_ssim = M.ssim_batch(x, ref, 1.0)
    want_dtype = torch.float64 if dtype == np.float64 else torch.float32
    assert got_psnr.shape == got_ssim.shape == (len(pairs),)
    assert got_psnr.dtype == got_ssim.dtype == want_dtype
    want_psnr = [
        skm.peak_signal_noise_ratio(r, a, data_range=1.0) for a, r in zip(x, ref, strict=True)
    ]
    want_ssim = [
        skm.structural_similarity(r, a, data_range=1.0) for a, r in zip(x, ref, strict=True)
    ]
    np.testing.assert_allclose(got_psnr.double().numpy(), want_psnr, rtol=0, atol=1e-3)
    np.testing.assert_allclose(got_ssim.double().numpy(), want_ssim, rtol=0, atol=1e-3)
    # the values span a useful range (not all ~1)
    assert min(want_ssim) < 0.5 < max(want_ssim)
    if dtype == np.float64:  # same maths as the NumPy metrics, to rounding
        np.testing.assert_allclose(
            got_ssim.numpy(),
            [M.ssim(a, r, 1.0) for a, r in zip(x, ref, strict=True)],
            rtol=0,
            atol=1e-10,
        )
        np.testing.assert_allclose(
            got_psnr.numpy(),
            [M.psnr(a, r, 1.0) for a, r in zip(x, ref, strict=True)],
            rtol=0,
            atol=1e-10,
        )


def test_skimage_other_data_range_win_size_and_per_image_range(rng):
    cam = _camera()[200:264, 200:280] * 1000.0
    noisy = cam + 30.0 * rng.standard_normal(cam.shape)
    blur = ndimage.gaussian_filter(cam, 2.0)
    x, ref = np.stack([noisy, blur]), np.stack([cam, cam])
    for win in (7, 5, 11):
        got = M.ssim_batch(x, ref, 1000.0, win_size=win).numpy()
        want = [
            skm.structural_similarity(r, a, data_range=1000.0, win_size=win)
            for a, r in zip(x, ref, strict=True)
        ]
        np.testing.assert_allclose(got, want, atol=1e-3)
    # one data range per image == separate calls
    dr = np.array([1000.0, 250.0])
    for f in (M.psnr_batch, M.ssim_batch, M.ms_ssim_batch):
        per = f(x, ref, torch.tensor(dr)).numpy()
        sep = [float(f(x[i], ref[i], dr[i])[0]) for i in range(2)]
        np.testing.assert_allclose(per, sep, rtol=1e-10)
    want = skm.peak_signal_noise_ratio(cam, blur, data_range=250.0)
    assert float(M.psnr_batch(x, ref, dr)[1]) == pytest.approx(want, abs=1e-3)


def test_layouts_dtypes_and_mixed_inputs(rng):
    ref = _smooth(rng, (3, 40, 48))
    x = ref + 0.05 * rng.standard_normal(ref.shape)
    base = M.ssim_batch(x, ref, 1.0)
    assert base.shape == (3,) and base.dtype == torch.float64
    np.testing.assert_allclose(M.ssim_batch(x[:, None], ref[:, None], 1.0), base, rtol=1e-12)
    np.testing.assert_allclose(M.ssim_batch(torch.from_numpy(x), ref, 1.0), base, rtol=1e-12)
    single = M.psnr_batch(x[1], ref[1], 1.0)
    assert single.shape == (1,)
    assert float(single[0]) == pytest.approx(float(M.psnr_batch(x, ref, 1.0)[1]), rel=1e-12)
    # float32 tensors stay float32; integers are computed in float64
    t32 = M.mse_batch(torch.from_numpy(x).float(), torch.from_numpy(ref).float())
    assert t32.dtype == torch.float32
    u8x, u8r = (x.clip(0, 1) * 255).astype(np.uint8), (ref * 255).astype(np.uint8)
    got = M.psnr_batch(u8x, u8r, 255)
    assert got.dtype == torch.float64
    want = [
        skm.peak_signal_noise_ratio(r, a, data_range=255) for a, r in zip(u8x, u8r, strict=True)
    ]
    np.testing.assert_allclose(got.numpy(), want, atol=1e-3)
    # float16 input is computed in float32; mixed dtypes are promoted
    h = torch.zeros(2, 8, 8, dtype=torch.float16)
    assert M.mse_batch(h, h).dtype == torch.float32
    assert M.mse_batch(h, np.zeros((2, 8, 8))).dtype == torch.float64


# ------------------------------------------------------------------ MSE / PSNR with masks


def test_masked_mse_psnr_match_numpy(rng):
    ref = rng.random((4, 30, 20))
    x = ref + 0.1 * rng.standard_normal(ref.shape)
    mask = rng.random(ref.shape) < 0.3
    mask[2] = False  # image 2 selects nothing -> NaN
    x_bad = x.copy()
    x_bad[~mask] = np.nan  # outside the mask: ignored
    mse = M.mse_batch(x_bad, ref, mask=mask).numpy()
    psnr = M.psnr_batch(x_bad, ref, 2.0, mask=torch.from_numpy(mask)).numpy()
    for i in range(4):
        if i == 2:
            assert np.isnan(mse[i]) and np.isnan(psnr[i])
            continue
        d = x[i][mask[i]] - ref[i][mask[i]]
        want = np.sum(d * d) / d.size
        assert mse[i] == pytest.approx(want, rel=1e-12)
        assert psnr[i] == pytest.approx(10 * np.log10(4.0 / want), rel=1e-12)
    # 0/1 masks are accepted and equal to boolean ones
    np.testing.assert_array_equal(
        M.mse_batch(x, ref, mask=mask.astype(np.uint8)).numpy(), M.mse_batch(x, ref, mask=mask)
    )
    # no mask: plain per-image mean
    np.testing.assert_allclose(
        M.mse_batch(x, ref).numpy(), ((x - ref) ** 2).mean(axis=(1, 2)), rtol=1e-12
    )


def test_identical_images_give_inf_psnr_and_unit_ssim(rng):
    ref = _smooth(rng, (2, 64, 64))
    assert torch.isinf(M.psnr_batch(ref, ref, 1.0)).all()
    assert (M.psnr_batch(ref, ref, 1.0) > 0).all()
    np.testing.assert_allclose(M.ssim_batch(ref, ref, 1.0).numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(M.ms_ssim_batch(ref, ref, 1.0).numpy(), 1.0, atol=1e-12)


# ------------------------------------------------------------------------------ MS-SSIM


def test_ms_ssim_plan_rule():
    p = M.ms_ssim_plan(256, 300)
    assert (p["win_size"], p["n_scales"], p["weights"]) == (11, 5, M.MS_SSIM_WEIGHTS)
    assert M.ms_ssim_plan(176, 176)["n_scales"] == 5
    assert M.ms_ssim_plan(175, 400)["n_scales"] == 4  # 175 // 16 = 10 < 11
    p = M.ms_ssim_plan(32, 32)
    assert (p["win_size"], p["n_scales"]) == (11, 2)
    w = np.array(M.MS_SSIM_WEIGHTS[:2])
    np.testing.assert_allclose(p["weights"], w / w.sum(), rtol=1e-15)
    assert sum(p["weights"]) == pytest.approx(1.0, abs=1e-15)
    assert M.ms_ssim_plan(11, 11) == {"win_size": 11, "n_scales": 1, "weights": (1.0,)}
    assert M.ms_ssim_plan(10, 64) == {"win_size": 7, "n_scales": 1, "weights": (1.0,)}
    assert M.ms_ssim_plan(14, 64)["win_size"] == 11  # 11 fits at one scale: keep it
    assert M.ms_ssim_plan(64, 64, win_size=7)["n_scales"] == 4  # 64 // 8 = 8 >= 7
    assert M.ms_ssim_plan(64, 64, weights=[0.5, 0.5])["win_size"] == 11
    assert M.ms_ssim_plan(20, 64, weights=[0.5, 0.5])["win_size"] == 7  # 10 < 11
    with pytest.raises(InputError, match="smaller than the 7-pixel MS-SSIM window"):
        M.ms_ssim_plan(6, 64)
    with pytest.raises(InputError, match="too small for 5 scales"):
        M.ms_ssim_plan(64, 64, weights=M.MS_SSIM_WEIGHTS)


def test_ms_ssim_batch_equals_ms_ssim_at_five_scales(rng):
    ref = _smooth(rng, (3, 256, 256))
    x = ref + np.array([0.02, 0.1, 0.3])[:, None, None] * rng.standard_normal(ref.shape)
    got, plan = M.ms_ssim_batch(x, ref, 1.0, return_plan=True)
    assert plan["n_scales"] == 5 and plan["win_size"] == 11
    want = M.ms_ssim(x[:, None], ref[:, None], 1.0, reduction="none")[:, 0]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    assert float(got[0]) == pytest.approx(M.ms_ssim(x[0], ref[0], 1.0), rel=1e-12)


def _block_mean(a):
    h, w = a.shape[0] // 2, a.shape[1] // 2
    return a[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))


@pytest.mark.parametrize("size", [32, 64])
def test_ms_ssim_constant_offset_is_luminance_term(rng, size):
    """x = ref + c: every contrast-structure term is exactly 1, so MS-SSIM is the mean
    luminance term at the coarsest scale to the power of the coarsest weight."""
    dr, c = 1.0, 0.15
    ref = _smooth(rng, (size, size))
    x = ref + c
    got, plan = M.ms_ssim_batch(x, ref, dr, return_plan=True)
    n = plan["n_scales"]
    assert n == {32: 2, 64: 3}[size] and plan["win_size"] == 11
    w = np.array(M.MS_SSIM_WEIGHTS[:n])
    w_last = w[-1] / w.sum()
    # independent: block means, scipy Gaussian filter (radius 5) with the border cut off
    r = ref
    for _ in range(n - 1):
        r = _block_mean(r)
    my = ndimage.gaussian_filter(r, 1.5, truncate=5 / 1.5)[5:-5, 5:-5]
    mx = my + c  # the window sums to 1
    c1 = (0.01 * dr) ** 2
    lum = np.mean((2 * mx * my + c1) / (mx**2 + my**2 + c1))
    assert float(got[0]) == pytest.approx(lum**w_last, abs=1e-10)
    assert float(got[0]) < 1.0
    # constant images: the luminance term is one number in closed form
    a = 0.3
    lum0 = (2 * a * (a + c) + c1) / (a**2 + (a + c) ** 2 + c1)
    got0 = M.ms_ssim_batch(np.full((size, size), a + c), np.full((size, size), a), dr)
    assert float(got0[0]) == pytest.approx(lum0**w_last, abs=1e-12)


def test_ms_ssim_small_images_and_monotone_in_noise(rng):
    for size in (32, 64, 256):
        ref = _smooth(rng, (size, size), sigma=2.0)
        noise = rng.standard_normal((size, size))
        levels = [0.0, 0.01, 0.03, 0.1, 0.3]
        x = np.stack([ref + s * noise for s in levels])
        refs = np.broadcast_to(ref, x.shape)
        for f in (M.ms_ssim_batch, M.ssim_batch):
            v = f(x, refs, 1.0).numpy()
            assert v[0] == pytest.approx(1.0, abs=1e-12)
            assert np.all(np.diff(v) < 0), (f.__name__, size, v)
        p = M.psnr_batch(x[1:], refs[1:], 1.0).numpy()
        assert np.all(np.diff(p) < 0)
    # 8x8: one scale with the 7-pixel Gaussian window == ms_ssim with those settings
    ref = rng.random((8, 8))
    x = ref + 0.1 * rng.standard_normal((8, 8))
    got, plan = M.ms_ssim_batch(x, ref, 1.0, return_plan=True)
    assert (plan["win_size"], plan["n_scales"]) == (7, 1)
    want = M.ms_ssim(x, ref, 1.0, weights=[1.0], win_size=7)
    assert float(got[0]) == pytest.approx(want, rel=1e-12)
    # explicit weights/window are used as given
    ref = _smooth(rng, (64, 64))
    x = ref + 0.05 * rng.standard_normal((64, 64))
    got = M.ms_ssim_batch(x, ref, 1.0, weights=[0.3, 0.7], win_size=9)
    want = M.ms_ssim(x, ref, 1.0, weights=[0.3, 0.7], win_size=9)
    assert float(got[0]) == pytest.approx(want, rel=1e-12)


# ------------------------------------------------------------------------ image_quality


def test_image_quality_matches_single_functions(rng):
    ref = _smooth(rng, (3, 48, 48))
    x = ref + 0.05 * rng.standard_normal(ref.shape)
    mask = rng.random(ref.shape) < 0.5
    res = M.image_quality(x, ref, 1.0, mask=mask)
    assert list(res) == ["mse", "psnr", "ssim", "ms_ssim"]
    assert all(v.shape == (3,) and v.dtype == torch.float64 for v in res.values())
    np.testing.assert_allclose(res["mse"], M.mse_batch(x, ref, mask=mask), rtol=1e-12)
    np.testing.assert_allclose(res["psnr"], M.psnr_batch(x, ref, 1.0, mask=mask), rtol=1e-12)
    np.testing.assert_allclose(res["ssim"], M.ssim_batch(x, ref, 1.0), rtol=1e-12)  # no mask
    np.testing.assert_allclose(res["ms_ssim"], M.ms_ssim_batch(x, ref, 1.0), rtol=1e-12)
    sub = M.image_quality(x, ref, 1.0, metrics=("ssim", "psnr"))
    assert list(sub) == ["ssim", "psnr"]
    np.testing.assert_allclose(sub["psnr"], M.psnr_batch(x, ref, 1.0), rtol=1e-12)
    assert list(M.image_quality(x, ref, 1.0, metrics="mse")) == ["mse"]
    # NaN outside the mask is fine for MSE/PSNR alone, not with the full-image metrics
    x_bad = x.copy()
    x_bad[~mask] = np.nan
    ok = M.image_quality(x_bad, ref, 1.0, mask=mask, metrics=("mse", "psnr"))
    np.testing.assert_allclose(ok["psnr"], res["psnr"], rtol=1e-12)
    with pytest.raises(InputError, match="SSIM and MS-SSIM use every pixel"):
        M.image_quality(x_bad, ref, 1.0, mask=mask)
    with pytest.raises(InputError, match="metrics must be"):
        M.image_quality(x, ref, 1.0, metrics=("psnr", "lpips"))
    with pytest.raises(InputError, match="metrics must be"):
        M.image_quality(x, ref, 1.0, metrics=())


# ------------------------------------------------------------------------------- device


@CUDA
def test_cuda_matches_cpu(rng):
    ref = _smooth(rng, (4, 64, 72))
    x = ref + 0.05 * rng.standard_normal(ref.shape)
    mask = rng.random(ref.shape) < 0.5
    cpu = M.image_quality(x, ref, 1.0)
    cpu_m = M.psnr_batch(x, ref, 1.0, mask=mask)
    xg = torch.from_numpy(x).cuda()
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        # the NumPy ref follows x to the GPU (a float64 array would promote float32 x)
        gpu = M.image_quality(xg.to(dtype), ref.astype(str(dtype)[6:]), 1.0)
        for k, v in gpu.items():
            assert v.device.type == "cuda" and v.dtype == dtype, k
            np.testing.assert_allclose(v.double().cpu().numpy(), cpu[k].numpy(), rtol=tol)
        got = M.psnr_batch(xg.to(dtype), torch.from_numpy(ref).cuda().to(dtype), 1.0, mask=mask)
        assert got.device.type == "cuda"
        np.testing.assert_allclose(got.double().cpu().numpy(), cpu_m.numpy(), rtol=tol)
    with pytest.raises(InputError, match="different devices"):
        M.mse_batch(xg, torch.from_numpy(ref))


# ---------------------------------------------------------------------------- bad input


def test_bad_input_raises_input_error():
    a = np.zeros((2, 16, 16))
    with pytest.raises(InputError, match=r"psnr_batch: x and ref must have the same shape"):
        M.psnr_batch(a, np.zeros((2, 16, 15)), 1.0)
    with pytest.raises(InputError, match="same shape"):
        M.ssim_batch(torch.zeros(2, 16, 16), torch.zeros(3, 16, 16), 1.0)
    nan = a.copy()
    nan[1, 3, 4] = np.nan
    with pytest.raises(InputError, match=r"x contains 1 NaN"):
        M.psnr_batch(nan, a, 1.0)
    with pytest.raises(InputError, match=r"ref contains 1 NaN"):
        M.ms_ssim_batch(a, torch.from_numpy(nan), 1.0)
    with pytest.raises(InputError, match=r"ssim_batch: x contains 1 NaN"):
        M.ssim_batch(nan, a, 1.0)
    for dr in (0.0, -1.0, float("nan"), None, "a", [1.0, 2.0, 3.0], [1.0, 0.0]):
        with pytest.raises(InputError, match="data_range"):
            M.psnr_batch(a, a, dr)
    with pytest.raises(InputError, match="data_range"):
        M.image_quality(a, a, torch.tensor(-1.0))
    with pytest.raises(InputError, match="empty batch"):
        M.mse_batch(np.zeros((0, 16, 16)), np.zeros((0, 16, 16)))
    with pytest.raises(InputError, match="empty batch"):
        M.image_quality(torch.zeros(0, 1, 16, 16), torch.zeros(0, 1, 16, 16), 1.0)
    with pytest.raises(InputError, match="empty images"):
        M.mse_batch(np.zeros((2, 0, 16)), np.zeros((2, 0, 16)))
    with pytest.raises(InputError, match=r"3 channels.*reshape"):
        M.ssim_batch(np.zeros((2, 3, 16, 16)), np.zeros((2, 3, 16, 16)), 1.0)
    with pytest.raises(InputError, match="expected images of shape"):
        M.mse_batch(np.zeros(16), np.zeros(16))
    with pytest.raises(InputError, match="mask has shape"):
        M.mse_batch(a, a, mask=np.ones((2, 16), bool))
    with pytest.raises(InputError, match="mask must be boolean"):
        M.mse_batch(a, a, mask=np.full(a.shape, 2))
    with pytest.raises(InputError, match="numeric"):
        M.mse_batch(np.array([["a", "b"]]), np.array([["a", "b"]]))
    with pytest.raises(InputError, match="real-valued"):
        M.mse_batch(a + 1j, a)
    with pytest.raises(InputError, match="ref is missing"):
        M.mse_batch(a, None)
    with pytest.raises(InputError, match="win_size must be odd"):
        M.ssim_batch(a, a, 1.0, win_size=6)
    with pytest.raises(InputError, match="smaller than the 7-pixel window"):
        M.ssim_batch(np.zeros((2, 6, 16)), np.zeros((2, 6, 16)), 1.0)
    with pytest.raises(InputError, match="smaller than the 7-pixel MS-SSIM window"):
        M.ms_ssim_batch(np.zeros((5, 16)), np.zeros((5, 16)), 1.0)
    with pytest.raises(InputError, match="too small for 3 scales"):
        M.ms_ssim_batch(a, a, 1.0, weights=[0.2, 0.3, 0.5])
    with pytest.raises(InputError, match="win_sigma"):
        M.ms_ssim_batch(a, a, 1.0, win_sigma=0.0)
