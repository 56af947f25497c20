"""Conditional calibration tables and sigma recalibration (core.uq.calibrate), checked
against direct computations and Monte Carlo data with a known true sigma."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.uq import metrics
from napari_sim_uq.core.uq.calibrate import (
    INTENSITY_CLASSES,
    ClassSigmaMap,
    SigmaMap,
    conditional_calibration,
    fit_sigma_scale,
    sigma_map_from_dict,
)


def _miscalibrated(rng, n):
    """Residuals with a known true sigma and a predicted sigma that is too wide for small
    and too narrow for large true sigma (``pred = sqrt(0.1 true)``, monotone in true)."""
    true = np.exp(rng.uniform(np.log(0.01), np.log(1.0), n))
    pred = np.sqrt(0.1 * true)
    r = rng.normal(0.0, true)
    return r, pred, true


def test_pooled_metrics_equal_the_core_metrics(rng):
    r, s, true = _miscalibrated(rng, 5000)
    t = conditional_calibration(r, s, true)
    p = t["pooled"]
    assert p["n"] == r.size
    assert p["zms"] == pytest.approx(metrics.zms(r, s), rel=1e-12)
    assert p["cov95"] == pytest.approx(metrics.coverage(r, s, 0.95), rel=1e-12)
    assert p["uce"] == pytest.approx(metrics.uce(r, s), rel=1e-12)
    assert p["spearman"] == pytest.approx(stats.spearmanr(s, np.abs(r))[0], rel=1e-9)
    assert p["rmse"] == pytest.approx(np.sqrt(np.mean(r**2)))
    json.dumps(t, allow_nan=False)  # plain numbers only


def test_std_deciles_are_equal_count_bins_of_sigma(rng):
    r, s, true = _miscalibrated(rng, 1003)
    rows = conditional_calibration(r, s, true, n_deciles=10)["by_std_decile"]
    assert [d["decile"] for d in rows] == list(range(1, 11))
    assert sum(d["n"] for d in rows) == r.size
    assert max(d["n"] for d in rows) - min(d["n"] for d in rows) <= 1
    order = np.argsort(s, kind="stable")
    start = 0
    for d in rows:
        idx = order[start : start + d["n"]]
        start += d["n"]
        assert d["lo"] == s[idx].min() and d["hi"] == s[idx].max()
        assert d["zms"] == pytest.approx(np.mean(r[idx] ** 2 / s[idx] ** 2))
        assert d["cov95"] == pytest.approx(np.mean(np.abs(r[idx]) <= 1.959964 * s[idx]))
    assert all(a["hi"] <= b["lo"] for a, b in zip(rows, rows[1:], strict=False))


def test_intensity_tertiles_are_classes_of_value():
    # 50 % exact zeros: the background class holds them all (a class depends on the value)
    inten = np.r_[np.zeros(600), np.linspace(0.1, 1.0, 600)]
    r = np.linspace(-1, 1, inten.size)
    s = np.full(inten.size, 0.5)
    t = conditional_calibration(r, s, inten)
    t1, t2 = np.quantile(inten, [1 / 3, 2 / 3])
    assert t["intensity_thresholds"] == pytest.approx([t1, t2])
    b = t["by_intensity"]
    assert list(b) == list(INTENSITY_CLASSES)
    assert b["background"]["n"] == 600 and b["background"]["hi"] == 0.0
    assert b["mid"]["n"] == np.count_nonzero((inten > t1) & (inten <= t2))
    assert b["bright"]["lo"] > t2
    sel = inten > t2
    assert b["bright"]["zms"] == pytest.approx(np.mean(r[sel] ** 2) / 0.25)
    assert b["bright"]["rmse"] == pytest.approx(np.sqrt(np.mean(r[sel] ** 2)))
    # an image that is mostly one value: the mid class is empty, with None metrics
    inten2 = np.r_[np.zeros(900), np.ones(300)]
    e = conditional_calibration(r, s, inten2)["by_intensity"]["mid"]
    assert e["n"] == 0 and e["zms"] is None and e["lo"] is None


def test_calibrated_data_give_one_in_every_cell(rng):
    true = np.exp(rng.uniform(-4, 0, 200_000))
    r = rng.normal(0.0, true)
    t = conditional_calibration(r, true, true)
    for row in t["by_std_decile"] + list(t["by_intensity"].values()):
        assert row["zms"] == pytest.approx(1.0, abs=0.05)
        assert row["cov95"] == pytest.approx(0.95, abs=0.01)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(InputError, match="same shape"):
        conditional_calibration(np.zeros(5), np.ones(4), np.zeros(5))
    with pytest.raises(InputError, match="sigma must be > 0"):
        conditional_calibration(np.zeros(20), np.zeros(20), np.zeros(20))
    with pytest.raises(InputError, match="NaN"):
        fit_sigma_scale(np.array([np.nan, 1.0]), np.ones(2))
    with pytest.raises(InputError, match="n_deciles"):
        conditional_calibration(np.zeros(5), np.ones(5), np.zeros(5), n_deciles=10)
    with pytest.raises(InputError, match="fitted scale"):
        fit_sigma_scale(np.zeros(10), np.ones(10))


def test_sigma_scale_recovers_a_known_factor(rng):
    true = np.exp(rng.uniform(-3, 0, 100_000))
    r = rng.normal(0.0, true)
    s = fit_sigma_scale(r, true / 2.5)  # predicted std 2.5x too small
    assert s == pytest.approx(2.5, rel=0.01)
    assert metrics.zms(r, s * true / 2.5) == pytest.approx(1.0, rel=1e-9)  # in-sample exact


def test_sigma_map_fixes_every_decile_on_another_split_where_one_scale_cannot(rng):
    r_fit, s_fit, _ = _miscalibrated(rng, 100_000)
    r_new, s_new, true_new = _miscalibrated(rng, 100_000)
    smap = SigmaMap.fit(r_fit, s_fit, n_bins=10)
    scale = fit_sigma_scale(r_fit, s_fit)

    mapped = conditional_calibration(r_new, smap(s_new), true_new)
    for d in mapped["by_std_decile"]:
        assert 0.85 < d["zms"] < 1.15, d
    for row in mapped["by_intensity"].values():
        assert 0.9 < row["zms"] < 1.1, row
    assert mapped["pooled"]["cov95"] == pytest.approx(0.95, abs=0.01)

    scaled = conditional_calibration(r_new, scale * s_new, true_new)
    assert scaled["pooled"]["zms"] == pytest.approx(1.0, abs=0.05)  # the average is right...
    z = [d["zms"] for d in scaled["by_std_decile"]]
    assert min(z) < 0.2 and max(z) > 3.0  # ...but not per decile


def test_sigma_map_is_monotone_and_near_identity_when_calibrated(rng):
    true = np.exp(rng.uniform(-4, 0, 50_000))
    r = rng.normal(0.0, true)
    smap = SigmaMap.fit(r, true, n_bins=10)
    grid = np.exp(np.linspace(-8, 3, 500))  # inside and far outside the knots
    out = smap(grid)
    assert np.all(np.diff(out) >= -1e-12 * out[1:])  # non-decreasing (up to rounding)
    assert out[-1] / out[0] > 1e4  # and increasing outside the knots
    inside = (grid > np.exp(-3.8)) & (grid < np.exp(-0.2))
    assert np.allclose(smap.ratio(grid[inside]), 1.0, atol=0.08)


def test_sigma_map_is_monotone_even_when_the_data_are_not(rng):
    # true std that falls while the predicted one rises: the isotonic fit pools the bins
    pred = np.exp(rng.uniform(-3, 0, 40_000))
    true = np.where(pred < np.exp(-1.5), 4 * pred, 0.5 * pred)
    r = rng.normal(0.0, true)
    smap = SigmaMap.fit(r, pred, n_bins=10)
    c = np.exp(np.asarray(smap.log_calibrated))
    assert np.all(np.diff(c) >= 0)
    out = smap(np.sort(pred))
    assert np.all(np.diff(out) >= -1e-12 * out[1:])


def test_sigma_map_json_round_trip(rng):
    r, s, _ = _miscalibrated(rng, 20_000)
    smap = SigmaMap.fit(r, s, n_bins=12)
    back = SigmaMap.from_dict(json.loads(json.dumps(smap.to_dict())))
    assert back == smap
    np.testing.assert_array_equal(back(s[:100]), smap(s[:100]))
    assert back.n == r.size and back.n_bins == 12


def test_sigma_map_handles_tied_sigmas(rng):
    s = np.r_[np.full(5000, 0.1), np.exp(rng.uniform(-2, 0, 5000))]
    r = rng.normal(0.0, s)
    smap = SigmaMap.fit(r, s, n_bins=10)  # half the bins share one sigma: one knot
    assert len(smap.log_sigma) < 10
    assert np.all(np.diff(smap.log_sigma) > 0)


def test_sigma_map_bad_input():
    with pytest.raises(InputError, match="dict"):
        SigmaMap.from_dict([1, 2])
    with pytest.raises(InputError, match="unknown"):
        SigmaMap.from_dict({"log_sigma": [0.0], "log_calibrated": [0.0], "oops": 1})
    with pytest.raises(InputError, match="increasing"):
        SigmaMap((1.0, 0.0), (0.0, 1.0))
    with pytest.raises(InputError, match="invalid sigma map"):
        SigmaMap.from_dict({"log_calibrated": [0.0]})
    smap = SigmaMap((0.0, 1.0), (0.0, 1.0))
    with pytest.raises(InputError, match="> 0"):
        smap(np.array([-1.0]))


def _two_populations(rng, n):
    """Background and structure pixels with the same predicted sigma but errors 4x apart;
    the covariate (a predicted intensity) tells them apart."""
    bright = rng.random(n) < 0.4
    pred = np.exp(rng.uniform(-3, -1, n))
    true = np.where(bright, 2.0 * pred, 0.5 * pred)
    intensity = np.where(bright, rng.uniform(0.3, 1.0, n), rng.uniform(0.0, 0.01, n))
    return rng.normal(0.0, true), pred, intensity


def test_class_map_fixes_what_a_sigma_map_cannot(rng):
    r_fit, s_fit, i_fit = _two_populations(rng, 60_000)
    r_new, s_new, i_new = _two_populations(rng, 60_000)
    one = SigmaMap.fit(r_fit, s_fit)
    per_class = ClassSigmaMap.fit(r_fit, s_fit, i_fit, n_classes=3)
    assert len(per_class.maps) == 3 and per_class.edges[0] < per_class.edges[1]
    t_one = conditional_calibration(r_new, one(s_new), i_new)["by_intensity"]
    t_cls = conditional_calibration(r_new, per_class(s_new, i_new), i_new)["by_intensity"]
    assert t_one["background"]["zms"] < 0.3 and t_one["bright"]["zms"] > 2.0
    for row in t_cls.values():
        assert 0.9 < row["zms"] < 1.1
    np.testing.assert_allclose(
        per_class.ratio(s_new, i_new), per_class(s_new, i_new) / s_new, rtol=1e-12
    )


def test_class_map_json_round_trip_and_dispatch(rng):
    r, s, i = _two_populations(rng, 20_000)
    m = ClassSigmaMap.fit(r, s, i, n_classes=2, n_bins=5)
    d = json.loads(json.dumps(m.to_dict()))
    back = sigma_map_from_dict(d)
    assert isinstance(back, ClassSigmaMap) and back == m
    np.testing.assert_array_equal(back(s[:50], i[:50]), m(s[:50], i[:50]))
    single = SigmaMap.fit(r, s)
    assert sigma_map_from_dict(single.to_dict()) == single
    with pytest.raises(InputError, match="too few distinct"):
        ClassSigmaMap.fit(r, s, np.zeros_like(r), n_classes=3)
    with pytest.raises(InputError, match="one shape"):
        m(s[:5], i[:4])
    with pytest.raises(InputError, match="per-class"):
        ClassSigmaMap.from_dict({"kind": "per-class sigma map", "edges": [0.0], "maps": []})


def test_fixed_intensity_classes_are_value_ranges_and_may_overlap(rng):
    r = rng.normal(size=1000)
    s = np.full(1000, 1.0)
    inten = rng.uniform(0, 1, 1000)
    classes = {"low": (-np.inf, 0.2), "high": (0.2, np.inf), "mid": (0.2, 0.5)}
    t = conditional_calibration(r, s, inten, intensity_classes=classes)
    assert t["intensity_thresholds"] is None
    for name, (lo, hi) in classes.items():
        sel = (inten > lo) & (inten <= hi)
        cell = t["by_intensity"][name]
        assert cell["n"] == int(sel.sum())
        assert cell["zms"] == pytest.approx(float(np.mean(r[sel] ** 2)), rel=1e-12)
    assert t["by_intensity"]["low"]["n"] + t["by_intensity"]["high"]["n"] == 1000
    with pytest.raises(InputError, match="lo < hi"):
        conditional_calibration(r, s, inten, intensity_classes={"x": (0.5, 0.5)})


def test_class_map_with_fixed_edges_fixes_each_class_on_another_split(rng):
    def draw(n):
        cov = rng.uniform(0, 1, n)
        pred = np.exp(rng.uniform(-2, 0, n))
        # the true std is 3x the predicted one above covariate 0.3, 0.5x below it
        true = pred * np.where(cov > 0.3, 3.0, 0.5)
        return rng.normal(0.0, true), pred, cov

    m = ClassSigmaMap.fit(*draw(40_000), edges=[0.3])
    assert m.edges == (0.3,)
    r, pred, cov = draw(40_000)
    after = m(pred, cov)
    for sel in (cov <= 0.3, cov > 0.3):
        assert metrics.zms(r[sel], after[sel]) == pytest.approx(1.0, abs=0.08)
    with pytest.raises(InputError, match="increasing"):
        ClassSigmaMap.fit(r, pred, cov, edges=[0.5, 0.3])


def test_fit_sigma_map_by_method_and_its_stored_ratio(rng):
    """The calibrate commands' shared entry points: ``fit_sigma_map`` builds the map of
    each method (no map for "scale"), ``sigma_map_ratio`` is the map's per-pixel factor for
    either kind (NaN where sigma is not finite), ``stored_sigma_map`` reads what a
    checkpoint holds under ``extra["sigma_map"][quantity]``."""
    from types import SimpleNamespace

    from napari_sim_uq.core.uq.calibrate import (
        CALIBRATION_METHODS,
        fit_sigma_map,
        sigma_map_ratio,
        stored_sigma_map,
    )

    r, s, i = _two_populations(rng, 20_000)
    assert CALIBRATION_METHODS == ("scale", "map", "map-intensity")
    assert fit_sigma_map("scale", r, s, i) is None
    one = fit_sigma_map("map", r, s, n_bins=5)
    per = fit_sigma_map("map-intensity", r, s, i, n_bins=5, n_classes=3)
    assert one == SigmaMap.fit(r, s, n_bins=5)
    assert per == ClassSigmaMap.fit(r, s, i, n_classes=3, n_bins=5)
    # the factor: the calibrated std over sigma (float32), NaN where sigma is NaN
    sig = s[:100].copy()
    sig[3] = np.nan
    f_one, f_per = sigma_map_ratio(one, sig, i[:100]), sigma_map_ratio(per, sig, i[:100])
    assert f_one.dtype == np.float32 and np.isnan(f_one[3]) and np.isnan(f_per[3])
    ok = np.isfinite(sig)
    np.testing.assert_allclose(f_one[ok], one(sig[ok]) / sig[ok], rtol=1e-6)
    np.testing.assert_allclose(f_per[ok], per(sig[ok], i[:100][ok]) / sig[ok], rtol=1e-6)
    # stored in a checkpoint's extra (plain JSON) and read back
    ck = SimpleNamespace(extra={"sigma_map": {"mean": json.loads(json.dumps(per.to_dict()))}})
    assert stored_sigma_map(ck, "mean") == per
    assert stored_sigma_map(ck, "emitter") is None
    assert stored_sigma_map(SimpleNamespace(extra={}), "mean") is None
    with pytest.raises(InputError, match="method must be one of"):
        fit_sigma_map("isotonic", r, s)
    with pytest.raises(InputError, match="predicted intensity"):
        fit_sigma_map("map-intensity", r, s)
    with pytest.raises(InputError, match="invalid stored sigma map"):
        stored_sigma_map(SimpleNamespace(extra={"sigma_map": [1, 2]}, path="x.pt"))
