"""Degradations of 2D images: measured against independent references (Monte Carlo,
Pillow, scipy.ndimage) and the documented fractions."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from napari_sim_uq.core.data.degrade import (
    Degradation,
    Mask,
    degrade_array,
    parse_degradations,
)
from napari_sim_uq.core.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_image(b=2, h=48, w=40, seed=0) -> torch.Tensor:
    """Smooth random structure with an edge, values in [0, 1]."""
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.normal(size=(b, h, w)), (0, 3, 3))
    a = (a - a.min()) / (a.max() - a.min())
    a[:, h // 4 : h // 2, w // 4 : w // 2] += 0.3
    return torch.from_numpy(np.clip(a, 0, 1)[:, None].astype(np.float32))


def test_gaussian_noise_has_the_requested_std():
    x = torch.full((4, 1, 64, 64), 0.5)
    sigma = 0.07
    r = parse_degradations(f"noise:{sigma}")(x, 1)
    assert r.observed_mask is None
    e = (r.degraded - x).double().numpy().ravel()
    n = e.size
    assert abs(e.mean()) < 5 * sigma / np.sqrt(n)
    assert abs(e.std() - sigma) < 5 * sigma / np.sqrt(2 * n)


def test_poisson_gaussian_variance_is_linear_in_the_mean():
    photons, read = 40.0, 0.03
    levels = torch.tensor([0.05, 0.2, 0.5, 0.8, 1.0])
    x = levels.view(-1, 1, 1, 1).expand(-1, 1, 96, 96).contiguous()
    y = parse_degradations(f"poisson:{photons}:{read}")(x, 3).degraded.double().numpy()
    n = 96 * 96
    means, variances = [], []
    for k, lam in enumerate(levels.double().numpy()):
        v_true = lam / photons + read**2
        v = y[k].var(ddof=1)
        assert abs(y[k].mean() - lam) < 5 * np.sqrt(v_true / n)
        # SE of a sample variance ~ v sqrt(2 / (n - 1)) (+ a small Poisson kurtosis term)
        assert abs(v - v_true) < 5 * v_true * np.sqrt(2 / (n - 1) + 1 / (lam * photons * n))
        means.append(y[k].mean())
        variances.append(v)
    a, b = np.polyfit(means, variances, 1)  # Var = a * mean + b
    assert a == pytest.approx(1 / photons, rel=0.1)
    assert b == pytest.approx(read**2, abs=2e-4)


def test_poisson_without_read_noise_gives_whole_photon_counts():
    x = smooth_image()
    y = parse_degradations("poisson:photons=25")(x, 0).degraded.double() * 25
    np.testing.assert_allclose(y.numpy(), np.round(y.numpy()), atol=1e-4)


def pillow_jpeg(u8: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


def test_jpeg_equals_pillow_on_the_clipped_8bit_image():
    x = smooth_image() * 1.4 - 0.2  # values outside [0, 1] are clipped first
    y = parse_degradations("jpeg:40")(x).degraded
    u8 = np.rint(np.clip(x.double().numpy(), 0, 1) * 255).astype(np.uint8)
    for k in range(x.shape[0]):
        ref = pillow_jpeg(u8[k, 0], 40)
        np.testing.assert_array_equal(np.rint(y[k, 0].double().numpy() * 255), ref)
    assert y.min() >= 0 and y.max() <= 1


def test_jpeg_error_grows_as_quality_drops():
    x = smooth_image(b=1, h=64, w=64, seed=3)
    errs = [
        float(((parse_degradations(f"jpeg:{q}")(x).degraded - x) ** 2).mean())
        for q in (95, 70, 40, 15, 3)
    ]
    assert all(a < b for a, b in zip(errs, errs[1:], strict=False)), errs


def test_pixel_dropout_removes_the_requested_fraction():
    x = smooth_image(b=3, h=64, w=64)
    p = 0.3
    y, m = parse_degradations(f"mask:pixels:{p}:fill=-1")(x, 5)
    removed = (m == 0).double().numpy()
    n = removed.size
    assert abs(removed.mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
    assert torch.all(y[m == 0] == -1) and torch.equal(y[m == 1], x[m == 1])


@pytest.mark.parametrize("size", [0.125, 0.2])
def test_boxes_cover_at_least_the_fraction_and_less_than_one_more_box(size):
    h, w = 40, 56
    s = round(size * min(h, w))
    x = smooth_image(b=6, h=h, w=w)
    _, m = parse_degradations(f"mask:boxes:fraction=0.3:size={size}")(x, 2)
    frac = (m == 0).double().mean((1, 2, 3)).numpy()
    assert np.all(frac >= 0.3) and np.all(frac < 0.3 + s * s / (h * w))
    # the removed region is a union of s x s squares: an opening by the square keeps it
    for k in range(6):
        removed = (m[k, 0] == 0).numpy()
        np.testing.assert_array_equal(
            ndimage.binary_opening(removed, np.ones((s, s)), border_value=0), removed
        )


def test_stripes_are_full_length_bands():
    x = smooth_image(b=8, h=32, w=48)
    _, m = parse_degradations("mask:stripes:0.2")(x, 9)
    for k in range(8):
        removed = (m[k, 0] == 0).numpy()
        rows, cols = removed.all(1), removed.all(0)
        full = np.broadcast_to(rows[:, None], removed.shape) | np.broadcast_to(
            cols[None, :], removed.shape
        )
        np.testing.assert_array_equal(full, removed)
        assert 0.2 <= removed.mean() < 0.2 + 2 / 32


def test_half_mask_removes_one_half():
    x = smooth_image(b=12, h=33, w=20)
    _, m = parse_degradations("mask:half")(x, 4)
    halves = set()
    for k in range(12):
        removed = (m[k, 0] == 0).numpy()
        for name, ref in {
            "top": np.s_[:16, :],
            "bottom": np.s_[17:, :],
            "left": np.s_[:, :10],
            "right": np.s_[:, 10:],
        }.items():
            want = np.zeros_like(removed)
            want[ref] = True
            if np.array_equal(removed, want):
                halves.add(name)
                break
        else:
            raise AssertionError(f"image {k}: removed pixels are not one half")
    assert len(halves) >= 2


@pytest.mark.parametrize("sigma, shape", [(0.7, (20, 33)), (1.5, (24, 24)), (6.0, (12, 15))])
def test_blur_matches_scipy_gaussian_filter(sigma, shape):
    x = smooth_image(b=2, h=shape[0], w=shape[1], seed=1)
    y = parse_degradations(f"blur:{sigma}")(x).degraded.numpy()
    for k in range(2):
        ref = ndimage.gaussian_filter(x[k, 0].double().numpy(), sigma, mode="reflect")
        np.testing.assert_allclose(y[k, 0], ref, atol=1e-5)


def test_same_seed_same_result_and_generators_advance():
    x = smooth_image()
    d = parse_degradations("noise:0.05,mask:boxes,poisson:200,jpeg:50")
    a, b = d(x, 11), d(x, 11)
    assert torch.equal(a.degraded, b.degraded) and torch.equal(a.observed_mask, b.observed_mask)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(d(x, g1).degraded, d(x, g2).degraded)
    assert not torch.equal(d(x, g1).degraded, d(x, torch.Generator().manual_seed(3)).degraded)
    assert not torch.equal(d(x, 11).degraded, d(x, 12).degraded)


def test_composition_applies_the_steps_in_order_and_multiplies_masks():
    x = smooth_image()
    d = parse_degradations("mask:pixels:0.2,noise:0.1,mask:half")
    r = d(x, 6)
    g = torch.Generator().manual_seed(6)
    y, masks = x, []
    for step in d.steps:
        y, m = step(y, g)
        if m is not None:
            masks.append(m)
    assert torch.equal(r.degraded, y)
    assert torch.equal(r.observed_mask, masks[0] * masks[1])
    assert d.has_mask and "then" in d.describe()


def test_identity_and_dtype():
    x = smooth_image().double()
    r = parse_degradations("none")(x, 0)
    assert r.degraded is x and r.observed_mask is None
    assert parse_degradations("noise,blur")(x, 0).degraded.dtype == torch.float64


def test_spec_forms_and_storage_round_trip():
    a = parse_degradations("noise:0.1, jpeg:30 ,mask:boxes")
    assert a == parse_degradations("gaussian:sigma=0.1,jpeg:quality=30,mask:mode=boxes")
    assert a.steps[2] == Mask("boxes", 0.25, 0.125, 0.0)
    d = json.loads(json.dumps(a.to_dict()))
    assert Degradation.from_dict(d) == a == parse_degradations(a.spec())
    assert parse_degradations(d) == a
    assert "JPEG" in a.describe() and "quality 30" in a.describe()


@pytest.mark.parametrize(
    "spec, words",
    [
        ("noise,sharpen", ["sharpen", "noise", "poisson", "jpeg", "mask", "blur"]),
        ("noise:abc", ["sigma", "number"]),
        ("noise:-1", ["sigma", ">= 0"]),
        ("jpeg:0", ["quality", "1 to 100"]),
        ("jpeg:30.5", ["quality", "integer"]),
        ("mask:circles", ["circles", "boxes, stripes, pixels, half"]),
        ("mask:pixels:1.5", ["fraction"]),
        ("blur:0", ["sigma"]),
        ("poisson:0", ["photons"]),
        ("noise:0.1:2", ["at most 1"]),
        ("blur:radius=2", ["radius", "valid: sigma"]),
        ("noise,,jpeg", ["empty"]),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, words):
    with pytest.raises(InputError) as err:
        parse_degradations(spec)
    for w in words:
        assert w in str(err.value)


def test_bad_inputs_and_stored_dicts():
    d = parse_degradations("noise")
    with pytest.raises(InputError, match="B, C, H, W"):
        d(torch.zeros(8, 8))
    with pytest.raises(InputError, match="degrade_array"):
        d(np.zeros((1, 1, 8, 8)))
    with pytest.raises(InputError, match="seed"):
        d(torch.zeros(1, 1, 8, 8), -3)
    with pytest.raises(InputError, match="steps"):
        Degradation.from_dict({"noise": 0.1})
    with pytest.raises(InputError, match="unknown degradation"):
        Degradation.from_dict({"steps": [{"name": "smear"}]})


def test_degrade_array_matches_the_tensor_path():
    x = smooth_image(b=3)
    y, m = degrade_array(x[:, 0].numpy(), "noise:0.1,mask:pixels", seed=2)
    r = parse_degradations("noise:0.1,mask:pixels")(x, 2)
    assert y.dtype == np.float32 and y.shape == (3, 48, 40) and m.dtype == bool
    np.testing.assert_array_equal(y, r.degraded[:, 0].numpy())
    np.testing.assert_array_equal(m, r.observed_mask[:, 0].numpy() == 1)
    y2, m2 = degrade_array(x[0, 0].numpy(), "blur:1")
    assert y2.shape == (48, 40) and m2 is None
