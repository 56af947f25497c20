"""The noise-level estimator against known white noise on structured images."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sim_uq.core.data.noise import estimate_noise_sigma
from napari_sim_uq.tasks.sim.samples import image2d_clean


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.1])
def test_white_noise_on_structures_is_measured(sigma):
    clean = image2d_clean(seed=3, size=128)
    clean = (clean - clean.min()) / (clean.max() - clean.min())
    rng = np.random.default_rng(int(sigma * 1000))
    est = estimate_noise_sigma(clean + rng.normal(0, sigma, clean.shape))
    # 126^2 filtered values: the MAD's relative standard error is ~1 %; structures add a
    # small bias at the lowest level
    assert est == pytest.approx(sigma, rel=0.05)


def test_smooth_intensity_changes_are_not_noise():
    yy, xx = np.mgrid[0:64, 0:64].astype(float)
    ramp = 0.01 * xx + 0.02 * yy + 3.0
    assert estimate_noise_sigma(ramp) < 1e-9
    rng = np.random.default_rng(0)
    assert estimate_noise_sigma(ramp + rng.normal(0, 0.2, ramp.shape)) == pytest.approx(
        0.2, rel=0.05
    )


def test_only_observed_pixels_count():
    rng = np.random.default_rng(1)
    img = rng.normal(0, 0.1, (64, 64))
    observed = np.ones(img.shape, bool)
    observed[:, 32:] = False
    img[:, 32:] = rng.normal(0, 5.0, (64, 32))  # garbage where nothing is observed
    img[10, 40] = np.nan
    assert estimate_noise_sigma(img, observed) == pytest.approx(0.1, rel=0.06)
    # NaN pixels are unobserved by default
    img2 = rng.normal(0, 0.1, (64, 64))
    img2[:, 32:] = np.nan
    assert estimate_noise_sigma(img2) == pytest.approx(0.1, rel=0.06)
    assert np.isnan(estimate_noise_sigma(np.full((2, 40), 1.0)))  # no full 3 x 3 window
