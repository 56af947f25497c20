"""Metrics against independent references: scikit-image, SciPy, brute force, Monte Carlo."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.uq import metrics as M

# ----------------------------------------------------------------------------- helpers


def _smooth_image(rng, shape, sigma=3.0):
    img = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    img = (img - img.min()) / (img.max() - img.min())
    return img


def _pair(rng, shape=(64, 80), noise=0.05, scale=1.0):
    ref = _smooth_image(rng, shape) * scale
    x = ref + noise * scale * rng.standard_normal(shape)
    return x, ref


def _ref_ms_ssim(a, b, data_range, weights):
    """Independent MS-SSIM: scipy gaussian_filter (radius 5) + valid crop, 2x2 block means."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def gf(z):
        return ndimage.gaussian_filter(z, 1.5, truncate=5 / 1.5)[5:-5, 5:-5]

    vals = []
    for j in range(len(weights)):
        mx, my = gf(a), gf(b)
        vx = gf(a * a) - mx**2
        vy = gf(b * b) - my**2
        cxy = gf(a * b) - mx * my
        cs = (2 * cxy + c2) / (vx + vy + c2)
        lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
        if j < len(weights) - 1:
            vals.append(cs.mean())
            h, w = a.shape[0] // 2, a.shape[1] // 2
            a = a[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))
            b = b[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))
        else:
            vals.append((lum * cs).mean())
    return float(np.prod(np.array(vals) ** np.asarray(weights)))


def _percentile(a, p):
    """Linear-interpolation percentile written out (independent of np.percentile)."""
    s = np.sort(a.ravel())
    pos = p / 100 * (s.size - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, s.size - 1)
    return s[lo] + (pos - lo) * (s[hi] - s[lo])


@pytest.fixture(scope="module")
def mc():
    """Calibrated heteroscedastic Monte Carlo data: r ~ N(0, sigma^2)."""
    rng = np.random.default_rng(7)
    n = 200_000
    sigma = 0.1 * np.exp(0.5 * rng.standard_normal(n))
    r = sigma * rng.standard_normal(n)
    return r, sigma


# ----------------------------------------------------------------------------- image quality


def test_mse_matches_numpy(rng):
    x, ref = _pair(rng)
    assert M.mse(x, ref) == pytest.approx(np.mean((x - ref) ** 2), rel=1e-12)
    assert M.mse(torch.from_numpy(x), torch.from_numpy(ref)) == pytest.approx(M.mse(x, ref))
    assert M.mse(ref, ref) == 0.0


@pytest.mark.parametrize("data_range", [1.0, 2.0, 255.0])
def test_psnr_matches_skimage(rng, data_range):
    skm = pytest.importorskip("skimage.metrics")
    x, ref = _pair(rng, scale=data_range)
    expected = skm.peak_signal_noise_ratio(ref, x, data_range=data_range)
    assert M.psnr(x, ref, data_range) == pytest.approx(expected, abs=1e-9)
    assert M.psnr(ref, ref, data_range) == math.inf


@pytest.mark.parametrize("data_range", [0.5, 1.0, 4.0, 255.0])
@pytest.mark.parametrize("noise", [0.02, 0.3])
def test_ssim_matches_skimage_2d(rng, data_range, noise):
    skm = pytest.importorskip("skimage.metrics")
    x, ref = _pair(rng, shape=(61, 80), noise=noise)
    expected = skm.structural_similarity(ref, x, data_range=data_range)
    assert M.ssim(x, ref, data_range) == pytest.approx(expected, abs=1e-6)


def test_ssim_matches_skimage_3d_and_win_size(rng):
    skm = pytest.importorskip("skimage.metrics")
    x, ref = _pair(rng, shape=(12, 20, 24), noise=0.1)
    assert M.ssim(x, ref, 1.0) == pytest.approx(
        skm.structural_similarity(ref, x, data_range=1.0), abs=1e-6
    )
    x, ref = _pair(rng, noise=0.1)
    assert M.ssim(x, ref, 1.0, win_size=5) == pytest.approx(
        skm.structural_similarity(ref, x, data_range=1.0, win_size=5), abs=1e-6
    )
    assert M.ssim(ref, ref, 1.0) == pytest.approx(1.0, abs=1e-12)


def test_nrmse_percentile_normalised(rng):
    x, ref = _pair(rng, noise=0.1)
    expected = []
    for a in (x, ref):
        lo, hi = _percentile(a, 0.1), _percentile(a, 99.9)
        expected.append((a - lo) / (hi - lo))
    want = np.sqrt(np.mean((expected[0] - expected[1]) ** 2))
    assert M.nrmse(x, ref) == pytest.approx(want, rel=1e-12)
    # invariant to a positive affine change of either image
    assert M.nrmse(3.0 * x + 7.0, ref) == pytest.approx(want, rel=1e-9)
    assert M.nrmse(ref, ref) == 0.0
    with pytest.raises(InputError, match="constant"):
        M.nrmse(np.ones((8, 8)), ref[:8, :8])


# ----------------------------------------------------------------------------- MS-SSIM


def test_ms_ssim_single_scale_matches_gaussian_ssim_reference(rng):
    x, ref = _pair(rng, shape=(40, 52), noise=0.1)
    for dr in (1.0, 3.0):
        want = _ref_ms_ssim(x, ref, dr, [1.0])
        assert M.ms_ssim(x, ref, dr, weights=[1.0]) == pytest.approx(want, abs=1e-10)


def test_ms_ssim_five_scales_matches_reference(rng):
    x, ref = _pair(rng, shape=(181, 200), noise=0.1)
    want = _ref_ms_ssim(x, ref, 1.0, M.MS_SSIM_WEIGHTS)
    assert M.ms_ssim(x, ref, 1.0) == pytest.approx(want, abs=1e-10)
    # torch float32 path on (B, C, H, W)
    xt = torch.from_numpy(x).float()[None, None]
    rt = torch.from_numpy(ref).float()[None, None]
    got = M.ms_ssim(xt, rt, 1.0)
    assert isinstance(got, torch.Tensor) and got.ndim == 0
    assert float(got) == pytest.approx(want, abs=1e-4)


def test_ms_ssim_identity_and_monotone_in_noise(rng):
    ref = _smooth_image(rng, (176, 176))
    assert M.ms_ssim(ref, ref, 1.0) == pytest.approx(1.0, abs=1e-12)
    noise = rng.standard_normal(ref.shape)
    vals = [M.ms_ssim(ref + s * noise, ref, 1.0) for s in (0.01, 0.03, 0.1, 0.3)]
    assert vals[0] < 1.0
    assert all(a > b for a, b in itertools.pairwise(vals)), vals


def test_ms_ssim_batch_and_reduction(rng):
    x = torch.from_numpy(rng.random((2, 2, 176, 180)))
    y = torch.from_numpy(rng.random((2, 2, 176, 180)) * 0.3) + 0.7 * x
    per = M.ms_ssim(x, y, 1.0, reduction="none")
    assert per.shape == (2, 2)
    for b in range(2):
        for c in range(2):
            assert float(per[b, c]) == pytest.approx(
                M.ms_ssim(x[b, c].numpy(), y[b, c].numpy(), 1.0), abs=1e-12
            )
    assert float(M.ms_ssim(x, y, 1.0)) == pytest.approx(float(per.mean()), abs=1e-12)


def test_ms_ssim_gradient_matches_finite_difference(rng):
    ref = torch.from_numpy(_smooth_image(rng, (176, 176)))[None, None]
    x0 = ref + 0.1 * torch.from_numpy(rng.standard_normal((1, 1, 176, 176)))
    x = x0.clone().requires_grad_(True)
    val = M.ms_ssim(x, ref, 1.0)
    val.backward()
    assert torch.isfinite(x.grad).all()
    d = torch.from_numpy(rng.standard_normal(x0.shape))
    eps = 1e-5
    with torch.no_grad():
        fd = (M.ms_ssim(x0 + eps * d, ref, 1.0) - M.ms_ssim(x0 - eps * d, ref, 1.0)) / (2 * eps)
    assert float((x.grad * d).sum()) == pytest.approx(float(fd), rel=1e-5)
    # one gradient-ascent step improves the similarity (it works as a training loss)
    with torch.no_grad():
        x1 = x0 + 1e-2 * x.grad / x.grad.abs().max()
    assert float(M.ms_ssim(x1, ref, 1.0)) > float(val)


def test_ms_ssim_bad_input():
    small = np.zeros((100, 100))
    with pytest.raises(InputError, match="too small"):
        M.ms_ssim(small, small, 1.0)
    with pytest.raises(InputError, match="same shape"):
        M.ms_ssim(torch.zeros(1, 1, 176, 176), torch.zeros(1, 1, 176, 177), 1.0)
    with pytest.raises(InputError, match=r"\(H, W\) or \(B, C, H, W\)"):
        M.ms_ssim(np.zeros((3, 176, 176)), np.zeros((3, 176, 176)), 1.0)
    with pytest.raises(InputError, match="data_range"):
        M.ms_ssim(np.zeros((176, 176)), np.zeros((176, 176)), 0.0)


# ----------------------------------------------------------------------------- calibration


def test_calibrated_monte_carlo(mc):
    r, sigma = mc
    mv = np.mean(sigma**2)
    assert M.zms(r, sigma) == pytest.approx(1.0, abs=0.015)
    assert M.calib_ratio(r, sigma) == pytest.approx(1.0, abs=0.03)
    assert M.sigma_scale(r, sigma) == pytest.approx(1.0, abs=0.008)
    assert M.coverage(r, sigma, M.LEVEL_1SIGMA) == pytest.approx(0.682689, abs=0.005)
    assert M.coverage(r, sigma, M.LEVEL_2SIGMA) == pytest.approx(0.954500, abs=0.003)
    assert M.coverage(r, sigma, 0.9) == pytest.approx(0.9, abs=0.004)
    assert M.uce(r, sigma) / mv < 0.03
    assert M.uce(r, sigma, 20, "equal_width") / mv < 0.05
    assert M.mace(r, sigma) < 0.005
    assert M.miscalibration_area(r, sigma) < 0.005
    curve = M.calibration_curve(r, sigma, 10)
    assert curve["count"].sum() == r.size
    np.testing.assert_allclose(curve["mse"], curve["mean_variance"], rtol=0.08)
    assert np.all(np.diff(curve["mean_variance"]) > 0)


def test_overestimated_sigma_monte_carlo(mc):
    r, sigma = mc
    s2 = 2.0 * sigma
    assert M.zms(r, s2) == pytest.approx(0.25, abs=0.005)
    assert M.calib_ratio(r, s2) == pytest.approx(0.25, abs=0.01)
    assert M.sigma_scale(r, s2) == pytest.approx(0.5, abs=0.005)
    assert M.coverage(r, s2, M.LEVEL_1SIGMA) == pytest.approx(0.9545, abs=0.005)
    assert M.coverage(r, s2, M.LEVEL_2SIGMA) > 0.99
    assert M.uce(r, s2) / np.mean(sigma**2) > 2.0  # MV = 4 MSE
    assert M.mace(r, s2) > 0.1
    curve = M.calibration_curve(r, s2, 10)
    np.testing.assert_allclose(curve["mse"], curve["mean_variance"] / 4, rtol=0.08)
    # closed-form recalibration restores ZMS = 1 exactly and coverage ~ nominal
    s_fit = M.sigma_scale(r, s2) * s2
    assert M.zms(r, s_fit) == pytest.approx(1.0, abs=1e-12)
    assert M.coverage(r, s_fit, M.LEVEL_1SIGMA) == pytest.approx(0.6827, abs=0.008)


def test_gaussian_nll_matches_scipy(mc):
    r, sigma = mc
    want = -np.mean(stats.norm.logpdf(r, loc=0.0, scale=sigma))
    assert M.gaussian_nll(r, sigma) == pytest.approx(want, rel=1e-10)
    # the NLL-optimal scale does minimise the NLL over s * sigma
    s = M.sigma_scale(r, 3 * sigma) * 3 * sigma
    best = M.gaussian_nll(r, s)
    assert best < M.gaussian_nll(r, 1.05 * s) and best < M.gaussian_nll(r, 0.95 * s)


def test_spearman(mc, rng):
    r, sigma = mc
    assert M.spearman(sigma, np.abs(r)) > 0.2
    assert abs(M.spearman(rng.permutation(sigma), np.abs(r))) < 0.012
    # matches scipy, with ties (rounded values)
    a = np.round(rng.random(500) * 10) + 1
    b = np.round(a + 3 * rng.random(500))
    assert M.spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
    # deterministic subsample above max_samples (fixed-seed uniform subset)
    idx = np.sort(np.random.default_rng(0).choice(r.size, size=5000, replace=False))
    got = M.spearman(sigma, r, max_samples=5000)
    want = stats.spearmanr(sigma[idx], np.abs(r[idx]))[0]
    assert got == pytest.approx(want, abs=1e-12)
    assert got == M.spearman(sigma, r, max_samples=5000)


def test_uce_and_curve_brute_force(rng):
    n, n_bins = 200, 8
    sigma = rng.uniform(0.5, 2.0, n)
    r = rng.standard_normal(n) * rng.uniform(0.5, 2.0, n)
    v = sigma**2
    # equal width: np.histogram bin edges, last edge inclusive
    edges = np.histogram_bin_edges(v, bins=n_bins)
    which = np.digitize(v, edges[1:-1])
    bins_w = [np.flatnonzero(which == m) for m in range(n_bins)]
    # equal count: sorted variances cut into n_bins consecutive blocks of 25
    bins_c = np.array_split(np.argsort(v), n_bins)
    for binning, bins in (("equal_width", bins_w), ("equal_count", bins_c)):
        want = sum(len(b) / n * abs(np.mean(r[b] ** 2) - np.mean(v[b])) for b in bins if len(b))
        assert M.uce(r, sigma, n_bins, binning) == pytest.approx(want, rel=1e-12)
        curve = M.calibration_curve(r, sigma, n_bins, binning)
        np.testing.assert_array_equal(curve["count"], [len(b) for b in bins])
        for m, b in enumerate(bins):
            if len(b):
                assert curve["mse"][m] == pytest.approx(np.mean(r[b] ** 2), rel=1e-12)
                assert curve["mean_variance"][m] == pytest.approx(np.mean(v[b]), rel=1e-12)
    np.testing.assert_allclose(
        M.calibration_curve(r, sigma, n_bins, "equal_width")["bin_edges"], edges
    )
    # counts differ by at most one when N is not a multiple of n_bins
    c = M.calibration_curve(r[:197], sigma[:197], n_bins)["count"]
    assert c.sum() == 197 and c.max() - c.min() <= 1


def test_interval_calibration_matches_toolbox_style_brute_force(rng):
    # Student-t residuals with the right variance: observed-vs-expected crosses the diagonal
    n = 4000
    sigma = rng.uniform(0.5, 2.0, n)
    r = sigma * rng.standard_t(3, n) / np.sqrt(3.0)
    levels = np.linspace(0.01, 0.99, 100)
    z = r / sigma
    obs = np.array(
        [
            np.mean((z >= stats.norm.ppf(0.5 - p / 2)) & (z <= stats.norm.ppf(0.5 + p / 2)))
            for p in levels
        ]
    )
    res = M.interval_calibration(r, sigma)
    np.testing.assert_allclose(res["expected"], levels)
    np.testing.assert_allclose(res["observed"], obs)
    assert res["mace"] == pytest.approx(np.mean(np.abs(obs - levels)), rel=1e-12)
    diff = obs - levels
    assert np.any(diff > 0.01) and np.any(diff < -0.01)  # crossings really happen
    fine = np.linspace(0.01, 0.99, 400_001)
    d_fine = np.abs(np.interp(fine, levels, diff))
    area = np.sum(np.diff(fine) * (d_fine[1:] + d_fine[:-1]) / 2)
    assert res["miscalibration_area"] == pytest.approx(area, abs=1e-8)
    assert M.mace(r, sigma) == res["mace"]
    assert M.miscalibration_area(r, sigma) == res["miscalibration_area"]


def test_ause_brute_force(rng):
    n, n_steps = 57, 10
    r = rng.standard_normal(n)
    sigma = rng.uniform(0.1, 1.0, n)
    fr = np.arange(n_steps) / n_steps

    def sparsify(key, err):
        out = []
        for f in fr:
            k = int(np.floor(f * n))
            keep = np.argsort(-key)[k:]  # remove the k largest keys
            e = np.mean(r[keep] ** 2)
            out.append(np.sqrt(e) if err == "rmse" else e)
        return np.array(out)

    for err, norm in (("rmse", True), ("mse", False)):
        c, o = sparsify(sigma, err), sparsify(np.abs(r), err)
        if norm:
            c, o = c / c[0], o / c[0]
        res = M.ause(r, sigma, n_steps, error=err, normalize=norm)
        np.testing.assert_allclose(res["curve"], c, rtol=1e-12)
        np.testing.assert_allclose(res["oracle"], o, rtol=1e-12)
        assert res["ause"] == pytest.approx(np.trapezoid(c - o, fr), rel=1e-12)
        assert res["error"] == err and res["normalized"] is norm


def test_ause_oracle_and_random(mc, rng):
    r, sigma = mc
    oracle = M.ause(r, np.abs(r))
    assert abs(oracle["ause"]) < 1e-12
    np.testing.assert_array_equal(oracle["curve"], oracle["oracle"])
    rand = M.ause(r, rng.permutation(sigma))
    good = M.ause(r, sigma)
    assert rand["ause"] > 0.2
    assert 0 < good["ause"] < rand["ause"]
    assert good["curve"][0] == 1.0 and np.all(good["curve"] >= good["oracle"] - 1e-12)


def test_calibration_report_consistent(mc, rng):
    r, sigma = mc
    mu = rng.standard_normal(r.size)
    x = mu + r
    rep = M.calibration_report(x, mu, sigma)
    expected_keys = {
        "n", "mse", "zms", "calib_ratio", "sigma_scale", "nll", "spearman", "cov68",
        "cov95", "uce", "mace", "miscalibration_area", "ause",
    }  # fmt: skip
    assert set(rep) == expected_keys
    assert all(isinstance(v, (int, float)) for v in rep.values())
    rr = x - mu
    assert rep["n"] == r.size
    assert rep["zms"] == pytest.approx(M.zms(rr, sigma), rel=1e-12)
    assert rep["calib_ratio"] == pytest.approx(M.calib_ratio(rr, sigma), rel=1e-12)
    assert rep["sigma_scale"] == pytest.approx(M.sigma_scale(rr, sigma), rel=1e-12)
    assert rep["nll"] == pytest.approx(M.gaussian_nll(rr, sigma), rel=1e-12)
    assert rep["spearman"] == pytest.approx(M.spearman(sigma, rr), rel=1e-12)
    assert rep["cov68"] == pytest.approx(M.coverage(rr, sigma, M.LEVEL_1SIGMA), abs=1e-5)
    assert rep["cov95"] == pytest.approx(M.coverage(rr, sigma, M.LEVEL_2SIGMA), abs=1e-5)
    assert rep["uce"] == pytest.approx(M.uce(rr, sigma), rel=1e-12)
    assert rep["mace"] == pytest.approx(M.mace(rr, sigma), rel=1e-12)
    assert rep["ause"] == pytest.approx(M.ause(rr, sigma)["ause"], rel=1e-12)
    assert rep["cov68"] == pytest.approx(0.6827, abs=0.005)


def test_mask_and_torch_inputs(rng):
    r = rng.standard_normal((32, 32))
    sigma = rng.uniform(0.5, 2.0, (32, 32))
    mask = np.zeros((32, 32), bool)
    mask[4:20, 8:30] = True
    r_bad, s_bad = r.copy(), sigma.copy()
    r_bad[0, 0], s_bad[31, 31] = np.nan, 0.0  # outside the mask: ignored
    assert M.zms(r_bad, s_bad, mask=mask) == pytest.approx(M.zms(r[mask], sigma[mask]))
    assert M.uce(r_bad, s_bad, 5, mask=mask) == pytest.approx(M.uce(r[mask], sigma[mask], 5))
    rep = M.calibration_report(r_bad, np.zeros_like(r), s_bad, mask)
    assert rep["n"] == mask.sum()
    assert rep["zms"] == pytest.approx(M.zms(r[mask], sigma[mask]))
    rt, st = torch.from_numpy(r).float(), torch.from_numpy(sigma).float()
    assert M.zms(rt, st, mask=torch.from_numpy(mask)) == pytest.approx(
        M.zms(rt.double().numpy()[mask], st.double().numpy()[mask]), rel=1e-12
    )


def test_bad_input_raises_input_error():
    a = np.ones((4, 5))
    with pytest.raises(InputError, match=r"same shape.*\(4, 5\).*\(5, 4\)"):
        M.mse(a, np.ones((5, 4)))
    with pytest.raises(InputError, match="same shape"):
        M.calibration_report(a, a, np.ones((4, 4)))
    with pytest.raises(InputError, match="same shape"):
        M.zms(a, np.ones(20))
    with pytest.raises(InputError, match=r"sigma must be > 0.*1 value"):
        M.zms(a, np.where(np.eye(4, 5, dtype=bool) & (np.arange(5) == 2), -1.0, 1.0))
    with pytest.raises(InputError, match="sigma must be > 0"):
        M.calibration_report(a, a, np.zeros((4, 5)))
    nan_r = a.copy()
    nan_r[1, 2] = np.nan
    with pytest.raises(InputError, match=r"r contains 1 NaN"):
        M.coverage(nan_r, a, 0.5)
    with pytest.raises(InputError, match="sigma contains 1 NaN"):
        M.uce(a, nan_r)
    with pytest.raises(InputError, match="x contains 1 NaN"):
        M.psnr(nan_r, a, 1.0)
    with pytest.raises(InputError, match="empty"):
        M.zms(np.array([]), np.array([]))
    with pytest.raises(InputError, match="empty"):
        M.mse(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(InputError, match="mask selects no pixels"):
        M.zms(a, a, mask=np.zeros((4, 5), bool))
    with pytest.raises(InputError, match="mask has shape"):
        M.zms(a, a, mask=np.ones((5, 4), bool))
    for dr in (0.0, -1.0, float("nan"), None):
        with pytest.raises(InputError, match="data_range"):
            M.psnr(a, a, dr)
    with pytest.raises(InputError, match="level"):
        M.coverage(a, a, 1.5)
    with pytest.raises(InputError, match="binning"):
        M.uce(a, a, 4, "quantile")
    with pytest.raises(InputError, match="n_bins"):
        M.uce(a, a, 0)
    with pytest.raises(InputError, match="at least n_bins"):
        M.uce(a, a, 50)
    with pytest.raises(InputError, match="smaller than the 7-pixel window"):
        M.ssim(a, a, 1.0)
    with pytest.raises(InputError, match="numeric"):
        M.mse(np.array(["a", "b"]), np.array(["a", "b"]))
    assert issubclass(InputError, ValueError)


# ----------------------------------------------------------------------------- anomaly


def test_anomaly_scores(rng):
    x = rng.standard_normal((6, 3, 4, 5))
    mu = rng.standard_normal((6, 3, 4, 5))
    sigma = rng.uniform(0.5, 2.0, (6, 3, 4, 5))
    want = [np.mean(((x[i] - mu[i]) / sigma[i]) ** 2) for i in range(6)]
    got = M.anomaly_scores(x, mu, sigma)
    assert got.shape == (6,)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    with pytest.raises(InputError, match="sigma must be > 0"):
        M.anomaly_scores(x, mu, -sigma)


def _auc_pairwise(s, y):
    pos, neg = s[y == 1], s[y == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("ties", [False, True])
def test_roc_auc_matches_pairwise(rng, ties):
    y = (rng.random(150) < 0.3).astype(int)
    s = rng.standard_normal(150) + 1.0 * y
    if ties:
        s = np.round(s)
    assert M.roc_auc(s, y) == pytest.approx(_auc_pairwise(s, y), abs=1e-12)
    assert M.roc_auc(torch.from_numpy(s), torch.from_numpy(y.astype(bool))) == pytest.approx(
        _auc_pairwise(s, y), abs=1e-12
    )
    roc = M.roc_curve(s, y)
    assert (roc["fpr"][0], roc["tpr"][0]) == (0.0, 0.0)
    assert (roc["fpr"][-1], roc["tpr"][-1]) == (1.0, 1.0)
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(M.roc_auc(s, y), abs=1e-12)
    with pytest.raises(InputError, match="both classes"):
        M.roc_auc(s, np.zeros(150))
    with pytest.raises(InputError, match="boolean or 0/1"):
        M.roc_auc(s, np.full(150, 2))


def test_eer_constructed_examples():
    # threshold 6: negatives >= 6 -> {6}: FPR 1/5; positives < 6 -> {5}: FNR 1/5
    neg, pos = [1, 2, 3, 4, 6], [5, 7, 8, 9, 10]
    s = np.array(neg + pos, float)
    y = np.array([0] * 5 + [1] * 5)
    e, t = M.eer(s, y)
    assert (e, t) == (pytest.approx(0.2), 6.0)
    # perfectly separated: EER 0 at the lowest positive score
    e, t = M.eer(np.array([1.0, 2, 3, 4, 5, 6]), np.array([0, 0, 0, 1, 1, 1]))
    assert (e, t) == (0.0, 4.0)
    # no exact crossing: closest point t=4 with FPR 1/4, FNR 1/3
    e, t = M.eer(np.array([1.0, 2, 3, 4, 2.5, 5, 6]), np.array([0, 0, 0, 0, 1, 1, 1]))
    assert (e, t) == (pytest.approx((1 / 4 + 1 / 3) / 2), 4.0)


def test_f1_and_report():
    s = np.array([0.1, 0.4, 0.35, 0.8])
    y = np.array([0, 0, 1, 1])
    assert M.f1_at_threshold(s, y, 0.35) == pytest.approx(0.8)  # TP 2, FP 1, FN 0
    assert M.f1_at_threshold(s, y, 0.5) == pytest.approx(2 / 3)  # TP 1, FP 0, FN 1
    assert M.f1_at_threshold(s, y, 0.9) == 0.0
    rep = M.anomaly_report(s, y)
    assert rep == {
        "auc": pytest.approx(0.75),
        "eer": pytest.approx(0.5),
        "eer_threshold": 0.4,
        "f1": pytest.approx(0.5),  # at t=0.4: TP 1, FP 1, FN 1
    }


def test_import_does_not_load_torch():
    code = (
        "import sys; import napari_sim_uq.core.uq.metrics as m; "
        "m.zms([1.0, 2.0], [1.0, 1.0]); assert 'torch' not in sys.modules, 'torch loaded'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
