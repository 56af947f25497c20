"""SIM conditional recalibration and the raw-domain self-check (tasks.sim.calibration),
checked on Monte Carlo data with a known true std."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.uq import metrics
from napari_sim_uq.core.uq.calibrate import ClassSigmaMap, SigmaMap
from napari_sim_uq.tasks.sim.calibration import (
    EMITTER_CLASS_EDGES,
    SELF_CHECK_RANGE,
    apply_sigma_maps,
    fit_emitter_map,
    raw_predictive_std,
    raw_self_check,
    relative_intensity,
    self_check_reference,
    stored_self_check_reference,
)
from napari_sim_uq.tasks.sim.predict import SimPrediction


def test_relative_intensity_divides_by_the_bright_quantile(rng):
    a = rng.uniform(0, 5, (64, 64))
    rel = relative_intensity(a)
    assert rel == pytest.approx(a / np.quantile(a, 0.999))
    assert np.all(relative_intensity(np.zeros((4, 4))) == 0)


def _field(rng, n_img=40, size=48):
    """Emitter-like fields: sparse bright spots on a dark background; the predicted std is
    too wide on the background (true = pred / 2) and too narrow on structures (true =
    3 pred), as measured for the trained SIM models."""
    es, preds, rs = [], [], []
    for _ in range(n_img):
        e = np.zeros((size, size))
        idx = rng.integers(0, size, (60, 2))
        e[idx[:, 0], idx[:, 1]] = rng.uniform(0.05, 1.0, 60)
        pred = 0.02 + 0.1 * e
        true = np.where(relative_intensity(e) > 0.01, 3.0 * pred, 0.5 * pred)
        es.append(e)
        preds.append(pred)
        rs.append(rng.normal(0.0, true))
    return np.stack(es), np.stack(preds), np.stack(rs)


def test_emitter_map_fixes_background_and_structures_on_another_split(rng):
    e, pred, r = _field(rng)
    cov = np.stack([relative_intensity(x) for x in e])
    m = fit_emitter_map(r, pred, cov)
    assert isinstance(m, ClassSigmaMap)
    e2, pred2, r2 = _field(rng)
    cov2 = np.stack([relative_intensity(x) for x in e2])
    after = m(pred2, cov2)
    bg = cov2 <= 0.01
    assert metrics.zms(r2[bg], pred2[bg]) == pytest.approx(0.25, rel=0.1)  # before
    assert metrics.zms(r2[~bg], pred2[~bg]) == pytest.approx(9.0, rel=0.15)
    assert metrics.zms(r2[bg], after[bg]) == pytest.approx(1.0, abs=0.1)
    assert metrics.zms(r2[~bg], after[~bg]) == pytest.approx(1.0, abs=0.2)


def test_emitter_map_merges_classes_without_enough_pixels(rng):
    n = 5000
    cov = np.concatenate([np.zeros(n - 30), np.full(30, 0.5)])  # 30 bright pixels only
    r, s = rng.normal(size=n), np.exp(rng.uniform(-1, 0, n))
    m = fit_emitter_map(r, s, cov)
    assert len(m.edges) < len(EMITTER_CLASS_EDGES)
    assert all(len(x.log_sigma) >= 1 for x in m.maps)
    # nothing but background: one class
    m1 = fit_emitter_map(r, s, np.zeros(n))
    assert m1.edges == () and len(m1.maps) == 1


def _prediction(rng, std=0.1):
    e = rng.uniform(0, 1, (8, 8))
    s = np.full((8, 8), std, np.float32)
    return SimPrediction(
        emitter=e.astype(np.float32),
        emitter_std=s * np.sqrt(2),
        emitter_aleatoric_std=s,
        emitter_epistemic_std=s,
        lp=np.zeros((9, 8, 8), np.float32),
        lp_std=None,
        lp_aleatoric_std=None,
        lp_epistemic_std=None,
        psf=np.ones((3, 3), np.float32) / 9,
        psf_std=None,
        psf_aleatoric_std=None,
        psf_epistemic_std=None,
        background=0.0,
        background_std=None,
        rec=np.zeros((9, 4, 4), np.float32),
        rec_std=None,
        rec_aleatoric_std=None,
        rec_epistemic_std=None,
    )


def test_apply_sigma_maps_scales_every_part_by_one_factor(rng):
    m = SigmaMap((np.log(0.01), np.log(1.0)), (np.log(0.03), np.log(3.0)))  # c = 3 sigma
    pred = _prediction(rng)
    apply_sigma_maps(pred, {"emitter": m})
    assert pred.emitter_std == pytest.approx(3 * 0.1 * np.sqrt(2), rel=1e-5)
    assert pred.emitter_aleatoric_std == pytest.approx(0.3, rel=1e-5)
    tot2 = pred.emitter_aleatoric_std**2 + pred.emitter_epistemic_std**2
    assert np.sqrt(tot2) == pytest.approx(pred.emitter_std, rel=1e-5)
    assert pred.meta["sigma_map"] == {"emitter": "per-quantile isotonic sigma map"}
    untouched = _prediction(rng)
    apply_sigma_maps(untouched, {})
    assert untouched.emitter_aleatoric_std == pytest.approx(0.1)


def test_raw_self_check_passes_the_right_noise_and_flags_the_wrong(rng):
    rec = rng.uniform(0, 1, (9, 32, 32))
    std = raw_predictive_std(rec, np.full(rec.shape, 0.01), (0.01, 1e-3, 1e-4))
    want = np.sqrt(1e-4 + 0.01 * rec + 1e-3 + 1e-4)
    assert std == pytest.approx(want)
    good = raw_self_check(rec + rng.normal(size=rec.shape) * std, rec, std)
    assert good["ok"] and good["raw_zms"] == pytest.approx(1.0, abs=0.05)
    assert good["raw_cov95"] == pytest.approx(0.95, abs=0.01)
    lo, hi = SELF_CHECK_RANGE
    wide = raw_self_check(rec + rng.normal(size=rec.shape) * std * 1.5, rec, std)
    assert not wide["ok"] and wide["raw_zms"] > hi and "does not fit" in wide["message"]
    narrow = raw_self_check(rec + rng.normal(size=rec.shape) * std * 0.5, rec, std)
    assert not narrow["ok"] and narrow["raw_zms"] < lo
    with pytest.raises(InputError, match="one shape"):
        raw_self_check(rec, rec[:1], std)
    nan = raw_self_check(np.full(rec.shape, np.nan), rec, std)
    assert not nan["ok"] and nan["n"] == 0


def test_self_check_reference_from_a_calibration_split(rng):
    rec = rng.uniform(0, 1, (9, 24, 24))
    std = np.full(rec.shape, 0.05)
    # per-stack noise levels that vary as the per-stack read noise does in the generator
    levels = rng.uniform(0.8, 1.25, 40)
    checks = [
        raw_self_check(rec + rng.normal(size=rec.shape) * std * lv, rec, std) for lv in levels
    ]
    assert self_check_reference(checks[:5]) is None  # too few stacks
    ref = self_check_reference(checks, raw_scale=2.0)
    lz = np.log(np.array([c["raw_zms"] for c in checks]) / 4.0)
    m, sd = lz.mean(), lz.std(ddof=1)
    assert ref["raw_zms"] == pytest.approx([np.exp(m - 3 * sd), np.exp(m + 3 * sd)])
    assert ref["raw_zms"][0] < np.exp(lz.min()) and ref["raw_zms"][1] > np.exp(lz.max())
    assert ref["n_stacks"] == 40 and ref["raw_rho_max"] < 0.1  # white residuals
    # a stack like the calibration data passes; twice the noise or a smooth misfit do not
    ref1 = self_check_reference(checks)
    ok = raw_self_check(rec + rng.normal(size=rec.shape) * std, rec, std, ref1)
    assert ok["ok"] and "calibration split" in ok["reference"]
    loud = raw_self_check(rec + rng.normal(size=rec.shape) * std * 2, rec, std, ref1)
    assert not loud["ok"] and "outside" in loud["message"]
    from scipy import ndimage

    blob = ndimage.gaussian_filter(rng.normal(size=rec.shape), (0, 3, 3))
    blob *= 0.5 * std / blob.std()
    misfit = raw_self_check(rec + rng.normal(size=rec.shape) * std * 0.85 + blob, rec, std, ref1)
    assert misfit["raw_rho"] > ref1["raw_rho_max"] and not misfit["ok"]
    assert "spatially correlated" in misfit["message"]

    class Ck:
        path = "x.pt"
        extra = {"self_check": ref1}

    assert stored_self_check_reference(Ck()) == ref1
    Ck.extra = {"self_check": {"raw_zms": [2.0, 1.0], "raw_rho_max": 0.1}}
    with pytest.raises(InputError, match="self-check reference"):
        stored_self_check_reference(Ck())
    Ck.extra = {}
    assert stored_self_check_reference(Ck()) is None
