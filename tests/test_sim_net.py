"""SimUQNet: shapes, output constraints, delta-method variances (against autograd), the
log-variance clamp and init, MC dropout modes, input validation, gradient coverage."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.nn.activations import (
    bounded_tanh_variance,
    soft_clamp,
    softmax_covariance_factors,
    softmax_variance,
    softplus_variance,
)
from napari_sim_uq.core.nn.modes import count_parameters, eval_mode, mc_dropout_mode
from napari_sim_uq.tasks.sim.net import SimNetConfig, SimOutput, SimUQNet

SMALL = {"base_channels": 8, "psf_size": 5}


def _net(seed: int = 0, **kw) -> SimUQNet:
    torch.manual_seed(seed)
    return SimUQNet(SimNetConfig(**{**SMALL, **kw}))


def _x(b: int = 2, frames: int = 9, h: int = 20, w: int = 27, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, frames, h, w, generator=g)


# ---------------------------------------------------------------- config


def test_config_roundtrip_and_validation():
    cfg = SimNetConfig(uq_targets=["psf", "emitter"], hr_factor=3)
    assert cfg.uq_targets == ("emitter", "psf")  # canonical order
    d = json.loads(json.dumps(cfg.to_dict()))
    assert SimNetConfig.from_dict(d) == cfg
    assert SimNetConfig().n_frames == 9
    bad = [
        {"psf_size": 14},
        {"hr_factor": 0},
        {"depth": 0},
        {"dropout": 1.0},
        {"uq_targets": ("emitter", "noise")},
        {"logvar_min": 1.0, "logvar_max": 0.0},
        {"logvar_init": 7.0},
        {"n_angles": 2.5},
        {"predict_background": "yes"},
    ]
    for kw in bad:
        with pytest.raises(InputError):
            SimNetConfig(**kw)
    with pytest.raises(InputError, match="unknown"):
        SimNetConfig.from_dict({"depht": 3})


# ---------------------------------------------------------------- shapes, constraints


@pytest.mark.parametrize(
    ("f", "depth", "angles", "phases"), [(1, 2, 3, 3), (2, 3, 3, 3), (3, 2, 2, 5)]
)
def test_shapes_odd_sizes(f, depth, angles, phases):
    net = _net(hr_factor=f, depth=depth, n_angles=angles, n_phases=phases).eval()
    n = angles * phases
    assert net.expected_frames == n
    with torch.no_grad():
        out = net(_x(frames=n))
    assert isinstance(out, SimOutput)
    hr = (f * 20, f * 27)
    assert out.emitter.shape == out.emitter_var.shape == out.emitter_logvar.shape == (2, 1, *hr)
    assert out.lp.shape == out.lp_var.shape == out.lp_logvar.shape == (2, n, *hr)
    assert out.psf.shape == out.psf_var.shape == out.psf_logvar.shape == (2, 5, 5)
    assert out.background.shape == (2, 1, 1, 1)
    assert all(t.dtype == torch.float32 for t in out if t is not None)


def test_tiny_input_is_padded():
    net = _net(depth=3).eval()
    with torch.no_grad():
        out = net(_x(b=1, h=3, w=5))  # smaller than the padding: replicate, not reflect
    assert out.emitter.shape == (1, 1, 6, 10)


def test_output_constraints_and_positive_variances():
    net = _net().eval()
    with torch.no_grad():
        out = net(_x() * 4 - 1)
    assert (out.emitter >= 0).all()
    assert ((out.lp >= 0) & (out.lp <= 2)).all()
    assert (out.psf >= 0).all()
    torch.testing.assert_close(out.psf.sum(dim=(-2, -1)), torch.ones(2), rtol=0, atol=1e-6)
    assert (out.background >= 0).all()
    for v in (out.emitter_var, out.lp_var, out.psf_var):
        assert (v > 0).all() and torch.isfinite(v).all()


def test_uq_targets_subset():
    net = _net(uq_targets=("lp",), predict_background=False).eval()
    with torch.no_grad():
        out = net(_x())
    assert out.lp_var is not None and out.lp_logvar is not None
    for name in ("emitter_var", "emitter_logvar", "psf_var", "psf_logvar", "background"):
        assert getattr(out, name) is None, name
    assert net.emitter_logvar_head is None and net.psf_logvar_head is None
    assert net.background_head is None


@pytest.mark.parametrize("var_space", ["output", "logit"])
def test_logvar_init(var_space):
    net = _net(logvar_init=-3.0, var_space=var_space).eval()
    with torch.no_grad():
        out = net(_x())
    for s in (out.emitter_logvar, out.lp_logvar, out.psf_logvar):
        assert abs(s.mean().item() + 3.0) < 1e-4
        assert s.std().item() < 1e-5  # zero weights: constant at start
    with torch.no_grad():
        feats = _hr_features(net, _x())
        a_e, a_l = net.emitter_head(feats), net.lp_head(feats)
    v = torch.exp(torch.tensor(-3.0))
    if var_space == "output":
        # the heads' log-variances are those of the emitter / pattern values themselves
        torch.testing.assert_close(out.emitter_var, v.expand_as(out.emitter), rtol=1e-4, atol=0)
        torch.testing.assert_close(out.lp_var, v.expand_as(out.lp), rtol=1e-4, atol=0)
    else:
        # the delta-method variances of the activations: softplus' = sigmoid, tanh' = sech^2
        torch.testing.assert_close(out.emitter_var, torch.sigmoid(a_e) ** 2 * v)
        torch.testing.assert_close(out.lp_var, torch.cosh(a_l) ** -4 * v)


def test_stored_configs_without_var_space_keep_the_logit_parametrisation():
    d = SimNetConfig(base_channels=4, depth=1).to_dict()
    del d["var_space"]
    assert SimNetConfig.from_stored(d).var_space == "logit"
    assert SimNetConfig.from_stored({**d, "var_space": "output"}).var_space == "output"
    assert SimNetConfig.from_dict(d).var_space == "output"  # new configs: the default
    with pytest.raises(InputError, match="var_space"):
        SimNetConfig(var_space="log")


def _hr_features(net: SimUQNet, x: torch.Tensor) -> torch.Tensor:
    """Re-run the trunk to get the HR features the heads see (for the init test)."""
    feats = {}
    hook = net.emitter_head.register_forward_hook(lambda m, inp, out: feats.setdefault("f", inp[0]))
    net(x)
    hook.remove()
    return feats["f"]


# ---------------------------------------------------------------- clamp


def test_soft_clamp_bounds_and_gradient():
    lo, hi = -12.0, 6.0
    x = torch.linspace(-200, 200, 4001, dtype=torch.float32, requires_grad=True)
    y = soft_clamp(x, lo, hi)
    assert (y >= lo).all() and (y <= hi).all()
    assert (y[1:] >= y[:-1]).all()  # monotone
    inside = (x > lo + 8) & (x < hi - 8)
    torch.testing.assert_close(y[inside], x[inside], rtol=0, atol=2e-3)
    (g,) = torch.autograd.grad(y.sum(), x)
    moderate = (x.detach() > lo - 10) & (x.detach() < hi + 10)
    assert (g[moderate] > 0).all()  # no dead gradient just outside the bounds


def test_model_logvar_respects_clamp():
    net = _net(logvar_min=-5.0, logvar_max=2.0, logvar_init=-1.0).eval()
    for bias, bound in ((1e3, 2.0), (-1e3, -5.0)):
        with torch.no_grad():
            for head in (net.emitter_logvar_head, net.lp_logvar_head, net.psf_logvar_head):
                head.bias.fill_(bias)
            out = net(_x())
        for s in (out.emitter_logvar, out.lp_logvar, out.psf_logvar):
            assert (s >= -5.0).all() and (s <= 2.0).all()
            torch.testing.assert_close(s, torch.full_like(s, bound), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- delta method


def test_softmax_variance_matches_autograd_jacobian():
    g = torch.Generator().manual_seed(3)
    for n in (1, 2, 7, 25):
        z = torch.randn(n, generator=g, dtype=torch.float64) * 2
        v = torch.rand(n, generator=g, dtype=torch.float64) * 3 + 0.01
        jac = torch.autograd.functional.jacobian(lambda t: torch.softmax(t, -1), z)
        ref = torch.diagonal(jac @ torch.diag(v) @ jac.T)
        got = softmax_variance(torch.softmax(z, -1), v)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-14)
    # batched, along another dim
    z = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    v = torch.rand(3, 6, 4, generator=g, dtype=torch.float64)
    got = softmax_variance(torch.softmax(z, 1), v, dim=1)
    for i in range(3):
        for j in range(4):
            jac = torch.autograd.functional.jacobian(lambda t: torch.softmax(t, -1), z[i, :, j])
            ref = torch.diagonal(jac @ torch.diag(v[i, :, j]) @ jac.T)
            torch.testing.assert_close(got[i, :, j], ref, rtol=1e-10, atol=1e-14)


def test_softmax_covariance_factors_match_autograd_jacobian():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(9, generator=g, dtype=torch.float64)
    v = torch.rand(9, generator=g, dtype=torch.float64) + 0.1
    p = torch.softmax(z, -1)
    jac = torch.autograd.functional.jacobian(lambda t: torch.softmax(t, -1), z)
    ref = jac @ torch.diag(v) @ jac.T
    w, c = softmax_covariance_factors(p, v)
    cov = torch.diag(w) - torch.outer(w, p) - torch.outer(p, w) + c * torch.outer(p, p)
    torch.testing.assert_close(cov, ref, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(cov.sum(0), torch.zeros(9, dtype=torch.float64), atol=1e-14, rtol=0)


def test_model_psf_variance_is_softmax_delta_method():
    net = _net().eval()
    with torch.no_grad():
        out = net(_x())
    p = out.psf.flatten(1).double()
    v = out.psf_logvar.flatten(1).double().exp()
    for b in range(p.shape[0]):
        jac = torch.diag(p[b]) - torch.outer(p[b], p[b])
        ref = torch.diagonal(jac @ torch.diag(v[b]) @ jac.T)
        torch.testing.assert_close(out.psf_var.flatten(1)[b].double(), ref, rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize(
    ("fn", "act"),
    [(softplus_variance, nn.functional.softplus), (bounded_tanh_variance, lambda a: 1 + a.tanh())],
)
def test_elementwise_delta_method_matches_autograd(fn, act):
    a = torch.linspace(-8, 8, 161, dtype=torch.float64, requires_grad=True)
    v = torch.rand(161, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (d,) = torch.autograd.grad(act(a).sum(), a)
    # (autograd's 1 - tanh^2 itself loses ~1e-10 relative accuracy at |a| = 8)
    torch.testing.assert_close(fn(a.detach(), v), d**2 * v, rtol=1e-8, atol=0)


def test_bounded_tanh_variance_stays_positive_when_saturated():
    a = torch.tensor([-12.0, 12.0])  # float32 tanh rounds to +-1: naive 1 - tanh^2 is 0
    assert (1 - a.tanh() ** 2 == 0).all()
    got = bounded_tanh_variance(a, torch.ones(2))
    ref = bounded_tanh_variance(a.double(), torch.ones(2, dtype=torch.float64))
    assert (got > 0).all()
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=0)


# ---------------------------------------------------------------- MC dropout


def test_mc_dropout_mode():
    net = _net(dropout=0.3)
    x = _x(b=1)
    net.eval()
    with torch.no_grad():
        a, b = net(x), net(x)
    assert torch.equal(a.emitter, b.emitter) and torch.equal(a.psf, b.psf)

    for start in (False, True):
        net.train(start)
        net.stem[1].training = not start  # a mixed state must come back as it was
        before = {name: m.training for name, m in net.named_modules()}
        with mc_dropout_mode(net) as model, torch.no_grad():
            assert model is net
            for m in net.modules():
                assert m.training == isinstance(m, nn.Dropout2d)
            c, d = net(x), net(x)
        assert not torch.equal(c.emitter, d.emitter)
        assert not torch.equal(c.psf, d.psf)
        assert {name: m.training for name, m in net.named_modules()} == before

    guard = mc_dropout_mode(net)  # plain call
    assert guard.n_dropout == sum(isinstance(m, nn.Dropout2d) for m in net.modules()) > 0
    assert not net.training
    guard.restore()
    assert net.training


def test_eval_mode():
    net = _net(dropout=0.3).train()
    net.stem[1].training = False  # a mixed state must come back as it was
    before = {name: m.training for name, m in net.named_modules()}
    with eval_mode(net) as model:
        assert model is net
        assert not any(m.training for m in net.modules())
    assert {name: m.training for name, m in net.named_modules()} == before
    guard = eval_mode(net)  # plain call
    assert guard.n_dropout == 0 and not net.training
    guard.restore()
    assert net.training
    with pytest.raises(InputError, match="eval_mode needs a torch.nn.Module"):
        eval_mode("not a model")


# ---------------------------------------------------------------- input validation


def test_input_errors():
    net = _net().eval()
    with pytest.raises(InputError, match=r"model expects 9 frames \(3 angles x 3 phases\), got 4"):
        net(_x(frames=4))
    with pytest.raises(InputError, match=r"x\[None\]"):
        net(_x()[0])
    x = _x()
    x[0, 3, 5, 5] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        net(x)
    with pytest.raises(InputError, match="floating point"):
        net((_x() * 100).to(torch.int32))
    with pytest.raises(InputError, match="torch tensor"):
        net(_x().numpy())
    # float64 input is cast to the model dtype; checks can be switched off
    with torch.no_grad():
        assert net(_x().double(), check_input=False).emitter.dtype == torch.float32


# ---------------------------------------------------------------- gradients, size


def test_gradient_reaches_every_parameter():
    net = _net(depth=2).train()
    out = net(_x(b=2, h=9, w=11))
    loss = sum(t.float().mean() for t in out if t is not None)
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    zero = [n for n, p in net.named_parameters() if p.grad is not None and not p.grad.any()]
    assert not missing, f"unused parameters: {missing}"
    assert not zero, f"parameters with zero gradient: {zero}"


def test_default_parameter_count():
    net = SimUQNet(SimNetConfig())
    n = count_parameters(net)
    print(f"\nSimUQNet default config (base 32, depth 3, f=2, k=15): {n:,} parameters")
    assert 100_000 < n < 3_000_000
    assert count_parameters(net, trainable_only=False) == n


def test_icnr_init_has_no_checkerboard():
    net = _net(hr_factor=3).eval()
    shuffle = net.to_hr[:2]  # conv + PixelShuffle(3)
    with torch.no_grad():
        hr = shuffle(torch.randn(1, 8, 4, 5))
    blocks = hr.unflatten(-2, (4, 3)).unflatten(-1, (5, 3))  # (1, C, 4, 3, 5, 3)
    torch.testing.assert_close(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))


def test_norm_option_and_pooled_override():
    with pytest.raises(InputError, match="norm must be one of"):
        SimNetConfig(norm="batch")
    torch.manual_seed(0)
    net = SimUQNet(SimNetConfig(base_channels=4, depth=2, psf_size=5, norm="pixel")).eval()
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in net.modules())
    x = torch.rand(2, 9, 13, 10)
    with torch.no_grad():
        ref = net(x)
        bottom = net.bottleneck(x)
        assert bottom.shape == (2, 16, 4, 3)  # padded to 16 x 12, then / 2^depth
        same = net(x, pooled=bottom.mean(dim=(-2, -1)))
        other = net(x, pooled=torch.zeros(2, 16))
    for k in ("emitter", "lp", "psf", "psf_var", "background"):
        torch.testing.assert_close(getattr(same, k), getattr(ref, k), rtol=0, atol=0)
    # the pooled vector drives only the PSF and background heads
    torch.testing.assert_close(other.emitter, ref.emitter, rtol=0, atol=0)
    assert not torch.allclose(other.psf, ref.psf)
    with pytest.raises(InputError, match="pooled must have shape"):
        net(x, pooled=torch.zeros(2, 3))
