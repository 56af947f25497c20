"""Posterior reconstruction of whole images: tiles and padding against a closed form, bad
input, the CLI and the console function."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import run
from napari_sim_uq.tasks.vae2d.reconstruct import posterior_2d

ROOT = Path(__file__).resolve().parents[2]


class ConstantDecoder(nn.Module):
    """G(z) = a z + b on every pixel of a P x P patch (K = 1): the posterior of one tile is
    Gaussian with precision a^2 n_obs / s^2 + 1 and mean a sum_obs (x - b) / s^2 / prec."""

    def __init__(self, patch: int, a: float = 0.3, b: float = 0.5):
        super().__init__()
        self.patch, self.latent_dim, self.a, self.b = patch, 1, a, b

    def encode(self, x):
        return torch.zeros(x.shape[0], 1), torch.zeros(x.shape[0], 1)

    def decode(self, z):
        g = (self.a * z[..., :1] + self.b)[..., None]
        return g.expand(*z.shape[:-1], self.patch, self.patch)


def _ck(sigma_model=0.0):
    return SimpleNamespace(normalization={"mode": "none"}, extra={"sigma_model": sigma_model})


def _closed_form(m, x, observed, s):
    n = observed.sum()
    prec = m.a**2 * n / s**2 + 1
    mean_z = m.a * (x[observed] - m.b).sum() / s**2 / prec
    return m.a * mean_z + m.b, m.a / math.sqrt(prec)  # image mean and std


def test_a_small_image_is_padded_with_unobserved_pixels_exactly():
    rng = np.random.default_rng(0)
    m, s = ConstantDecoder(16), 0.2
    x = (0.6 + s * rng.normal(size=(9, 12))).astype(np.float32)
    observed = np.ones_like(x, bool)
    observed[2:5, 3:8] = False
    pred = run(posterior_2d(m, _ck(), x, mask=observed, noise_sigma=s, n_samples=4000))
    mean, sd = _closed_form(m, x, observed, s)
    assert pred.arrays["posterior_mean"].shape == x.shape
    assert pred.arrays["samples"].shape == (4000, 9, 12)
    assert pred.arrays["modes"].shape == (1, 9, 12)
    assert np.allclose(pred.arrays["map"], mean, atol=1e-4)
    assert abs(float(pred.arrays["posterior_mean"].mean()) - mean) < 4 * sd / math.sqrt(4000)
    assert np.allclose(pred.arrays["posterior_std"], sd, rtol=4 * math.sqrt(0.5 / 4000))
    assert pred.meta["mode_weights"] == [pytest.approx(1.0)]
    assert pred.meta["noise_sigma_estimated"] is False


def test_tiles_far_from_an_overlap_give_their_own_closed_form():
    rng = np.random.default_rng(1)
    m, s = ConstantDecoder(16), 0.1
    # 40 px with patch 16 and overlap 4: tiles [0, 16), [12, 28), [24, 40) on each axis
    x = (0.4 + s * rng.normal(size=(40, 40))).astype(np.float32)
    x[24:, 24:] += 0.3  # the last tile sees other data
    pred = run(posterior_2d(m, _ck(), x, noise_sigma=s, n_samples=3000, overlap=4))
    assert pred.meta["n_tiles"] == 9 and "modes" not in pred.arrays
    observed = np.ones((16, 16), bool)
    for sl in (np.s_[0:10, 0:10], np.s_[30:40, 30:40]):  # owned by one tile only
        tile = np.s_[0:16, 0:16] if sl[0].start == 0 else np.s_[24:40, 24:40]
        mean, sd = _closed_form(m, x[tile], observed, s)
        assert np.allclose(pred.arrays["map"][sl], mean, atol=1e-4)
        got = pred.arrays["posterior_std"][sl]
        assert np.allclose(got, sd, rtol=4 * math.sqrt(0.5 / 3000))
    # in an overlap the std is that of the mixture of the two tiles: not below either
    sd = pred.arrays["posterior_std"]
    assert sd[14, 5] > 0.95 * min(sd[5, 5], sd[20, 5])
    # a sample takes each pixel from one tile: a draw of that tile's posterior
    assert pred.arrays["samples"].shape == (3000, 40, 40)


def test_model_error_conditions_on_observed_pixels():
    """With sigma_model, a missing pixel's std includes sigma_model; an observed pixel's is
    reduced by the data (Gaussian conditional: variance k sigma_noise^2 for the model-error
    part, k = sigma_model^2 / s^2)."""
    rng = np.random.default_rng(2)
    m, sn, sm = ConstantDecoder(16), 0.05, 0.1
    x = (0.5 + sn * rng.normal(size=(16, 16))).astype(np.float32)
    observed = np.ones_like(x, bool)
    observed[4:10, 4:10] = False
    pred = run(posterior_2d(m, _ck(sm), x, mask=observed, noise_sigma=sn, n_samples=4000))
    s = math.sqrt(sn**2 + sm**2)
    _, sd_g = _closed_form(m, x, observed, s)
    k = sm**2 / s**2
    var = pred.arrays["posterior_std"] ** 2
    # missing: Var(G) + sm^2; observed: Var((1 - k) G) + k sn^2
    assert np.allclose(var[~observed].mean(), sd_g**2 + sm**2, rtol=0.05)
    assert np.allclose(var[observed].mean(), (1 - k) ** 2 * sd_g**2 + k * sn**2, rtol=0.05)


def test_noise_is_estimated_when_not_given():
    rng = np.random.default_rng(3)
    m = ConstantDecoder(32)
    x = (0.5 + 0.07 * rng.normal(size=(32, 32))).astype(np.float32)
    pred = run(posterior_2d(m, _ck(), x, n_samples=8))
    assert pred.meta["noise_sigma_estimated"] is True
    assert pred.meta["noise_sigma"] == pytest.approx(0.07, rel=0.15)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mask": np.ones((5, 5))}, "mask has shape"),
        ({"mask": np.zeros((20, 20))}, "every pixel is masked"),
        ({"noise_sigma": -1.0}, "noise_sigma"),
        ({"n_samples": 0}, "n_samples"),
        ({"overlap": 12}, "overlap"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, message):
    x = np.random.default_rng(0).random((20, 20)).astype(np.float32)
    with pytest.raises(InputError, match=message):
        run(posterior_2d(ConstantDecoder(16), _ck(), x, **{"overlap": 4, **kwargs}))


def test_nan_pixels_are_missing_and_an_all_nan_image_is_refused():
    rng = np.random.default_rng(4)
    x = (0.5 + 0.1 * rng.normal(size=(16, 16))).astype(np.float32)
    x[3:6, 3:6] = np.nan
    pred = run(posterior_2d(ConstantDecoder(16), _ck(0.1), x, noise_sigma=0.1, n_samples=500))
    sd = pred.arrays["posterior_std"]
    assert np.isfinite(pred.arrays["posterior_mean"]).all()
    assert sd[3:6, 3:6].mean() > 1.2 * sd[8:, 8:].mean()
    with pytest.raises(InputError, match="every pixel"):
        run(posterior_2d(ConstantDecoder(16), _ck(), np.full((8, 8), np.nan, np.float32)))
    with pytest.raises(InputError, match="stack"):
        run(posterior_2d(ConstantDecoder(16), _ck(), np.zeros((2, 8, 8), np.float32)))


def test_chi2_self_check_warns_when_the_model_does_not_explain_the_data():
    rng = np.random.default_rng(5)
    m = ConstantDecoder(16)
    yy, xx = np.mgrid[0:16, 0:16]
    ramp = (0.3 + 0.03 * xx + 0.02 * yy + 0.02 * rng.normal(size=(16, 16))).astype(np.float32)
    flat = (0.5 + 0.02 * rng.normal(size=(16, 16))).astype(np.float32)
    # a ramp is not a constant: chi^2 >> 1
    bad = run(posterior_2d(m, _ck(), ramp, noise_sigma=0.02, n_samples=8))
    assert bad.meta["chi2_per_observed_pixel_at_map"] > 10
    assert len(bad.meta["warnings"]) == 1 and "does not represent" in bad.meta["warnings"][0]
    # the right noise level: chi^2 ~ 1, no warning; 3x too large: chi^2 ~ 1/9, a warning
    good = run(posterior_2d(m, _ck(), flat, noise_sigma=0.02, n_samples=8))
    assert 0.7 < good.meta["chi2_per_observed_pixel_at_map"] < 1.3
    assert good.meta["warnings"] == []
    over = run(posterior_2d(m, _ck(), flat, noise_sigma=0.06, n_samples=8))
    assert "overestimated" in over.meta["warnings"][0]


def test_an_image_needing_too_many_tiles_is_refused_before_any_work():
    x = np.zeros((100, 100), np.float32)
    with pytest.raises(InputError, match="crop a region"):
        run(posterior_2d(ConstantDecoder(16), _ck(), x, noise_sigma=0.1, overlap=4, max_tiles=4))
