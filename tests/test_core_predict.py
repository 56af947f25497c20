"""core/uq/predict.py: tiled, batched MC-dropout prediction against analytic truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import Event, run
from napari_sim_uq.core.uq.predict import mc_tiled_predict, total_std


class ScaledDropout(nn.Module):
    """f(x) = x * d with d = dropout(1) (Bernoulli(1-p)/(1-p) per pixel): E f = x,
    Var f = x^2 p / (1 - p); the aleatoric head returns c * x^2."""

    def __init__(self, p: float = 0.3, c: float = 0.05):
        super().__init__()
        self.drop = nn.Dropout(p)
        self.c = c

    def forward(self, x):
        return x * self.drop(torch.ones_like(x)), self.c * x * x


def _pass(model):
    def fn(xb):
        m, v = model(xb)
        return {"out": (m, v)}

    return fn


def test_mc_moments_match_the_analytic_mean_and_variance():
    torch.manual_seed(0)
    p, c, T = 0.3, 0.05, 4000
    model = ScaledDropout(p, c)
    x = torch.linspace(0.5, 2.0, 12 * 10).reshape(12, 10)
    arrays, meta = run(
        mc_tiled_predict(_pass(model), x, model=model, mc_samples=T, mc_batch=500, seed=3)
    )
    mean, epi, alea = arrays["out"][0], arrays["out_epi_var"][0], arrays["out_alea_var"][0]
    xx = x.numpy()
    true_var = xx**2 * p / (1 - p)
    # the sample mean has std sqrt(true_var / T); 5 standard errors
    assert np.all(np.abs(mean - xx) < 5 * np.sqrt(true_var / T))
    # the sample variance of a two-valued variable: relative s.e. ~ sqrt((kurt - 1) / T)
    d = np.array([0.0, 1 / (1 - p)])
    kurt = ((d - 1) ** 4 * [p, 1 - p]).sum() / (p / (1 - p)) ** 2
    assert np.all(np.abs(epi / true_var - 1) < 5 * np.sqrt((kurt - 1) / T))
    np.testing.assert_allclose(alea, c * xx**2, rtol=1e-5)
    sd = total_std({k: v[0] for k, v in arrays.items()}, "out", scale=2.0)
    np.testing.assert_allclose(sd["std"], 2 * np.sqrt(epi + alea), rtol=1e-5)
    np.testing.assert_allclose(sd["epistemic_std"], 2 * np.sqrt(epi), rtol=1e-5)
    assert meta["mc_samples"] == T and meta["n_tiles"] == 1


def test_chunk_size_changes_the_draws_not_the_distribution():
    torch.manual_seed(0)
    p, T = 0.5, 2000
    model = ScaledDropout(p)
    x = torch.ones(8, 8)
    res = {}
    for chunk in (1, 7, 2000):
        arrays, meta = run(
            mc_tiled_predict(_pass(model), x, model=model, mc_samples=T, mc_batch=chunk)
        )
        res[chunk] = float(arrays["out_epi_var"].mean())
        assert meta["mc_batch"] == chunk
    # Var = p/(1-p) = 1 per pixel; 64 pixels x 2000 draws: s.e. of the pooled mean < 0.02
    for v in res.values():
        assert abs(v - 1.0) < 0.1


def test_one_sample_is_deterministic_eval_mode_and_modes_are_restored():
    model = ScaledDropout(0.5)
    model.train()
    x = torch.rand(16, 16) + 0.5
    a, meta = run(mc_tiled_predict(_pass(model), x, model=model, mc_samples=1))
    np.testing.assert_allclose(a["out"][0], x.numpy(), rtol=1e-6)  # eval: dropout off
    assert "out_epi_var" not in a and meta["mc_batch"] is None
    assert model.training and model.drop.training  # restored


class LocalConv(nn.Module):
    """Deterministic 3x3 convolutions (receptive-field radius 2)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 1, 3, padding=1)
        )

    def forward(self, x):
        return self.net(x)


def test_tiled_equals_untiled_for_a_local_model():
    model = LocalConv()

    def fn(xb):
        return {"y": (model(xb), None)}

    rng = np.random.default_rng(0)
    x = rng.random((70, 90)).astype(np.float32)
    whole, _ = run(mc_tiled_predict(fn, x, model=model, multiple=4))
    events = []
    job = mc_tiled_predict(fn, x, model=model, multiple=4, tile=40, overlap=16)
    tiled, meta = run(job, events.append)
    assert meta["n_tiles"] > 4
    assert len(events) == meta["n_tiles"] and all(isinstance(e, Event) for e in events)
    # blend margin (overlap / 4 = 4 px) exceeds the receptive-field radius (2 px): exact
    np.testing.assert_allclose(tiled["y"], whole["y"], atol=1e-5)


def test_clear_errors():
    model = LocalConv()

    def fn(xb):
        return {"y": (model(xb), None)}

    with pytest.raises(InputError, match="NaN"):
        run(mc_tiled_predict(fn, np.full((8, 8), np.nan), model=model))
    with pytest.raises(InputError, match="shape"):
        run(mc_tiled_predict(fn, np.zeros((2, 2, 8, 8)), model=model))
    with pytest.raises(InputError, match="mc_samples"):
        run(mc_tiled_predict(fn, np.zeros((8, 8)), model=model, mc_samples=0))
