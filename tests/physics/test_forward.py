"""SIM forward model and binning: reference comparison, flat scene, shapes, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.tasks.sim.physics import (
    bin_down,
    box_average,
    box_filter_full,
    downsample,
    gaussian_psf,
    illumination_patterns,
    sim_forward,
)


def _reference(e, l, h, f, b):
    """NumPy/SciPy reference: y_i = blockmean(convolve2d(e . l_i, h, 'same')) + b."""
    c = convolve2d(e * l, h, mode="same")
    hh, ww = c.shape
    return c.reshape(hh // f, f, ww // f, f).mean(axis=(1, 3)) + b


# ----------------------------------------------------------------------------- binning


@pytest.mark.parametrize("f", [1, 2, 3, 4])
def test_bin_down_is_downsampled_box_average(f):
    g = torch.Generator().manual_seed(f)
    x = torch.rand(2, 3, 6 * f, 5 * f, generator=g, dtype=torch.float64)
    binned = bin_down(x, f)
    assert binned.shape == (2, 3, 6, 5)
    torch.testing.assert_close(binned, downsample(box_average(x, f), f))
    # block means, computed naively
    ref = np.array(
        [
            [x[0, 0, i * f : (i + 1) * f, j * f : (j + 1) * f].mean() for j in range(5)]
            for i in range(6)
        ]
    )
    np.testing.assert_allclose(binned[0, 0].numpy(), ref, rtol=1e-12)
    # box_average == scipy convolve2d 'same' with the f x f kernel 1/f^2 (zero padding)
    k = np.ones((f, f)) / f**2
    np.testing.assert_allclose(
        box_average(x, f)[1, 2].numpy(), convolve2d(x[1, 2].numpy(), k, mode="same"), rtol=1e-12
    )
    np.testing.assert_allclose(
        box_filter_full(x, f)[1, 2].numpy(), convolve2d(x[1, 2].numpy(), k, mode="full"), rtol=1e-12
    )


def test_binning_bad_input():
    with pytest.raises(InputError, match="not divisible"):
        bin_down(torch.zeros(7, 8), 2)
    with pytest.raises(InputError, match="not divisible"):
        downsample(torch.zeros(9, 8), 2)
    for bad in (0, -2, 1.5, "2", True):
        with pytest.raises(InputError, match=">= 1"):
            bin_down(torch.zeros(8, 8), bad)


# ------------------------------------------------------------------------ forward model


@pytest.mark.parametrize("f", [1, 2, 3])
@pytest.mark.parametrize("kh", [7, 4])
@pytest.mark.parametrize("conv", ["fft", "direct", "direct_strided"])
def test_forward_matches_numpy_reference(f, kh, conv):
    g = torch.Generator().manual_seed(10 * f + kh)
    nb, fh, fw = 2, 7 * f, 5 * f
    emitter = torch.rand(nb, 1, fh, fw, generator=g)
    patterns = illumination_patterns((fh, fw), 3, 2, period=3.3, modulation=0.6)  # (6, fh, fw)
    psf = torch.rand(nb, kh, kh, generator=g)
    psf = psf / psf.sum(dim=(-2, -1), keepdim=True)
    bg = torch.tensor([0.25, 1.5])
    y = sim_forward(emitter, patterns, psf, f, bg, conv=conv)
    assert y.shape == (nb, 6, 7, 5)
    assert y.dtype == torch.float32
    for b in range(nb):
        for i in range(6):
            ref = _reference(
                emitter[b, 0].double().numpy(),
                patterns[i].double().numpy(),
                psf[b].double().numpy(),
                f,
                float(bg[b]),
            )
            np.testing.assert_allclose(y[b, i].numpy(), ref, rtol=1e-5, atol=1e-6)


def test_forward_per_frame_psf_and_unbatched():
    g = torch.Generator().manual_seed(3)
    e = torch.rand(12, 10, generator=g)
    pats = illumination_patterns((12, 10), 2, 2, period=4.0, modulation=0.5)
    psf_frames = torch.rand(1, 4, 5, 5, generator=g)
    y = sim_forward(e, pats, psf_frames, 2)
    assert y.shape == (4, 6, 5)
    for i in range(4):
        ref = _reference(
            e.double().numpy(), pats[i].double().numpy(), psf_frames[0, i].numpy(), 2, 0
        )
        np.testing.assert_allclose(y[i].numpy(), ref, rtol=1e-5, atol=1e-6)
    # unbatched, shared PSF
    y2 = sim_forward(e, pats, psf_frames[0, 0], 2, 0.5)
    ref = _reference(e.double().numpy(), pats[3].double().numpy(), psf_frames[0, 0].numpy(), 2, 0.5)
    np.testing.assert_allclose(y2[3].numpy(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("f", [1, 2, 3])
def test_flat_emitter_flat_pattern_gives_constant(f):
    """Flat emitter c, flat pattern 1, PSF summing to 1, background b: y = c + b exactly
    wherever the PSF support of the whole camera pixel lies inside the field of view; with
    zero padding the signal drops at the border."""
    c, b, kh = 2.5, 0.7, 9
    fh, fw = 16 * f, 14 * f
    e = torch.full((1, fh, fw), c)
    pats = torch.ones(9, fh, fw)
    psf = gaussian_psf(1.8, kh)
    y = sim_forward(e, pats, psf, f, b)[0]
    assert y.shape == (9, 16, 14)
    # camera pixel I covers HR rows f I ... f I + f - 1; 'same' conv reads source rows
    # x - (kh - 1 - (kh-1)//2) ... x + (kh-1)//2; all inside  <=>  interior
    half = (kh - 1) // 2
    rows = torch.arange(16)
    cols = torch.arange(14)
    ok_r = (f * rows - (kh - 1 - half) >= 0) & (f * rows + f - 1 + half <= fh - 1)
    ok_c = (f * cols - (kh - 1 - half) >= 0) & (f * cols + f - 1 + half <= fw - 1)
    inner = ok_r[:, None] & ok_c[None, :]
    assert inner.sum() > 0
    torch.testing.assert_close(
        y[:, inner], torch.full_like(y[:, inner], c + b), rtol=1e-6, atol=1e-6
    )
    # border pixels lose the part of the PSF that falls outside the field of view
    assert bool((y[:, ~inner] < c + b - 1e-4).all())
    assert float(y[:, 0, 0].min()) > b


def test_forward_is_differentiable():
    g = torch.Generator().manual_seed(5)
    e = torch.rand(2, 1, 8, 8, generator=g, requires_grad=True)
    pats = illumination_patterns((8, 8), 1, 3, period=3.0, modulation=0.5).requires_grad_()
    psf = gaussian_psf(torch.tensor([1.0, 1.5], requires_grad=True), 5)
    y = sim_forward(e, pats, psf, 2, 0.1)
    y.square().sum().backward()
    assert e.grad is not None and pats.grad is not None
    assert torch.isfinite(e.grad).all() and torch.isfinite(pats.grad).all()


def test_forward_bad_input():
    e = torch.rand(1, 1, 8, 8)
    pats = torch.ones(1, 9, 8, 8)
    psf = gaussian_psf(1.0, 5)
    for bad in (0, -1, 2.5):
        with pytest.raises(InputError, match="hr_factor"):
            sim_forward(e, pats, psf, bad)
    with pytest.raises(InputError, match="not divisible by hr_factor=3"):
        sim_forward(e, pats, psf, 3)
    with pytest.raises(InputError, match="same HR image size"):
        sim_forward(e, torch.ones(1, 9, 8, 6), psf, 2)
    with pytest.raises(InputError, match="emitter must have shape"):
        sim_forward(torch.rand(8), pats, psf, 2)
    with pytest.raises(InputError, match="psf must have shape"):
        sim_forward(e, pats, torch.rand(1, 1, 1, 5, 5), 2)
    with pytest.raises(InputError, match="do not match"):
        sim_forward(torch.rand(2, 8, 8), torch.ones(3, 9, 8, 8), psf, 2)
    with pytest.raises(InputError, match="background"):
        sim_forward(e, pats, psf, 2, torch.zeros(3, 3, 3))
    with pytest.raises(InputError, match="conv"):
        sim_forward(e, pats, psf, 2, conv="fast")
