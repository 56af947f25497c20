"""Losses and abnormality scores of the 2D autoencoders: the UPAE loss against its
analytic minimiser and the Gaussian NLL, the loss chosen by the config, masks, agreement of
the scores with the NumPy metrics, and a tiny model overfitting one image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.nn.losses import gaussian_nll
from napari_sim_uq.core.uq.metrics import anomaly_scores
from napari_sim_uq.tasks.ae2d.loss import (
    AE2DLoss,
    image_score,
    loss_kind,
    masked_mean,
    mse_score,
    pixel_scores,
    upae_loss,
)
from napari_sim_uq.tasks.ae2d.net import AEOutput, build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(seed: int = 0, shape=(2, 1, 6, 5)):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    mu = torch.rand(shape, generator=g, dtype=torch.float64)
    s = torch.randn(shape, generator=g, dtype=torch.float64)
    return x, mu, s


# ----------------------------------------------------------------------------- UPAE loss


def test_upae_gradient_vanishes_at_log_squared_residual():
    x, mu, _ = _data()
    s = torch.log((x - mu).square()).requires_grad_(True)
    upae_loss(mu, s, x).backward()
    assert float(s.grad.abs().max()) < 1e-12
    # and it is a minimum: the loss grows when s moves either way
    base = float(upae_loss(mu, s.detach(), x))
    for d in (-0.1, 0.1):
        assert float(upae_loss(mu, s.detach() + d, x)) > base


def test_upae_minimum_matches_brute_force():
    r2 = torch.tensor([1e-3, 0.04, 0.5, 2.0], dtype=torch.float64)
    grid = torch.linspace(-10, 3, 13001, dtype=torch.float64)
    for v in r2:
        x = torch.zeros(grid.numel(), 1, 1, 1, dtype=torch.float64)
        mu = torch.full_like(x, float(v.sqrt()))
        per_s = torch.exp(-grid) * v + grid  # the loss at each candidate s, one pixel
        best = grid[int(per_s.argmin())]
        assert abs(float(best) - math.log(float(v))) < 2e-3
        # upae_loss of a one-pixel image agrees with the formula at the optimum
        one = upae_loss(mu[:1], best.reshape(1, 1, 1, 1), x[:1])
        torch.testing.assert_close(one, per_s.min())


def test_upae_is_twice_the_gaussian_nll_minus_log_2pi_per_pixel():
    x, mu, s = _data(1)
    nll = -torch.distributions.Normal(mu, torch.exp(0.5 * s)).log_prob(x)
    expected = 2 * nll - math.log(2 * math.pi)
    # pixel by pixel, through a mask that selects one pixel
    for idx in [(0, 0, 0, 0), (1, 0, 5, 4), (0, 0, 3, 2)]:
        mask = torch.zeros_like(x, dtype=torch.bool)
        mask[idx] = True
        torch.testing.assert_close(upae_loss(mu, s, x, mask), expected[idx])
    torch.testing.assert_close(upae_loss(mu, s, x), expected.mean())


def test_masked_losses_ignore_the_invalid_pixels():
    x, mu, s = _data(2, shape=(2, 1, 8, 8))
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    mask[..., 2:6, 1:7] = True
    x_bad = x.clone()
    x_bad[~mask] = float("nan")  # padding could hold anything
    full = upae_loss(mu[..., 2:6, 1:7], s[..., 2:6, 1:7], x[..., 2:6, 1:7])
    torch.testing.assert_close(upae_loss(mu, s, x_bad, mask), full)
    # a (H, W) mask broadcasts; float weights count fractionally
    torch.testing.assert_close(upae_loss(mu, s, x, mask[0, 0]), full)
    w = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    per_pixel = torch.exp(-s) * (x - mu).square() + s
    torch.testing.assert_close(masked_mean(per_pixel, w), (w * per_pixel).sum() / w.sum())
    with pytest.raises(InputError, match="selects no valid pixel"):
        upae_loss(mu, s, x, torch.zeros_like(mask))
    with pytest.raises(InputError, match="does not broadcast"):
        upae_loss(mu, s, x, torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(InputError, match="must be >= 0"):
        upae_loss(mu, s, x, -w)


# ----------------------------------------------------------------------------- AE2DLoss


def test_the_config_chooses_the_loss():
    assert loss_kind({"model": "hetero", "aleatoric": False}) == "upae"
    assert loss_kind({"model": "mc-dropout"}) == "nll"
    assert loss_kind({"model": "mc-dropout", "aleatoric": False}) == "mse"
    x, mu, s = _data(3)
    out = AEOutput(mu, s)

    total, terms = AE2DLoss({"model": "hetero"})(out, x)
    torch.testing.assert_close(total, upae_loss(mu, s, x))
    assert set(terms) == {"loss", "mse", "mean_logvar", "zms"}
    assert all(isinstance(v, float) for v in terms.values())
    assert terms["mse"] == pytest.approx(float(F.mse_loss(mu, x)))
    assert terms["zms"] == pytest.approx(float(((x - mu).square() / s.exp()).mean()))

    total, _ = AE2DLoss({"model": "mc-dropout"}, var_floor=1e-3)(out, x)
    torch.testing.assert_close(total, gaussian_nll(x, mu, s.exp(), floor=1e-3))
    total, _ = AE2DLoss({}, var_floor=1e-3, beta=0.5)(out, x)
    torch.testing.assert_close(total, gaussian_nll(x, mu, s.exp(), floor=1e-3, beta=0.5))
    assert not torch.allclose(total, gaussian_nll(x, mu, s.exp(), floor=1e-3))

    total, terms = AE2DLoss({"aleatoric": False})(AEOutput(mu, None), x)
    torch.testing.assert_close(total, F.mse_loss(mu, x))
    assert set(terms) == {"loss", "mse"}


def test_loss_errors():
    x, mu, s = _data(4)
    with pytest.raises(InputError, match="needs a log-variance output"):
        AE2DLoss({"model": "hetero"})(AEOutput(mu, None), x)
    with pytest.raises(InputError, match="must have the same shape"):
        AE2DLoss({})(AEOutput(mu, s), x[:1])
    with pytest.raises(InputError, match="var_floor must be >= 0"):
        AE2DLoss({}, var_floor=-1.0)
    with pytest.raises(InputError, match="model must be one of"):
        AE2DLoss({"model": "bayes"})


# ----------------------------------------------------------------------------- scores


def test_scores_agree_with_the_numpy_metrics():
    x, mu, s = _data(5, shape=(4, 1, 7, 9))
    var = s.exp()
    torch.testing.assert_close(pixel_scores(x, mu, var), (x - mu).square() / var)
    ours = image_score(x, mu, var)
    assert ours.shape == (4,)
    ref = anomaly_scores(x.numpy(), mu.numpy(), np.sqrt(var.numpy()))
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-12)
    # float32 too
    ours32 = image_score(x.float(), mu.float(), var.float())
    np.testing.assert_allclose(ours32.numpy(), ref, rtol=1e-5)
    # the plain-AE score: the per-image MSE
    np.testing.assert_allclose(
        mse_score(x, mu).numpy(), ((x - mu).numpy() ** 2).reshape(4, -1).mean(axis=1)
    )


def test_masked_image_scores():
    x, mu, s = _data(6, shape=(3, 1, 8, 8))
    var = s.exp()
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[..., 1:7, 2:6] = True
    crop = (..., slice(1, 7), slice(2, 6))
    torch.testing.assert_close(
        image_score(x, mu, var, mask), image_score(x[crop], mu[crop], var[crop])
    )
    torch.testing.assert_close(mse_score(x, mu, mask), mse_score(x[crop], mu[crop]))


def test_score_errors():
    x, mu, s = _data(7)
    var = s.exp()
    var[0, 0, 0, 0] = 0.0
    with pytest.raises(InputError, match="var must be > 0 everywhere, found 1 value"):
        image_score(x, mu, var)
    with pytest.raises(InputError, match="must have the same shape"):
        pixel_scores(x, mu, var[:1])
    with pytest.raises(InputError, match="batch of images"):
        mse_score(x[0, 0, 0], mu[0, 0, 0])


# ----------------------------------------------------------------------------- training


def _image(size: int = 16) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    blob = torch.exp(-((yy - 6.0) ** 2 + (xx - 9.0) ** 2) / 12.0)
    return (0.15 + 0.7 * blob)[None, None].float()


@pytest.mark.parametrize(
    "kw",
    [
        {"arch": "unet", "aleatoric": False},
        {"arch": "conv-ae", "aleatoric": False},
        {"arch": "unet", "model": "hetero"},
        {"arch": "conv-ae", "model": "mc-dropout"},
    ],
)
def test_tiny_model_overfits_one_image(kw):
    torch.manual_seed(0)
    cfg = {"base_channels": 4, "depth": 2, "dropout": 0.0, **kw}
    model, loss_fn = build_model(cfg), AE2DLoss(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = _image()
    history = []
    for _ in range(60):
        opt.zero_grad()
        loss, terms = loss_fn(model(x), x)
        loss.backward()
        opt.step()
        history.append(terms)
    first, last = history[0], history[-1]
    assert last["mse"] < 0.5 * first["mse"]
    if loss_fn.kind == "mse":
        assert last["loss"] < 0.5 * first["loss"]
    else:  # the NLL-type losses can go negative: require a clear decrease instead
        assert last["loss"] < first["loss"] - 0.1


def test_decoupled_nll_trains_the_mean_by_mse_and_the_variance_by_the_nll():
    # gradients w.r.t. the mean are those of the MSE; w.r.t. the log-variance those of the
    # Gaussian NLL at the (fixed) mean; the joint NLL mixes them (variance-weighted)
    cfg = {"model": "mc-dropout", "aleatoric": True}
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 8, 8, generator=g)
    mean0 = torch.rand(2, 1, 8, 8, generator=g)
    s0 = torch.randn(2, 1, 8, 8, generator=g)

    def grads(loss_fn):
        mean = mean0.clone().requires_grad_(True)
        s = s0.clone().requires_grad_(True)
        loss_fn(mean, s).backward()
        return mean.grad, s.grad

    dec = AE2DLoss(cfg, decoupled=True, var_floor=0.0)
    gm, gs = grads(lambda m, s: dec(AEOutput(m, s), target)[0])
    n = target.numel()
    r = target - mean0
    # d/dmu 0.5 log(mean r^2) = -r / (n mean r^2): the MSE's direction
    torch.testing.assert_close(gm, -r / (n * (r * r).mean()), rtol=1e-4, atol=1e-7)
    v = torch.exp(s0)
    torch.testing.assert_close(gs, 0.5 * (1 - (target - mean0) ** 2 / v) / n)
    joint = AE2DLoss(cfg, var_floor=0.0)
    gm_j, gs_j = grads(lambda m, s: joint(AEOutput(m, s), target)[0])
    torch.testing.assert_close(gs_j, gs)
    torch.testing.assert_close(gm_j, -(target - mean0) / v / n)
    # the hetero (UPAE) loss ignores the option
    assert not AE2DLoss({"model": "hetero"}, decoupled=True).decoupled
