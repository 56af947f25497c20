"""FFT convolution: alignment with scipy.signal.convolve2d, batching, direct reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.tasks.sim.physics.fftconv import (
    conv2d_direct,
    conv2d_direct_same,
    conv2d_direct_sampled,
    fft_convolve,
    fft_convolve_sampled,
    next_fast_len,
)


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| (normalised max error)."""
    return float(np.abs(a - b).max() / np.abs(b).max())


KERNEL_SHAPES = [(1, 1), (3, 3), (4, 4), (5, 2), (2, 7), (6, 9), (11, 11), (12, 10)]


@pytest.mark.parametrize("kshape", KERNEL_SHAPES)
@pytest.mark.parametrize("mode", ["same", "full"])
def test_matches_scipy_convolve2d(kshape, mode):
    rng = np.random.default_rng(sum(kshape))
    x = rng.standard_normal((17, 23)).astype(np.float32)  # non-square, odd/prime sizes
    k = rng.standard_normal(kshape).astype(np.float32)
    ref = convolve2d(x.astype(np.float64), k.astype(np.float64), mode=mode)
    out = fft_convolve(torch.from_numpy(x), torch.from_numpy(k), mode=mode)
    assert out.dtype == torch.float32
    assert out.shape == ref.shape
    assert _rel_err(out.numpy(), ref) < 1e-5
    direct = conv2d_direct(torch.from_numpy(x), torch.from_numpy(k), mode=mode)
    assert direct.shape == ref.shape
    assert _rel_err(direct.numpy(), ref) < 1e-5


def test_positive_data_pointwise_relative():
    """With positive data the agreement holds pixel by pixel, not only relative to the max."""
    rng = np.random.default_rng(3)
    x = rng.random((20, 31)).astype(np.float32) + 0.1
    for kshape in [(7, 7), (8, 6)]:
        k = rng.random(kshape).astype(np.float32) + 0.1
        ref = convolve2d(x.astype(np.float64), k.astype(np.float64), mode="same")
        out = fft_convolve(torch.from_numpy(x), torch.from_numpy(k)).numpy()
        assert np.max(np.abs(out - ref) / ref) < 1e-5


def test_kernel_larger_than_image():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 4))
    k = rng.standard_normal((9, 8))
    for mode in ("same", "full"):
        ref = convolve2d(x, k, mode=mode)
        out = fft_convolve(torch.from_numpy(x), torch.from_numpy(k), mode=mode)
        assert out.dtype == torch.float64
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(
            conv2d_direct(torch.from_numpy(x), torch.from_numpy(k), mode=mode).numpy(),
            ref,
            rtol=1e-10,
            atol=1e-10,
        )


@pytest.mark.parametrize(
    "xshape,kshape",
    [
        ((3, 4, 16, 12), (3, 1, 5, 5)),  # one kernel per batch item, applied to every frame
        ((3, 4, 16, 12), (3, 4, 4, 6)),  # one kernel per frame
        ((3, 4, 16, 12), (7, 7)),  # one kernel for everything
        ((3, 4, 16, 12), (1, 4, 3, 3)),  # per frame, shared by the batch
        ((1, 4, 16, 12), (3, 1, 5, 4)),  # one image, several kernels
        ((16, 12), (2, 3, 5, 5)),
    ],
)
def test_batched_broadcasting(xshape, kshape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(xshape, generator=g)
    k = torch.randn(kshape, generator=g)
    out = fft_convolve(x, k)
    lead = torch.broadcast_shapes(x.shape[:-2], k.shape[:-2])
    assert out.shape == (*lead, *x.shape[-2:])
    xb = x.expand(*lead, *x.shape[-2:]).reshape(-1, *x.shape[-2:]).double().numpy()
    kb = k.expand(*lead, *k.shape[-2:]).reshape(-1, *k.shape[-2:]).double().numpy()
    ref = np.stack([convolve2d(a, b, mode="same") for a, b in zip(xb, kb, strict=True)])
    ref = ref.reshape(out.shape)
    assert _rel_err(out.numpy(), ref) < 1e-5
    direct = conv2d_direct_same(x, k)
    assert direct.shape == out.shape
    assert _rel_err(direct.numpy(), ref) < 1e-5


def test_fft_equals_direct_and_is_differentiable():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 10, 9, generator=g, dtype=torch.float64)
    k = torch.rand(2, 1, 4, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(fft_convolve(x, k), conv2d_direct_same(x, k), rtol=1e-10, atol=1e-12)
    xs = x[:, :2, :6, :5].clone().requires_grad_(True)
    ks = k[:, :, :3, :2].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x_, k_: fft_convolve(x_, k_), (xs, ks), fast_mode=True)


def test_next_fast_len():
    assert next_fast_len(1) == 1
    assert next_fast_len(7) == 8
    assert next_fast_len(97) == 100
    assert next_fast_len(529) == 540
    for n in range(1, 200):
        m = next_fast_len(n)
        assert m >= n
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        assert r == 1


def test_bad_inputs():
    x = torch.zeros(4, 4)
    with pytest.raises(InputError, match="mode"):
        fft_convolve(x, torch.ones(3, 3), mode="valid")
    with pytest.raises(InputError, match="at least 2 dimensions"):
        fft_convolve(torch.zeros(4), torch.ones(3, 3))
    with pytest.raises(InputError, match="broadcast"):
        fft_convolve(torch.zeros(2, 4, 4), torch.ones(3, 3, 3))
    with pytest.raises(InputError, match="broadcast"):
        conv2d_direct(torch.zeros(2, 4, 4), torch.ones(3, 3, 3))


@pytest.mark.parametrize(
    "xshape,kshape,step,offset,out",
    [
        ((2, 3, 12, 10), (2, 1, 5, 4), 2, (3, 2), (6, 5)),
        ((7, 9), (3, 3), 3, (0, 1), (4, 4)),  # last sample beyond the full result -> 0
        ((1, 4, 13, 11), (4, 1, 6, 5), 1, (2, 2), (13, 11)),
        ((2, 8, 8), (1, 7, 7), 4, (5, 5), (3, 3)),
    ],
)
def test_sampled_convolution(xshape, kshape, step, offset, out):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(xshape, generator=g, dtype=torch.float64)
    k = torch.randn(kshape, generator=g, dtype=torch.float64)
    x2 = torch.randn(xshape, generator=g, dtype=torch.float64)
    full = torch.nn.functional.pad(
        fft_convolve(x, k, "full") + fft_convolve(x2, k, "full"), (0, 40, 0, 40)
    )
    ref = full[
        ...,
        offset[0] : offset[0] + step * out[0] : step,
        offset[1] : offset[1] + step * out[1] : step,
    ]
    pairs = [(x, k), (x2, k)]
    torch.testing.assert_close(fft_convolve_sampled(pairs, step, offset, out), ref)
    torch.testing.assert_close(conv2d_direct_sampled(pairs, step, offset, out), ref)
    torch.testing.assert_close(conv2d_direct_sampled(pairs, step, offset, out, strided=True), ref)
