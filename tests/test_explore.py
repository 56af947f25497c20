"""uq/explore.py (the Uncertainty explorer's core) against independent NumPy/SciPy truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.uq import explore as X
from napari_sim_uq.core.uq import metrics as M


class _Layer:
    def __init__(self, name, metadata=None):
        self.name = name
        self.metadata = metadata or {}


def _rec_md(source, output):
    return {"sim_uq": {"output": output, "source": source}}


# ----------------------------------------------------------------------------- pairing


def test_std_pairing_by_name_and_metadata():
    layers = [
        _Layer("raw"),
        _Layer("X emitter", _rec_md("X", "emitter")),
        _Layer("X emitter std", _rec_md("X", "emitter_std")),
        _Layer("X light pattern", _rec_md("X", "lp")),
        _Layer("X light pattern std", _rec_md("X", "lp_std")),
        _Layer("X GT emitter"),
    ]
    assert X.find_std_layer("X emitter", layers) == "X emitter std"
    assert X.find_std_layer("X light pattern", layers) == "X light pattern std"
    assert X.find_std_layer("raw", layers) is None
    assert X.find_std_layer("X emitter std", layers) is None  # a std has no std
    assert X.mean_std_pairs(layers) == [
        ("X emitter", "X emitter std"),
        ("X light pattern", "X light pattern std"),
    ]
    # renamed std layer: found through the metadata (same source, output key + "_std")
    renamed = {
        "X emitter": _rec_md("X", "emitter"),
        "my sigma": _rec_md("X", "emitter_std"),
        "other sigma": _rec_md("Y", "emitter_std"),
    }
    assert X.find_std_layer("X emitter", renamed) == "my sigma"
    # ground truth by name
    assert X.find_gt_layer("X emitter", layers) == "X GT emitter"
    assert X.find_gt_layer("X light pattern", layers) is None
    named = {"cells": {}, "cells ground truth": {}}
    assert X.find_gt_layer("cells", named) == "cells ground truth"
    assert X.unreliable_layer_name("X emitter") == "X emitter unreliable"


# ----------------------------------------------------------------------------- thresholds


def test_absolute_and_relative_thresholds(rng):
    mean = rng.normal(0.0, 2.0, (40, 50)).astype(np.float32)
    mean[3, 4] = 0.0
    std = rng.uniform(0.01, 1.0, mean.shape).astype(np.float32)
    std[5, 6] = np.nan

    t = 0.6
    mask = X.unreliable_mask(mean, std, t)
    assert mask.dtype == np.uint8 and mask.shape == mean.shape
    expected = np.zeros(mean.shape, np.uint8)
    for i in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            s = float(std[i, j])
            expected[i, j] = 1 if (math.isnan(s) or s > t) else 0
    np.testing.assert_array_equal(mask, expected)

    # relative: std / max(|mean|, eps), eps = REL_EPS * max|mean|
    eps = X.REL_EPS * float(np.abs(mean).max())
    rel = X.relative_std(mean, std)
    with np.errstate(invalid="ignore"):
        ref = std.astype(np.float64) / np.maximum(np.abs(mean.astype(np.float64)), eps)
    np.testing.assert_allclose(rel, ref, rtol=1e-6, equal_nan=True)
    assert np.isfinite(rel[3, 4]) and rel[3, 4] == pytest.approx(std[3, 4] / eps, rel=1e-6)
    with np.errstate(invalid="ignore"):
        exp_rel = ((ref > 0.3) | np.isnan(ref)).astype(np.uint8)
    np.testing.assert_array_equal(X.unreliable_mask(mean, std, 0.3, mode="relative"), exp_rel)
    # explicit eps
    np.testing.assert_allclose(
        X.relative_std(mean, std, eps=0.5),
        std / np.maximum(np.abs(mean), 0.5),
        rtol=1e-6,
        equal_nan=True,
    )
    # 3D (light pattern std: one map per frame) works the same
    m3, s3 = np.stack([mean] * 3), np.stack([std] * 3)
    np.testing.assert_array_equal(X.unreliable_mask(m3, s3, t), np.stack([expected] * 3))

    # default threshold: the 95th percentile of the finite values
    finite = np.sort(std[np.isfinite(std)].astype(np.float64))
    k = 0.95 * (finite.size - 1)
    lo = int(np.floor(k))
    p95 = finite[lo] + (k - lo) * (finite[lo + 1] - finite[lo])
    assert X.default_threshold(std) == pytest.approx(p95, rel=1e-6)


def test_threshold_errors():
    with pytest.raises(InputError, match="same shape"):
        X.unreliable_mask(np.ones((4, 4)), np.ones((4, 5)), 1.0)
    with pytest.raises(InputError, match="undefined"):
        X.relative_std(np.zeros((3, 3)), np.ones((3, 3)))
    with pytest.raises(InputError, match="mode"):
        X.unreliable_mask(np.ones((3, 3)), np.ones((3, 3)), 1.0, mode="variance")
    with pytest.raises(InputError, match="NaN"):
        X.unreliable_mask(np.ones((3, 3)), np.ones((3, 3)), float("nan"))


# ----------------------------------------------------------------------------- sampling, histogram


def test_sampling_and_histogram(rng):
    a = np.arange(10_000, dtype=np.float64).reshape(100, 100)
    (s,) = X.sample_pixels(a, max_pixels=3_000)  # step ceil(10000/3000) = 4
    np.testing.assert_array_equal(s, np.arange(0, 10_000, 4))
    b = -a
    s1, s2 = X.sample_pixels(a, b, max_pixels=3_000)
    np.testing.assert_array_equal(s2, -s1)  # same pixels from every array
    (full,) = X.sample_pixels(a)
    assert full.size == a.size

    v = rng.lognormal(0.0, 1.0, 5_000)
    v[:7] = np.nan
    h = X.std_histogram(v, bins=20)
    fin = v[np.isfinite(v)]
    counts, edges = np.histogram(fin, bins=20, range=(fin.min(), fin.max()))
    np.testing.assert_array_equal(h["counts"], counts)
    np.testing.assert_allclose(h["edges"], edges)
    assert h["n"] == fin.size and h["n_excluded"] == 7
    hl = X.std_histogram(v, bins=20, log=True)
    np.testing.assert_allclose(np.diff(np.log(hl["edges"])), np.log(fin.max() / fin.min()) / 20)
    assert hl["counts"].sum() == fin.size


# ----------------------------------------------------------------------------- calibration


def test_calibration_summary_matches_metrics_and_monte_carlo():
    """Correctly calibrated Gaussian data: coverage ~ 68.27 / 95.45 %, ZMS ~ 1."""
    rng = np.random.default_rng(7)
    shape = (300, 400)
    mean = rng.uniform(1.0, 5.0, shape)
    std = rng.uniform(0.05, 1.0, shape)
    gt = mean + std * rng.standard_normal(shape)
    c = X.calibration_summary(mean, std, gt)
    n = mean.size
    assert c["n"] == n and c["n_excluded"] == 0
    # binomial standard errors of a coverage estimate: ~ sqrt(p (1 - p) / n)
    for key, p in (("cov68", 0.682689492), ("cov95", 0.954499736)):
        assert abs(c[key] - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert c["zms"] == pytest.approx(1.0, abs=5 * math.sqrt(2 / n))
    assert c["sigma_scale"] == pytest.approx(math.sqrt(c["zms"]))
    # independent computations of the same numbers
    r = gt - mean
    assert c["zms"] == pytest.approx(np.mean(r**2 / std**2), rel=1e-12)
    assert c["cov68"] == pytest.approx(np.mean(np.abs(r) <= std))
    assert c["cov95"] == pytest.approx(np.mean(np.abs(r) <= 2 * std))
    assert c["spearman"] == pytest.approx(stats.spearmanr(std.ravel(), np.abs(r).ravel())[0])
    curve = M.calibration_curve(r, std, n_bins=12)
    np.testing.assert_allclose(c["curve"]["mse"], curve["mse"])
    np.testing.assert_allclose(c["curve"]["mean_variance"], curve["mean_variance"])

    # sigma 2x too small: coverage drops to P(|z| <= 0.5), ZMS ~ 4, fitted scale ~ 2
    c2 = X.calibration_summary(mean, std / 2, gt)
    p = stats.norm.cdf(0.5) - stats.norm.cdf(-0.5)
    assert abs(c2["cov68"] - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert c2["sigma_scale"] == pytest.approx(2.0, rel=0.02)

    # an error map gives the same numbers as the ground truth (sign irrelevant)
    ce = X.calibration_summary(None, std, error=mean - gt)
    for key in ("zms", "cov68", "cov95", "spearman"):
        assert ce[key] == pytest.approx(c[key])


def test_calibration_summary_excludes_bad_pixels_and_subsamples(rng):
    mean = np.zeros((50, 50))
    std = np.ones((50, 50))
    gt = rng.standard_normal((50, 50))
    std[0, :10] = 0.0
    gt[1, :5] = np.nan
    c = X.calibration_summary(mean, std, gt)
    assert c["n_excluded"] == 15 and c["n"] == 2500 - 15
    ok = (std > 0) & np.isfinite(gt)
    assert c["zms"] == pytest.approx(np.mean(gt[ok] ** 2))
    cs = X.calibration_summary(mean, std, gt, max_pixels=1000)  # every 3rd pixel
    sub = (np.arange(2500) % 3 == 0).reshape(50, 50) & ok
    assert cs["n"] == int(sub.sum())
    assert cs["zms"] == pytest.approx(np.mean(gt[sub] ** 2))
    with pytest.raises(InputError, match="same shape"):
        X.calibration_summary(mean, std, gt[:10])
    with pytest.raises(InputError, match="exactly one"):
        X.calibration_summary(mean, std)


def test_explore_stats(rng):
    mean = rng.uniform(1, 2, (64, 64))
    std = rng.uniform(0.1, 0.3, (64, 64))
    st = X.explore_stats(mean, std)
    assert st["calibration"] is None
    assert st["p95"] == pytest.approx(np.percentile(std, 95))
    assert st["quantiles"][0] == std.min() and st["quantiles"][-1] == std.max()
    assert st["hist"]["counts"].sum() == std.size
    rel = X.explore_stats(mean, std, "relative", reference=mean + std, log=True)
    assert rel["p95"] == pytest.approx(np.percentile(X.relative_std(mean, std), 95))
    assert rel["calibration"]["zms"] == pytest.approx(1.0)
    assert rel["hist"]["log"]


# ----------------------------------------------------------------------------- sigma scale, readout


def test_apply_sigma_scale_is_cumulative():
    std = np.full((4, 5), 2.0, np.float32)
    md = {"sim_uq": {"output": "emitter_std"}}
    s1, md1 = X.apply_sigma_scale(std, 1.5, md)
    assert s1.dtype == np.float32
    np.testing.assert_allclose(s1, 3.0)
    assert md == {"sim_uq": {"output": "emitter_std"}}  # input metadata untouched
    assert X.applied_sigma_scale(md) == 1.0
    s2, md2 = X.apply_sigma_scale(s1, 2.0, md1)
    np.testing.assert_allclose(s2, 6.0)
    assert X.applied_sigma_scale(md2) == pytest.approx(3.0)
    assert md2["sim_uq"][X.SCALE_HISTORY_KEY] == [1.5, 2.0]
    assert md2["sim_uq"]["output"] == "emitter_std"
    for bad in (0, -1, float("inf"), "x"):
        with pytest.raises(InputError, match="sigma scale"):
            X.apply_sigma_scale(std, bad)


def test_data_index_and_format():
    assert X.data_index((0.49, 2.5), (4, 4)) == (0, 3)
    assert X.data_index((-0.49, 0.0), (4, 4)) == (0, 0)
    assert X.data_index((-0.51, 0.0), (4, 4)) is None
    assert X.data_index((3.49, 0.0), (4, 4)) == (3, 0)
    assert X.data_index((3.5, 0.0), (4, 4)) is None
    assert X.data_index((1.0,), (4, 4)) is None
    assert X.format_mean_std(1.23456, 0.0567891) == "1.235 ± 0.05679"


def test_calibration_summary_reports_background_and_structures_separately():
    rng = np.random.default_rng(5)
    gt = np.zeros((128, 128))
    gt[rng.integers(0, 128, 800), rng.integers(0, 128, 800)] = rng.uniform(0.2, 1.0, 800)
    std = np.full(gt.shape, 0.1)
    structure = gt / np.quantile(gt, 0.999) > 0.01
    err_std = np.where(structure, 0.3, 0.05)  # std 3x too narrow / 2x too wide
    mean = gt + rng.normal(size=gt.shape) * err_std
    cal = X.calibration_summary(mean, std, gt)
    by = cal["conditional"]["by_intensity"]
    r2 = ((gt - mean) / std) ** 2
    assert by["structure"]["n"] == int(structure.sum())
    assert by["structure"]["zms"] == pytest.approx(float(r2[structure].mean()), rel=1e-9)
    assert by["background"]["zms"] == pytest.approx(float(r2[~structure].mean()), rel=1e-9)
    assert by["structure"]["zms"] == pytest.approx(9.0, rel=0.15)
    assert by["background"]["zms"] == pytest.approx(0.25, rel=0.05)
    assert len(cal["conditional"]["by_std_decile"]) == 10
    # with an error map instead of a ground truth there are no intensity classes
    assert X.calibration_summary(mean, std, error=gt - mean)["conditional"] is None
