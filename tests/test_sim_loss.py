"""Tests of the SIM training loss (napari_sim_uq.tasks.sim.loss)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.nn.losses import CameraNoise, gaussian_nll
from napari_sim_uq.core.uq.metrics import ms_ssim
from napari_sim_uq.tasks.sim.loss import NonFiniteLossError, SimLoss, SimLossConfig
from napari_sim_uq.tasks.sim.net import SimNetConfig, SimOutput, SimUQNet
from napari_sim_uq.tasks.sim.synth import SynthConfig, generate_sample

F_HR = 2


def tiny_net(**kw) -> SimUQNet:
    torch.manual_seed(0)
    cfg = dict(base_channels=8, depth=2, hr_factor=F_HR, psf_size=7, dropout=0.0)
    cfg.update(kw)
    return SimUQNet(SimNetConfig(**cfg))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sample():
    """A 16 x 16 sample with a constant read-noise sigma (2 counts), so that the scalar
    Poisson-Gaussian camera model is exact."""
    cfg = SynthConfig(lr_size=(16, 16), hr_factor=F_HR, read_noise=(2.0, 2.0), high_noise_regions=0)
    s = generate_sample(cfg, seed=0)
    assert np.allclose(s.read_sigma, 2.0)
    return s


@pytest.fixture(scope="module")
def norm(sample):
    """(x, scale): the raw stack normalised by the peak of the clean data."""
    scale = float(sample.clean.max())
    return torch.from_numpy(sample.raw / scale)[None], scale


@pytest.fixture(scope="module")
def net_out(norm):
    x, _ = norm
    with torch.no_grad():
        return tiny_net()(x)


# ------------------------------------------------------------------------------ config


def test_config_roundtrip_and_validation():
    cfg = SimLossConfig(beta_nll=0.5, aux_rec_weight=0.1, aux_rec_mode="ms_ssim")
    assert cfg.aux_rec_mode == "ms-ssim"
    assert SimLossConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (
        dict(var_floor=0.0),
        dict(var_floor=float("nan")),
        dict(psf_var_weight=-1.0),
        dict(camera_noise="gaussian"),
        dict(beta_nll=1.5),
        dict(aux_rec_mode="l2"),
        dict(supervised="yes"),
        dict(raw_weight=0.0),
    ):
        with pytest.raises(InputError):
            SimLossConfig(**bad)
    with pytest.raises(InputError, match="unknown"):
        SimLossConfig.from_dict({"var_flor": 1e-6})
    with pytest.raises(InputError):
        SimLoss(SimLossConfig(), hr_factor=0)


# ------------------------------------------------------------------------------ NLL


def test_gaussian_nll_matches_torch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, generator=g)
    m = torch.randn(2, 3, 5, 7, generator=g)
    var = torch.rand(2, 3, 5, 7, generator=g) + 0.05
    for red in ("mean", "sum", "none"):
        ref = F.gaussian_nll_loss(m, x, var, full=False, eps=1e-12, reduction=red)
        assert torch.allclose(gaussian_nll(x, m, var, 0.0, reduction=red), ref, atol=1e-6)
    # the floor is added to the variance
    ref = F.gaussian_nll_loss(m, x, var + 0.3, full=False, eps=1e-12)
    assert torch.allclose(gaussian_nll(x, m, var, 0.3), ref, atol=1e-6)
    with pytest.raises(InputError):
        gaussian_nll(x, m, var, -1.0)


def test_optimal_constant_variance_is_mean_squared_residual():
    g = torch.Generator().manual_seed(1)
    x = 3.0 * torch.randn(500, generator=g)
    m = torch.zeros(500)
    target = float(x.square().mean())
    # analytically: zero gradient at log mean(r^2), sign change around it
    for offset, sign in ((0.0, 0), (-0.5, -1), (0.5, 1)):
        s = torch.tensor(math.log(target) + offset, requires_grad=True)
        gaussian_nll(x, m, s.exp().expand(500)).backward()
        if sign == 0:
            assert abs(float(s.grad)) < 1e-5
        else:
            assert math.copysign(1, float(s.grad)) == sign
    # and by minimisation of a scalar log-variance
    s = torch.tensor(0.0, requires_grad=True)
    opt = torch.optim.Adam([s], lr=0.2)
    for _ in range(150):
        opt.zero_grad()
        gaussian_nll(x, m, s.exp().expand(500)).backward()
        opt.step()
    assert float(s.exp()) == pytest.approx(target, rel=1e-2)


def test_beta_nll_weights_and_gradient():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, generator=g)
    var = torch.rand(50, generator=g) + 0.1
    m = torch.zeros(50, requires_grad=True)
    plain = gaussian_nll(x, m, var, 0.0, reduction="none")
    weighted = gaussian_nll(x, m, var, 0.0, beta=0.5, reduction="none")
    assert torch.allclose(weighted, plain * var.sqrt())
    # beta = 1: the mean gets the gradient of 0.5 * MSE, independent of the variance
    gaussian_nll(x, m, var, 0.0, beta=1.0).backward()
    assert torch.allclose(m.grad, -(x - m.detach()) / 50, atol=1e-7)
    # the weight is a constant (stop-gradient): the variance gets the NLL gradient, scaled
    v = var.clone().requires_grad_(True)
    gaussian_nll(x, torch.zeros(50), v, 0.0, beta=0.5, reduction="sum").backward()
    expect = var.sqrt() * 0.5 * (1 / var - x.square() / var.square())
    assert torch.allclose(v.grad, expect, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ camera


def test_camera_noise_init_and_data_estimate():
    cam = CameraNoise()
    assert float(cam.alpha) == pytest.approx(1e-3, rel=1e-4)
    assert float(cam.beta) == pytest.approx(1e-4, rel=1e-4)
    y = torch.tensor([-1.0, 0.0, 2.0])
    assert torch.allclose(cam(y), 1e-3 * y.clamp_min(0) + 1e-4)
    # flat frames at 9 levels with Poisson-Gaussian-like noise
    alpha, beta = 4e-3, 5e-4
    g = torch.Generator().manual_seed(3)
    levels = torch.linspace(0.0, 1.0, 9).view(1, 9, 1, 1)
    x = levels + torch.randn(1, 9, 96, 96, generator=g) * (alpha * levels + beta).sqrt()
    a_est, b_est = cam.init_from_data(x)
    assert a_est == pytest.approx(alpha, rel=0.2)
    assert b_est == pytest.approx(beta, rel=0.5)
    assert float(cam.alpha) == pytest.approx(a_est, rel=1e-4)
    with pytest.raises(InputError):
        cam.init_from_data(torch.zeros(1, 1))


# ------------------------------------------------------------------------------ raw term


def _perfect_output(sample, scale) -> SimOutput:
    e = torch.from_numpy(sample.emitter / scale)[None, None]
    lp = torch.from_numpy(sample.patterns)[None]
    psf = torch.from_numpy(sample.psf)[None]
    bg = torch.full((1, 1, 1, 1), sample.params["background"] / scale)
    z = torch.zeros_like
    k = psf.shape[-1]
    return SimOutput(e, z(e), lp, z(lp), psf, z(psf), bg, psf_logvar=torch.full((1, k, k), -60.0))


def test_perfect_output_is_calibrated(sample, norm):
    x, scale = norm
    out = _perfect_output(sample, scale)
    loss = SimLoss(SimLossConfig(var_floor=1e-10), hr_factor=F_HR)
    gain = sample.params["gain"]
    loss.camera.set_values(1.0 / (gain * scale), 2.0**2 / scale**2)
    res = loss(out, x)
    clean = torch.from_numpy(sample.clean / scale)[None]
    assert torch.allclose(res.y_mean, clean, rtol=1e-4, atol=1e-5)
    true_var = torch.from_numpy(sample.noise_sigma.astype(np.float64) ** 2 / scale**2)[None]
    assert torch.allclose(res.y_var.double(), true_var, rtol=1e-3)
    assert float(res.y_var_model.abs().max()) < 1e-12
    # 2304 pixels: the ZMS has a standard error of about 0.03
    zms = float(((x - res.y_mean) ** 2 / res.y_var).mean())
    assert zms == pytest.approx(res.terms["raw_zms"], rel=1e-5)
    assert zms == pytest.approx(1.0, abs=0.12)
    nll = 0.5 * ((x - res.y_mean) ** 2 / res.y_var + res.y_var.log()).mean()
    assert res.terms["raw_nll"] == pytest.approx(float(nll), rel=1e-5)
    # control: without the camera term the same residuals are far from calibrated
    none = SimLoss(SimLossConfig(camera_noise="none", var_floor=1e-6), hr_factor=F_HR)
    assert none.camera is None
    assert none(out, x).terms["raw_zms"] > 50


def test_gradients_reach_model_and_camera(norm):
    x, _ = norm
    net = tiny_net()
    loss = SimLoss(SimLossConfig(aux_rec_weight=0.1), hr_factor=F_HR)
    loss(net(x), x).total.backward()
    for name, p in [*net.named_parameters(), *loss.named_parameters()]:
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    for mod in (
        net.emitter_head,
        net.lp_head,
        net.emitter_logvar_head,
        net.lp_logvar_head,
        net.psf_logits,
        net.psf_logvar_head,
        net.background_head,
        net.stem,
    ):
        assert any(float(p.grad.abs().max()) > 0 for p in mod.parameters())
    assert float(loss.camera.a.grad) != 0 and float(loss.camera.c.grad) != 0


def test_loss_decreases_when_fitting_one_sample(norm):
    x, _ = norm
    net = tiny_net()
    loss = SimLoss(SimLossConfig(), hr_factor=F_HR)
    opt = torch.optim.Adam([*net.parameters(), *loss.parameters()], lr=3e-3)
    history = []
    for _ in range(30):
        res = loss(net(x), x)
        opt.zero_grad()
        res.total.backward()
        opt.step()
        history.append(res.terms)
    with torch.no_grad():
        final = loss(net(x), x).terms
    first = history[0]
    assert final["total"] < first["total"] - 0.5 * abs(first["total"])
    assert final["raw_mse"] < 0.5 * first["raw_mse"]


# ------------------------------------------------------------------------------ options


def test_psf_var_weight_scales_and_disables_psf_term(norm, net_out):
    x, _ = norm
    assert net_out.psf_logvar is not None

    def yvar(weight, out=net_out):
        return SimLoss(SimLossConfig(psf_var_weight=weight), F_HR)(out, x).y_var_model

    v0, v1, v2 = yvar(0.0), yvar(1.0), yvar(2.0)
    assert bool((v1 >= v0).all()) and float((v1 - v0).max()) > 0
    assert torch.allclose(v2 - v0, 2 * (v1 - v0), rtol=1e-3, atol=1e-9)
    no_psf = net_out._replace(psf_var=None, psf_logvar=None)
    assert torch.allclose(yvar(1.0, no_psf), v0)
    # fallback without logits' log-variance: diagonal psf_var conditioned on sum(h) = 1
    v_diag = yvar(1.0, net_out._replace(psf_logvar=None))
    assert bool((v_diag >= v0 * (1 - 1e-5)).all()) and float((v_diag - v0).max()) > 0


@pytest.mark.parametrize("targets", [("emitter",), ()])
def test_uq_target_subsets(norm, targets):
    x, _ = norm
    net = tiny_net(uq_targets=targets)
    out = net(x)
    res = SimLoss(SimLossConfig(), F_HR)(out, x)
    res.total.backward()
    assert ("emitter_std" in res.terms) == ("emitter" in targets)
    assert "lp_std" not in res.terms and "psf_std" not in res.terms
    if not targets:
        assert float(res.y_var_model.abs().max()) == 0.0
    assert math.isfinite(res.terms["total"])


# ------------------------------------------------------------------------------ supervised


def _gt(sample, scale):
    return {
        "emitter_gt": torch.from_numpy(sample.emitter / scale)[None, None],
        "lp_gt": torch.from_numpy(sample.patterns)[None],
    }


def test_supervised_terms(sample, norm, net_out):
    x, scale = norm
    batch = _gt(sample, scale)
    plain = SimLoss(SimLossConfig(), F_HR)(net_out, x, batch)
    assert not any(k.startswith("sup_") for k in plain.terms)

    cfg = SimLossConfig(supervised=True, sup_emitter_weight=0.5, sup_lp_weight=2.0)
    res = SimLoss(cfg, F_HR)(net_out, x, batch)
    t = res.terms
    assert {"sup_emitter_nll", "sup_lp_nll", "sup_emitter_mse", "sup_lp_mse"} <= set(t)
    expect = gaussian_nll(batch["emitter_gt"], net_out.emitter, net_out.emitter_var, 1e-6)
    assert t["sup_emitter_nll"] == pytest.approx(float(expect), rel=1e-5)
    total = t["raw_nll"] + 0.5 * t["sup_emitter_nll"] + 2.0 * t["sup_lp_nll"]
    assert t["total"] == pytest.approx(total, rel=1e-5)
    # (B, fH, fW) emitter ground truth is accepted; a single target is fine
    only_e = {"emitter_gt": batch["emitter_gt"][:, 0]}
    t1 = SimLoss(cfg, F_HR)(net_out, x, only_e).terms
    assert "sup_emitter_nll" in t1 and not any(k.startswith("sup_lp") for k in t1)
    # no ground truth while supervised: a clear error
    with pytest.raises(InputError, match="ground truth"):
        SimLoss(cfg, F_HR)(net_out, x, None)
    with pytest.raises(InputError, match="lp_gt"):
        SimLoss(cfg, F_HR)(net_out, x, {"lp_gt": batch["lp_gt"][:, :8]})


def test_supervised_without_variance_uses_mse(sample, norm):
    x, scale = norm
    batch = _gt(sample, scale)
    with torch.no_grad():
        out = tiny_net(uq_targets=("emitter",))(x)
    t = SimLoss(SimLossConfig(supervised=True), F_HR)(out, x, batch).terms
    assert "sup_lp_nll" not in t and "sup_lp_mse" in t
    mse = float((out.lp - batch["lp_gt"]).square().mean())
    assert t["sup_lp_mse"] == pytest.approx(mse, rel=1e-5)  # float32 means: not to 1e-6
    assert t["total"] == pytest.approx(
        t["raw_nll"] + t["sup_emitter_nll"] + t["sup_lp_mse"], rel=1e-5
    )


# ------------------------------------------------------------------------------ aux


def test_aux_l1_and_ms_ssim(norm, net_out):
    x, _ = norm
    l1 = SimLoss(SimLossConfig(aux_rec_weight=0.5), F_HR)(net_out, x)
    assert l1.terms["aux"] == pytest.approx(float((x - l1.y_mean).abs().mean()), rel=1e-5)
    assert l1.terms["total"] == pytest.approx(l1.terms["raw_nll"] + 0.5 * l1.terms["aux"], rel=1e-5)
    # 16 px frames: one scale (11-px window), weights renormalised to [1.0]
    cfg = SimLossConfig(aux_rec_weight=0.5, aux_rec_mode="ms-ssim")
    res = SimLoss(cfg, F_HR)(net_out, x)
    rng_ = float(x.max() - x.min())
    ref = 1.0 - float(ms_ssim(res.y_mean, x, rng_, weights=[1.0]))
    assert res.terms["aux"] == pytest.approx(ref, rel=1e-5)
    assert res.terms["aux"] != pytest.approx(l1.terms["aux"], rel=1e-2)
    # frames smaller than the window: L1 with a single warning
    loss = SimLoss(cfg, F_HR)
    x8 = x[..., :8, :8]
    out8 = net_out._replace(
        emitter=net_out.emitter[..., :16, :16],
        emitter_var=net_out.emitter_var[..., :16, :16],
        lp=net_out.lp[..., :16, :16],
        lp_var=net_out.lp_var[..., :16, :16],
        emitter_logvar=None,
        lp_logvar=None,
    )
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        r1 = loss(out8, x8)
        loss(out8, x8)
    assert sum("MS-SSIM" in str(w.message) for w in rec) == 1
    assert r1.terms["aux"] == pytest.approx(float((x8 - r1.y_mean).abs().mean()), rel=1e-5)


# ------------------------------------------------------------------------------ errors


def test_shape_mismatch_raises(norm, net_out):
    x, _ = norm
    loss = SimLoss(SimLossConfig(), F_HR)
    with pytest.raises(InputError, match="frames"):
        loss(net_out, x[:, :8])
    with pytest.raises(InputError, match="hr_factor"):
        loss(net_out, x[..., :15, :])
    with pytest.raises(InputError, match="batch"):
        loss(net_out, x.expand(2, -1, -1, -1))
    with pytest.raises(InputError, match="hr_factor=3"):
        SimLoss(SimLossConfig(), 3)(net_out, x)
    with pytest.raises(InputError):
        loss(net_out, x[0])


def test_non_finite_loss_names_the_term(sample, norm, net_out):
    x, scale = norm
    e = net_out.emitter.clone()
    e[0, 0, 3, 4] = float("nan")
    with pytest.raises(NonFiniteLossError, match="raw_nll") as info:
        SimLoss(SimLossConfig(), F_HR)(net_out._replace(emitter=e), x)
    assert isinstance(info.value, RuntimeError)
    assert info.value.terms == ["raw_nll"]
    assert "'emitter'" in str(info.value)
    # a bad light pattern breaks the raw and the supervised pattern terms
    lp = net_out.lp.clone()
    lp[0, 2, 0, 0] = float("inf")
    cfg = SimLossConfig(supervised=True)
    with pytest.raises(NonFiniteLossError) as info:
        SimLoss(cfg, F_HR)(net_out._replace(lp=lp), x, _gt(sample, scale))
    assert "sup_lp_nll" in info.value.terms and "sup_emitter_nll" not in info.value.terms


def test_sup_var_only_keeps_the_raw_nll_out_of_the_supervised_variances(sample, norm):
    """With ``sup_var_only`` the raw-frame NLL gives the emitter and pattern variances no
    gradient (only the ground-truth NLL trains them); the means still get both."""
    x, scale = norm
    batch = _gt(sample, scale)

    def grads(sup_var_only: bool, sup_weight: float):
        with torch.no_grad():
            out = tiny_net()(x)
        ev = out.emitter_var.clone().requires_grad_(True)
        lv = out.lp_var.clone().requires_grad_(True)
        em = out.emitter.clone().requires_grad_(True)
        o = out._replace(emitter_var=ev, lp_var=lv, emitter=em)
        cfg = SimLossConfig(
            supervised=True,
            sup_emitter_weight=sup_weight,
            sup_lp_weight=sup_weight,
            sup_var_only=sup_var_only,
        )
        SimLoss(cfg, F_HR)(o, x, batch).total.backward()
        return ev.grad, lv.grad, em.grad

    ev, lv, em = grads(True, 0.0)  # raw NLL only: nothing reaches the variances
    assert ev is None or float(ev.abs().max()) == 0.0
    assert lv is None or float(lv.abs().max()) == 0.0
    assert float(em.abs().max()) > 0
    ev0, lv0, _ = grads(False, 0.0)  # the default: the raw NLL trains them too
    assert float(ev0.abs().max()) > 0 and float(lv0.abs().max()) > 0
    ev1, _, _ = grads(True, 1.0)  # with the supervised NLL: exactly its gradient
    expect = torch.autograd.grad(
        gaussian_nll(
            batch["emitter_gt"],
            tiny_net()(x).emitter.detach(),
            (v := tiny_net()(x).emitter_var.detach().requires_grad_(True)),
            1e-6,
        ),
        v,
    )[0]
    assert torch.allclose(ev1, expect, rtol=1e-4, atol=1e-12)


def test_structure_weight_reweights_the_emitter_nll(sample, norm, net_out):
    """``sup_structure_weight`` a: the emitter NLL is the mean of ``w * nll`` with w = 1 + a
    on pixels above 1 % of the ground truth's bright level, normalised to mean 1."""
    x, scale = norm
    batch = _gt(sample, scale)
    gt = batch["emitter_gt"].double()
    nll = gaussian_nll(gt, net_out.emitter.double(), net_out.emitter_var.double(), 1e-6, 0, "none")
    structure = (gt > 0.01 * torch.quantile(gt.flatten(), 0.999)).double()
    assert 0.01 < float(structure.mean()) < 0.9
    for a in (0.0, 4.0):
        w = 1.0 + a * structure
        w = w / w.mean()
        want = float((w * nll).mean())
        cfg = SimLossConfig(supervised=True, sup_structure_weight=a)
        got = SimLoss(cfg, F_HR)(net_out, x, batch).terms["sup_emitter_nll"]
        assert got == pytest.approx(want, rel=1e-4)
    with pytest.raises(InputError, match="sup_structure_weight"):
        SimLossConfig(sup_structure_weight=-1.0)
