"""Illumination patterns, PSFs and OTFs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import j1

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.tasks.sim.physics import (
    airy_first_zero,
    airy_psf,
    gaussian_psf,
    gaussian_sigma_from_na,
    illumination_patterns,
    psf_to_otf,
    wave_vectors,
)

# ---------------------------------------------------------------------------- patterns


def test_patterns_formula_and_frame_order():
    h, w, n_a, n_p = 13, 17, 3, 4
    period, m, off = 3.7, 0.65, 0.3
    phi = [0.1, -0.4, 2.0]
    pats = illumination_patterns(
        (h, w),
        n_a,
        n_p,
        period=period,
        modulation=m,
        angle_offset=off,
        phase_offsets=phi,
        dtype=torch.float64,
    )
    assert pats.shape == (n_a * n_p, h, w)
    y, x = np.mgrid[0:h, 0:w]
    for a in range(n_a):
        th = off + math.pi * a / n_a
        kx, ky = math.cos(th) / period, math.sin(th) / period
        for p in range(n_p):
            ref = 1 + m * np.cos(2 * math.pi * (kx * x + ky * y) + phi[a] + 2 * math.pi * p / n_p)
            np.testing.assert_allclose(pats[a * n_p + p].numpy(), ref, atol=1e-12)
    # the phases of one angle sum to a flat field (P >= 2): mean over p is exactly 1
    np.testing.assert_allclose(pats.reshape(n_a, n_p, h, w).mean(1).numpy(), 1.0, atol=1e-12)
    assert float(pats.min()) >= 1 - m - 1e-12 and float(pats.max()) <= 1 + m + 1e-12


def test_wave_vectors():
    k = wave_vectors(3, 5.0, angle_offset=0.2)
    assert k.shape == (3, 2)
    torch.testing.assert_close(k.norm(dim=-1), torch.full((3,), 0.2))
    angles = torch.atan2(k[:, 1], k[:, 0])
    torch.testing.assert_close(angles, 0.2 + torch.arange(3) * math.pi / 3)
    kb = wave_vectors(2, torch.tensor([4.0, 8.0]))
    assert kb.shape == (2, 2, 2)
    torch.testing.assert_close(kb.norm(dim=-1), torch.tensor([[0.25, 0.25], [0.125, 0.125]]))


def test_patterns_batched_parameters():
    periods = torch.tensor([3.0, 4.0, 5.0])
    mods = torch.tensor([0.2, 0.5, 1.0])
    phases = torch.rand(3, 2, generator=torch.Generator().manual_seed(0))
    pats = illumination_patterns(
        (8, 9), 2, 3, period=periods, modulation=mods, phase_offsets=phases
    )
    assert pats.shape == (3, 6, 8, 9)
    for b in range(3):
        single = illumination_patterns(
            (8, 9),
            2,
            3,
            period=float(periods[b]),
            modulation=float(mods[b]),
            phase_offsets=phases[b],
        )
        torch.testing.assert_close(pats[b], single)
    with pytest.raises(InputError, match="batch size"):
        illumination_patterns((8, 9), 2, 3, period=periods, modulation=torch.tensor([0.1, 0.2]))


def test_pattern_bad_input():
    with pytest.raises(InputError, match=r"modulation must be in \[0, 1\].*1.5"):
        illumination_patterns((8, 8), modulation=1.5)
    with pytest.raises(InputError, match=r"modulation must be in \[0, 1\]"):
        illumination_patterns((8, 8), modulation=torch.tensor([0.5, -0.1]))
    for bad in (0.0, -3.0):
        with pytest.raises(InputError, match="period must be > 0"):
            illumination_patterns((8, 8), period=bad)
        with pytest.raises(InputError, match="period must be > 0"):
            wave_vectors(3, bad)
    with pytest.raises(InputError, match="period must be finite"):
        illumination_patterns((8, 8), period=float("nan"))
    with pytest.raises(InputError, match="shape"):
        illumination_patterns((0, 8))
    with pytest.raises(InputError, match="shape"):
        illumination_patterns((8,))
    with pytest.raises(InputError, match="n_angles"):
        illumination_patterns((8, 8), n_angles=0)
    with pytest.raises(InputError, match="n_phases"):
        illumination_patterns((8, 8), n_phases=2.5)
    with pytest.raises(InputError, match="phase_offsets"):
        illumination_patterns((8, 8), n_angles=3, phase_offsets=[0.0, 1.0])


# -------------------------------------------------------------------------------- PSFs


def test_gaussian_psf():
    p = gaussian_psf(1.7)
    assert p.shape == (2 * math.ceil(4 * 1.7) + 1,) * 2
    assert abs(float(p.sum()) - 1) < 1e-6
    c = p.shape[0] // 2
    assert p.argmax() == c * p.shape[1] + c
    torch.testing.assert_close(p, p.flip(0))
    torch.testing.assert_close(p, p.T)
    r = torch.arange(p.shape[0]) - c
    var = float((p.sum(1) * r**2).sum())
    assert abs(var - 1.7**2) < 1e-3
    pb = gaussian_psf(torch.tensor([1.0, 2.0]), 9)
    assert pb.shape == (2, 9, 9)
    torch.testing.assert_close(pb.sum(dim=(-2, -1)), torch.ones(2))
    torch.testing.assert_close(pb[1], gaussian_psf(2.0, 9))


def test_airy_psf():
    na, wl, px = 1.2, 0.52, 0.04
    p = airy_psf(na, wl, px, oversample=1, dtype=torch.float64)
    assert p.shape[0] % 2 == 1
    assert abs(float(p.sum()) - 1) < 1e-12
    c = p.shape[0] // 2
    # profile along a row follows (2 J1(v)/v)^2
    r = (np.arange(p.shape[0]) - c) * px
    v = 2 * np.pi * na * np.abs(r) / wl
    with np.errstate(invalid="ignore", divide="ignore"):
        prof = np.where(v > 0, (2 * j1(v) / v) ** 2, 1.0)
    np.testing.assert_allclose(p[c].numpy() / p[c, c].item(), prof, rtol=1e-5, atol=1e-9)
    # first dark ring at 0.61 lambda / NA
    r0 = airy_first_zero(na, wl, px)
    assert abs(r0 - 0.6098 * wl / na / px) < 1e-12
    i0 = round(r0)
    assert float(p[c, c + i0]) < 0.01 * float(p[c, c])
    po = airy_psf(na, wl, px)  # pixel-integrated, default oversampling
    assert abs(float(po.sum()) - 1) < 1e-6
    # the best-fit Gaussian sigma ~ 0.21 lambda/NA has a similar width
    s = gaussian_sigma_from_na(na, wl, px)
    rr = torch.arange(po.shape[0]) - po.shape[0] // 2
    var_core = float((po.sum(1)[abs(rr) <= i0] * rr[abs(rr) <= i0] ** 2).sum())
    assert 0.5 * s**2 < var_core < 1.5 * s**2


def test_otf():
    p = gaussian_psf(1.5, 11, dtype=torch.float64)
    otf = psf_to_otf(p, (32, 40))
    assert otf.shape == (32, 40)
    assert abs(complex(otf[0, 0]) - 1) < 1e-12
    assert float(otf.imag.abs().max()) < 1e-12  # centred symmetric PSF -> real OTF
    # Gaussian OTF ~ exp(-2 pi^2 sigma^2 |k|^2) (sampled Gaussian is slightly different)
    ky = torch.fft.fftfreq(32, dtype=torch.float64)[:, None]
    kx = torch.fft.fftfreq(40, dtype=torch.float64)[None, :]
    ref = torch.exp(-2 * math.pi**2 * 1.5**2 * (kx**2 + ky**2))
    assert float((otf.real - ref).abs().max()) < 1e-3
    r = psf_to_otf(p, (32, 40), real_fft=True)
    assert r.shape == (32, 21)
    torch.testing.assert_close(r, otf[:, :21])
    with pytest.raises(InputError, match="does not fit"):
        psf_to_otf(p, (8, 8))


def test_psf_bad_input():
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="sigma must be a positive number"):
            gaussian_psf(bad)
    with pytest.raises(InputError, match="sigma must be positive"):
        gaussian_psf(torch.tensor([1.0, 0.0]))
    for bad in (0, -3, 4, 2.0):
        with pytest.raises(InputError, match="size must be a positive odd integer"):
            gaussian_psf(1.0, size=bad)
    with pytest.raises(InputError, match="na must be a positive number"):
        airy_psf(0.0, 0.5, 0.05)
    with pytest.raises(InputError, match="wavelength must be a positive number"):
        airy_psf(1.0, -0.5, 0.05)
    with pytest.raises(InputError, match="pixel_size must be a positive number"):
        airy_psf(1.0, 0.5, 0)
    with pytest.raises(InputError, match="size must be a positive odd integer"):
        airy_psf(1.0, 0.5, 0.05, size=10)
    with pytest.raises(InputError, match="oversample"):
        airy_psf(1.0, 0.5, 0.05, oversample=0)
