"""The latent posterior against closed forms: a linear-Gaussian decoder (exact Gaussian
posterior) and a decoder with two separated modes (Laplace evidence ratio by hand, and the
true probability mass of each mode by quadrature)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize

from napari_sim_uq.core.events import run
from napari_sim_uq.tasks.vae2d.posterior import energy, find_modes, sample_mixture


def _fit(decode, x, w, starts, **kw):
    fits, timings = run(find_modes(decode, x, w, starts, **kw))
    return fits, timings


def _linear_problem(seed=0, K=5, H=6, W=7, s=0.3):
    g = torch.Generator().manual_seed(seed)
    Wm = torch.randn(H * W, K, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(H * W, generator=g, dtype=torch.float64) * 0.1

    def decode(z):
        return (z @ Wm.T + b).reshape(*z.shape[:-1], H, W)

    M = (torch.rand(H, W, generator=g) > 0.4).double()
    z_true = torch.randn(K, generator=g, dtype=torch.float64)
    x = decode(z_true) + s * torch.randn(H, W, generator=g, dtype=torch.float64)
    # closed form: H = W^T M W / s^2 + I, mean = H^-1 W^T M (x - b) / s^2
    Mf = M.flatten()
    prec = Wm.T @ (Mf[:, None] * Wm) / s**2 + torch.eye(K, dtype=torch.float64)
    mean = torch.linalg.solve(prec, Wm.T @ (Mf * (x.flatten() - b)) / s**2)
    return decode, x, M / s**2, mean, torch.linalg.inv(prec), K


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linear_gaussian_laplace_is_the_exact_posterior(dtype):
    decode64, x, w, mean, cov, K = _linear_problem()

    def decode(z):
        return decode64(z.double()).to(z.dtype)

    starts = torch.randn(1, 4, K, generator=torch.Generator().manual_seed(1)).to(dtype)
    fits, _ = _fit(decode, x[None].to(dtype), w[None].to(dtype), starts)
    f = fits[0]
    assert f.z.shape == (1, K)  # every start reaches the one mode: merged
    assert f.n_merged == 3 and f.n_rejected == 0
    assert float(f.weight[0]) == pytest.approx(1.0)
    tol = 1e-3
    assert float((f.z[0].double() - mean).norm() / mean.norm()) < tol
    assert float((f.cov[0].double() - cov).norm() / cov.norm()) < tol


def test_linear_gaussian_samples_converge_at_the_monte_carlo_rate():
    decode, x, w, mean, cov, K = _linear_problem(seed=3)
    fits, _ = _fit(decode, x[None], w[None], torch.zeros(1, 1, K, dtype=torch.float64))
    f = fits[0]
    sd = cov.diagonal().sqrt()
    for n in (400, 6400):
        z, comp = sample_mixture(f, n, torch.Generator().manual_seed(n))
        assert (comp == 0).all()
        # each coordinate's sample mean is within 4 standard errors of the exact mean
        z_err = (z.mean(0) - mean) / (sd / math.sqrt(n))
        assert float(z_err.abs().max()) < 4.0
        # sample variances: relative error of a variance estimate has std sqrt(2 / n)
        var_err = (z.var(0) / cov.diagonal() - 1) / math.sqrt(2 / n)
        assert float(var_err.abs().max()) < 4.5
    # and the covariance matrix as a whole gets closer with more samples (MC rate)
    errs = []
    for n in (500, 8000):
        z, _ = sample_mixture(f, n, torch.Generator().manual_seed(7 + n))
        errs.append(float((torch.cov(z.T) - cov).norm() / cov.norm()))
    assert errs[1] < errs[0] / 2  # sqrt(16) = 4 expected; 2 leaves room for chance


# ---------------------------------------------------------------- two separated modes

C, S, X0, X1, X2 = 0.4, 0.2, 2.0, 0.5, 0.1


def _bimodal_decoder(z):
    z1, z2 = z[..., 0], z[..., 1]
    return torch.stack([z1**2, z2, C * z1], -1)[..., None, :]  # (..., 1, 3) "image"


def _u1(a):  # the z1 part of U (z2 separates and is the same at both modes)
    return (X0 - a * a) ** 2 / (2 * S * S) + (X2 - C * a) ** 2 / (2 * S * S) + a * a / 2


def test_two_modes_found_with_the_laplace_evidence_ratio():
    x = torch.tensor([[[X0, X1, X2]]], dtype=torch.float64)
    w = torch.ones_like(x) / S**2
    starts = 2 * torch.randn(1, 10, 2, generator=torch.Generator().manual_seed(0)).double()
    fits, _ = _fit(_bimodal_decoder, x, w, starts)
    f = fits[0]
    assert f.z.shape[0] == 2 and f.n_rejected == 0

    def du(a):
        return -2 * a * (X0 - a * a) / S**2 - C * (X2 - C * a) / S**2 + a

    def d2u(a):
        return (6 * a * a - 2 * X0) / S**2 + C * C / S**2 + 1

    modes = [optimize.brentq(du, 0.5, 3.0), optimize.brentq(du, -3.0, -0.5)]
    logw = np.array([-_u1(m) - 0.5 * math.log(d2u(m)) for m in modes])
    laplace = np.exp(logw - logw.max())
    laplace /= laplace.sum()
    order = np.argsort(-f.z[:, 0].numpy())  # positive z1 first
    found = f.weight.numpy()[order]
    assert np.allclose(f.z[order, 0].numpy(), modes, atol=1e-6)
    assert np.allclose(found, laplace, atol=0.05)
    assert np.allclose(found, laplace, atol=1e-6)  # exact Hessian: equal, not just close
    # the true posterior mass of each basin (1D quadrature) agrees within 0.05 too
    ref = _u1(modes[0])
    pos = integrate.quad(lambda a: math.exp(-_u1(a) + ref), 0, 10)[0]
    neg = integrate.quad(lambda a: math.exp(-_u1(a) + ref), -10, 0)[0]
    assert abs(found[0] - pos / (pos + neg)) < 0.05
    # the MAP is the lower-energy mode
    assert f.map_index == int(torch.argmin(f.energy))
    # samples come from both components in proportion to the weights
    z, comp = sample_mixture(f, 4000, torch.Generator().manual_seed(2))
    share = float((comp == int(np.argmax(f.weight.numpy()))).double().mean())
    assert abs(share - float(f.weight.max())) < 4 * math.sqrt(0.25 / 4000)


def test_chi2_and_energy_are_consistent():
    decode, x, w, mean, cov, K = _linear_problem(seed=5)
    fits, _ = _fit(decode, x[None], w[None], torch.zeros(1, 2, K, dtype=torch.float64))
    f = fits[0]
    u = energy(decode, f.z, x[None], w[None])
    assert float(u[0]) == pytest.approx(float(f.energy[0]), rel=1e-9)
    r = x - decode(f.z[0])
    n_obs = int((w > 0).sum())
    assert float(f.chi2[0]) == pytest.approx(float((w * r * r).sum()) / n_obs, rel=1e-9)


def test_a_saddle_is_not_a_mode():
    # U = (x - z1^2)^2 / 2s^2 + ...: z1 = 0 is a stationary point with negative curvature
    # for x > s^2 (a maximum along z1); a start exactly there must not become a mode
    x = torch.tensor([[[X0, X1, 0.0]]], dtype=torch.float64)
    w = torch.ones_like(x) / S**2

    def dec(z):
        z1, z2 = z[..., 0], z[..., 1]
        return torch.stack([z1**2, z2, 0 * z1], -1)[..., None, :]

    starts = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]], dtype=torch.float64)
    fits, _ = _fit(dec, x, w, starts)
    f = fits[0]
    assert f.n_rejected == 1  # the start at z1 = 0 stays on the saddle
    assert f.z.shape[0] == 2  # the two symmetric modes
    assert np.allclose(f.weight.numpy(), [0.5, 0.5], atol=1e-6)
    # every start on the saddle: no positive-definite point; the saddle is kept with its
    # Hessian shifted to be positive definite and reported as rejected
    fits, _ = _fit(dec, x, w, torch.zeros(1, 3, 2, dtype=torch.float64))
    f = fits[0]
    assert f.z.shape[0] == 1 and f.n_rejected == 1 and f.n_merged == 2
    assert float(f.weight[0]) == pytest.approx(1.0)
    assert bool((torch.linalg.eigvalsh(f.cov[0]) > 0).all())
