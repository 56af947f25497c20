"""Core structure renderer and noise draws shared by the SIM and 2D generators."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_sim_uq.core.data import noise
from napari_sim_uq.core.data.structures import render_structures
from napari_sim_uq.core.errors import InputError


def render(seed=0, shape=(40, 48), **kw):
    args = dict(n_filaments=(2, 4), n_rings=(1, 2), n_beads=(3, 6), line_width=0.8)
    args.update(kw)
    return render_structures(shape, 2, rng=np.random.default_rng(seed), **args)


def test_output_is_float32_with_maximum_one_and_reproducible():
    a = render(1)
    assert a.shape == (40, 48) and a.dtype == np.float32
    assert a.min() >= 0 and a.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(a, render(1))
    assert not np.array_equal(a, render(2))


def test_nothing_requested_gives_zeros():
    z = render(0, n_filaments=0, n_rings=0, n_beads=0)
    assert z.dtype == np.float32 and not z.any()


def test_nuclei_off_draws_no_random_numbers():
    """Callers that never ask for nuclei (the SIM generator) keep their random stream."""
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    kw = dict(n_filaments=(1, 3), n_rings=1, n_beads=(2, 4), line_width=1.0)
    a = render_structures((32, 32), 2, rng=r1, **kw)
    b = render_structures((32, 32), 2, rng=r2, n_nuclei=(0, 0), **kw)
    np.testing.assert_array_equal(a, b)
    assert r1.random() == r2.random()


def test_single_bead_has_the_gaussian_line_width():
    # one bead, no fine grid: a Gaussian of sigma line_width, widened by bilinear splatting
    # by f(1-f) <= 1/4 pixel^2 per axis (f the sub-pixel offset)
    sigma = 2.5
    checked = 0
    for seed in range(6):
        img = render(
            seed, shape=(64, 64), n_filaments=0, n_rings=0, n_beads=1, line_width=sigma
        ).astype(np.float64)
        yy, xx = np.mgrid[0:64, 0:64]
        m = img.sum()
        cy, cx = (img * yy).sum() / m, (img * xx).sum() / m
        if not (4 * sigma < cy < 64 - 4 * sigma and 4 * sigma < cx < 64 - 4 * sigma):
            continue  # cut by the border
        checked += 1
        for var in ((img * (yy - cy) ** 2).sum() / m, (img * (xx - cx) ** 2).sum() / m):
            assert sigma**2 - 0.05 < var < sigma**2 + 0.25 + 0.05
    assert checked >= 2


def test_nucleus_area_matches_its_drawn_size():
    # a lone untextured nucleus: the soft edge crosses half its peak at the ellipse, so the
    # area above half maximum is pi * a * b with a, b = size x the shorter side
    r = 0.08 * 100
    checked = 0
    for seed in range(8):
        img = render(
            seed,
            shape=(100, 100),
            n_filaments=0,
            n_rings=0,
            n_beads=0,
            n_nuclei=1,
            nucleus_size=(0.08, 0.08),
            nucleus_texture=0.0,
        )
        inside = img >= 0.5
        if inside[0].any() or inside[-1].any() or inside[:, 0].any() or inside[:, -1].any():
            continue
        checked += 1
        assert ndimage.label(inside)[1] == 1
        assert inside.sum() == pytest.approx(np.pi * r * r, rel=0.08)
    assert checked >= 3


def test_textured_nuclei_vary_inside():
    flat = render(3, shape=(64, 64), n_filaments=0, n_rings=0, n_beads=0, n_nuclei=2,
                  nucleus_size=(0.15, 0.15), nucleus_texture=0.0)  # fmt: skip
    tex = render(3, shape=(64, 64), n_filaments=0, n_rings=0, n_beads=0, n_nuclei=2,
                 nucleus_size=(0.15, 0.15), nucleus_texture=2.0)  # fmt: skip
    core = flat > 0.9 * flat.max()
    assert tex[core].std() > 5 * flat[core].std()


@pytest.mark.parametrize(
    "kw, word",
    [
        (dict(n_beads=(3, 1)), "n_beads"),
        (dict(n_rings=-1), "n_rings"),
        (dict(n_filaments="many"), "n_filaments"),
        (dict(n_nuclei=(1.5, 2)), "n_nuclei"),
        (dict(line_width=0.0), "line_width"),
        (dict(nucleus_size=(0.2, 0.1)), "nucleus_size"),
    ],
)
def test_bad_parameters_name_themselves(kw, word):
    with pytest.raises(InputError, match=word):
        render(0, **kw)


def test_sim_generator_uses_the_core_pieces():
    from napari_sim_uq.tasks.sim import synth

    assert synth.poisson_by_inversion is noise.poisson_by_inversion
    cfg = synth.SynthConfig(lr_size=(16, 16), hr_factor=2)
    a = synth.render_structures(cfg, np.random.default_rng(4))
    b = render_structures(
        cfg.hr_size, cfg.fine_factor, cfg.n_filaments, cfg.n_rings, cfg.n_beads,
        cfg.line_width_hr, np.random.default_rng(4),
    )  # fmt: skip
    np.testing.assert_array_equal(a, b)


def test_poisson_by_inversion_mean_and_variance():
    rate = np.full(40_000, 3.7)
    k = noise.poisson_by_inversion(rate, np.random.default_rng(0))
    assert np.all(k == np.round(k)) and k.min() >= 0
    se_mean = np.sqrt(3.7 / k.size)
    assert abs(k.mean() - 3.7) < 5 * se_mean
    # variance of a Poisson sample: SE ~ sqrt((2 lambda^2 + lambda) / n)
    assert abs(k.var() - 3.7) < 5 * np.sqrt((2 * 3.7**2 + 3.7) / k.size)
    with pytest.raises(InputError, match="Poisson rates"):
        noise.poisson_by_inversion(np.array([-1.0]), np.random.default_rng(0))
