"""Posterior std calibration: the table's rules, its application to samples, and the
calibrate-vae command end to end on a tiny VAE."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from napari_sim_uq.tasks.vae2d.calibrate import fit_table
from napari_sim_uq.tasks.vae2d.scales import (
    DISTANCE_EDGES,
    apply_calibration,
    distance_to_observed,
    pixel_scales,
)


def _z2(rng, zms, n=2000):
    """Squared z-scores of chi^2(1) * v per class ``(where, level)``; ``None``: no pixels."""
    return {k: [rng.chisquare(1, n) * v] for k, v in zms.items() if v is not None}


def test_scales_are_sqrt_zms_filled_and_monotone():
    rng = np.random.default_rng(0)
    zms = {(0, 0): 1.0, (0, 1): 4.0}
    zms.update({(w, 0): v for w, v in zip(range(1, 6), [1.0, 4.0, 2.0, 9.0, None], strict=True)})
    zms.update({(1, 1): 16.0})
    t = fit_table(_z2(rng, zms))
    s = np.asarray(t["scales"])
    # ZMS of chi^2(1) * v estimates v within a few % with 2000 draws
    assert s[0, 0] == pytest.approx(1.0, rel=0.08) and s[0, 1] == pytest.approx(2.0, rel=0.08)
    assert s[1, 0] == pytest.approx(1.0, rel=0.08) and s[2, 0] == pytest.approx(2.0, rel=0.08)
    assert s[3, 0] == s[2, 0]  # non-decreasing: farther from the data is never more certain
    assert s[4, 0] == pytest.approx(3.0, rel=0.08)
    assert s[5, 0] == s[4, 0]  # an empty bin takes the nearer bin's scale
    # structure: only bin 1 has pixels; bins with no structure pixels take the pooled ZMS
    # of their distance bin, then the monotone rule
    assert s[1, 1] == pytest.approx(4.0, rel=0.08)
    assert (np.diff(s[1:, 1]) >= 0).all()


def test_too_few_pixels_is_a_clear_error():
    from napari_sim_uq.core.errors import InputError

    rng = np.random.default_rng(1)
    with pytest.raises(InputError, match="missing pixels"):
        fit_table(_z2(rng, {(0, 0): 1.0}))
    with pytest.raises(InputError, match="observed pixels"):
        fit_table(_z2(rng, {(1, 0): 1.0}))


def test_pixel_scales_follow_the_distance_to_the_data():
    observed = np.ones((40, 40), bool)
    observed[5:35, 5:35] = False
    d = distance_to_observed(observed)
    assert d[5, 20] == 1 and d[20, 20] == 15  # the centre of a 30 px box
    table = {"scales": [[0.9, 1.9], [1.0, 1.5], [2.0, 2.5], [3.0, 3.5], [4.0, 4.5], [5, 6]]}
    mean = np.zeros(observed.shape)
    mean[:, 20:] = 0.5  # structure on the right half
    s = pixel_scales(table, observed, mean)
    assert s[0, 0] == 0.9 and s[0, 30] == 1.9
    assert s[5, 10] == 1.0 and s[8, 10] == 2.0  # d = 4: the second bin
    assert s[20, 19] == 4.0 and s[20, 20] == 4.5  # 8 < 15 <= 16
    assert len(table["scales"]) == len(DISTANCE_EDGES) + 2


def test_applying_scales_stretches_the_std_and_keeps_the_mean():
    rng = np.random.default_rng(2)
    samples = rng.normal(3.0, 0.5, (500, 4, 4)).astype(np.float32)
    scales = np.full((4, 4), 2.0)
    scales[0] = 1.0
    mean, std = samples.mean(0), samples.std(0)
    out = apply_calibration(samples.copy(), scales)
    assert np.allclose(out.mean(0), mean, atol=1e-5)
    assert np.allclose(out.std(0), std * scales, rtol=1e-4)


def test_calibrate_vae_command_stores_the_table_and_posterior_applies_it(tmp_path):
    from vae_helpers import write_clean_images

    from napari_sim_uq.api import posterior_2d
    from napari_sim_uq.cli import main
    from napari_sim_uq.core.io.checkpoint import load_checkpoint

    write_clean_images(tmp_path / "train", 2)
    write_clean_images(tmp_path / "cal", 2, size=32, seed=70)
    argv = ["train-vae", "--data-dir", str(tmp_path / "train"), "--out-dir", str(tmp_path / "ck")]
    argv += ["--epochs", "1", "--batch-size", "4", "--patch", "16", "--latent-dim", "3"]
    argv += ["--patches-per-image", "2", "--channels", "4", "--depth", "2", "--quiet"]
    assert main(argv) == 0
    ck_path = tmp_path / "ck" / "latest.pt"
    raw = tmp_path / "raw.pt"
    shutil.copy(ck_path, raw)
    cal = ["calibrate-vae", "--checkpoint", str(ck_path), "--data-dir", str(tmp_path / "cal")]
    cal += ["--n-windows", "24", "--n-starts", "2", "--n-samples", "32", "--quiet"]
    assert main(cal) == 0
    extra = load_checkpoint(ck_path).extra
    table = extra["posterior_calibration"]
    # sigma_model refitted (chi^2 = 1 at the MAP), the training's value kept beside it
    assert extra["sigma_model_validation"] == load_checkpoint(raw).extra["sigma_model"]
    assert extra["sigma_model"] == table["sigma_model"] > 0
    scales = np.asarray(table["scales"])
    assert scales.shape == (len(DISTANCE_EDGES) + 2, 2) and np.isfinite(scales).all()
    assert (np.diff(scales[1:], axis=0) >= 0).all()
    # the same posterior with and without the table: std scaled pixel by pixel, mean kept
    img = np.random.default_rng(3).random((16, 16)).astype(np.float32)
    mask = np.ones(img.shape, bool)
    mask[4:12, 4:12] = False
    kw = dict(mask=mask, noise_sigma=0.05, n_samples=400, n_starts=2, seed=1)
    a = {kw_["name"]: d for d, kw_, _ in posterior_2d(img, ck_path, calibrated=False, **kw)}
    layers_b = posterior_2d(img, ck_path, **kw)
    b = {kw_["name"]: d for d, kw_, _ in layers_b}
    b_meta = layers_b[0][1]["metadata"]["sim_uq"]["reconstruction"]
    assert np.allclose(a["array posterior mean"], b["array posterior mean"], atol=1e-4)
    ratio = b["array posterior std"] / a["array posterior std"]
    from napari_sim_uq.core.data.normalization import Normalization

    norm = Normalization.from_dict(b_meta["normalization"])
    expected = pixel_scales(table, mask, norm.apply(a["array posterior mean"]))
    assert np.allclose(ratio, expected, rtol=1e-3)
