"""Synthetic SIM generator: determinism, physics consistency (checked with SciPy) and noise."""

import json

import numpy as np
import pytest
from scipy import signal, special, stats

from napari_sim_uq.cli import main
from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.events import run
from napari_sim_uq.core.io.tiff_io import read_image
from napari_sim_uq.tasks.sim.synth import (
    SynthConfig,
    generate_dataset,
    generate_sample,
    poisson_by_inversion,
    render_structures,
)


def tiny(**kw):
    base = dict(lr_size=(16, 20), hr_factor=2, psf_sigma_lr=(0.8, 1.0))
    base.update(kw)
    return SynthConfig(**base)


def scipy_forward(emitter, patterns, psf, f, background):
    """Independent forward model: direct 'same' convolution, f x f block mean, + b."""
    frames = []
    for pat in patterns:
        blurred = signal.convolve2d(emitter.astype(np.float64) * pat, psf, mode="same")
        h, w = blurred.shape
        frames.append(blurred.reshape(h // f, f, w // f, f).mean(axis=(1, 3)))
    return np.stack(frames) + background


def test_sample_is_deterministic_per_seed_and_index():
    cfg = tiny()
    a, b = generate_sample(cfg, seed=5, index=3), generate_sample(cfg, seed=5, index=3)
    np.testing.assert_array_equal(a.raw, b.raw)
    np.testing.assert_array_equal(a.emitter, b.emitter)
    c = generate_sample(cfg, seed=5, index=4)
    assert not np.array_equal(a.emitter, c.emitter)
    assert a.raw.shape == (9, 16, 20) and a.raw.dtype == np.float32
    assert a.emitter.shape == (32, 40) and a.patterns.shape == (9, 32, 40)


@pytest.mark.parametrize("rate", [0.0, 0.3, 4.0, 60.0, 2500.0])
def test_poisson_by_inversion_has_the_poisson_distribution(rate):
    n = 40_000
    k = poisson_by_inversion(np.full(n, rate), np.random.default_rng(7))
    assert k.min() >= 0 and np.array_equal(k, np.round(k))
    if rate == 0:
        assert not k.any()
        return
    # mean and variance within 5 standard errors of the Poisson values (var of the sample
    # variance of a Poisson: rate/n * (1 + 2 rate) to leading order)
    assert abs(k.mean() - rate) < 5 * np.sqrt(rate / n)
    assert abs(k.var(ddof=1) - rate) < 5 * np.sqrt(rate * (1 + 2 * rate) / n)
    # the pmf itself: chi-square over the bins holding 99.8 % of the mass
    lo, hi = (int(v) for v in stats.poisson.ppf([0.001, 0.999], rate))
    edges = np.arange(lo, hi + 1)
    observed = np.array([(k == e).sum() for e in edges])
    expected = n * stats.poisson.pmf(edges, rate)
    keep = expected > 5
    chi2 = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-4


def test_poisson_by_inversion_is_the_poisson_quantile_of_a_uniform():
    # the same uniform numbers through SciPy's quantile function give the same counts
    rng = np.random.default_rng(3)
    rate = np.concatenate([rng.uniform(0, 3, 3000), rng.uniform(0, 600, 3000), [0.0, 1e5]])
    k = poisson_by_inversion(rate, np.random.default_rng(4))
    u = np.random.default_rng(4).random(rate.shape) + 2.0**-54
    # the definition: the smallest k with CDF(k) >= u
    assert (special.pdtr(k, rate) >= u).all()
    assert (special.pdtr(k - 1, rate)[k > 0] < u[k > 0]).all()
    # SciPy's quantile function (its own algorithm) agrees
    assert (k == stats.poisson.ppf(u, rate)).mean() > 0.999
    with pytest.raises(InputError, match="finite"):
        poisson_by_inversion(np.array([1.0, np.nan]), rng)


def test_poisson_by_inversion_is_a_step_function_of_the_rate():
    # the property that makes data reproducible across machines (issue 11): a rate that
    # differs in its last bits gives the same draw; NumPy's rate-dependent sampler does not
    rate = np.random.default_rng(0).uniform(0, 600, 100_000)
    k = poisson_by_inversion(rate, np.random.default_rng(1))
    for rel in (1e-15, 1e-12):
        nudged = rate * (1 + rel * np.random.default_rng(2).uniform(-1, 1, rate.shape))
        np.testing.assert_array_equal(k, poisson_by_inversion(nudged, np.random.default_rng(1)))
    # a large change changes the draws where the rate crosses a CDF step, and only a few:
    # probability ~ pmf * |d rate| per pixel (~4e-7 * rate for these rates)
    moved = poisson_by_inversion(rate * (1 + 1e-6), np.random.default_rng(1)) != k
    assert 0 < moved.mean() < 2e-3


def test_clean_raw_equals_forward_model_of_ground_truth():
    cfg = tiny(hr_factor=3)
    s = generate_sample(cfg, seed=1)
    ref = scipy_forward(s.emitter, s.patterns, s.psf, 3, s.params["background"])
    np.testing.assert_allclose(s.clean, ref, rtol=1e-4, atol=1e-4 * ref.max())


def test_saved_files_reproduce_the_raw_data(tmp_path):
    cfg = tiny(read_noise=(1e-6, 2e-6), photons=(1e4, 1e4), high_noise_regions=0)
    res = run(generate_dataset(tmp_path / "d", 2, cfg, seed=0, workers=1))
    assert res["n_samples"] == 2
    for i in range(2):
        raw = read_image(tmp_path / "d" / "train" / f"sample_{i:05d}.tif")
        gt = read_image(tmp_path / "d" / "train_gt" / f"sample_{i:05d}.tif")
        lp = read_image(tmp_path / "d" / "train_gt" / f"sample_{i:05d}_lp.tif")
        meta = np.load(tmp_path / "d" / "train_meta" / f"sample_{i:05d}.npz")
        assert raw.layout.kind == "sim" and raw.data.shape == (9, 16, 20)
        ref = scipy_forward(gt.data, lp.data, meta["psf"], 2, float(meta["background"]))
        # the saved noise map is the Poisson-Gaussian std of the forward model (read noise
        # ~0 here), and the raw data lies within 5 of those sigmas of the forward model
        # (float32 FFT round-off is ~1e-7 of the maximum, hence the absolute tolerance)
        np.testing.assert_allclose(meta["noise_sigma"] ** 2, ref, rtol=1e-4, atol=1e-6 * ref.max())
        z = np.abs(raw.data - ref) / np.sqrt(ref)
        assert z.max() < 5.5 and 0.8 < np.sqrt((z**2).mean()) < 1.2
        # GT overlays the raw frames (DESIGN.md 3)
        assert gt.scale == (0.5, 0.5) and gt.translate == (-0.25, -0.25)
    doc = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert doc["splits"]["train"]["n_samples"] == 2
    assert doc["splits"]["train"]["config"]["lr_size"] == [16, 20]


def test_empirical_noise_matches_saved_sigma_map():
    cfg = tiny(lr_size=(12, 12), read_noise=(2.0, 8.0), high_noise_regions=1)
    draws = [generate_sample(cfg, seed=2, noise_seed=k) for k in range(300)]
    clean = draws[0].clean
    for d in draws[1:3]:
        np.testing.assert_allclose(d.clean, clean, rtol=1e-6)  # content fixed, noise redrawn
    raws = np.stack([d.raw for d in draws])
    emp = raws.std(axis=0, ddof=1)
    sigma = draws[0].noise_sigma
    ratio = emp / sigma
    # 300 draws: the std of one pixel's estimate is ~4 %; the mean over 1296 pixels is tight
    assert 0.97 < ratio.mean() < 1.03
    assert np.corrcoef(emp.ravel(), sigma.ravel())[0, 1] > 0.9
    np.testing.assert_allclose(raws.mean(axis=0), clean, atol=4 * sigma.max() / np.sqrt(300))
    m = draws[0].mask
    if m.any() and (~m).any():  # high-noise regions really are noisier
        assert draws[0].read_sigma[m].min() >= draws[0].read_sigma[~m].min()


def test_patterns_and_parameters_follow_the_config():
    cfg = tiny(modulation=(0.7, 0.7), period_lr=(3.0, 3.0), phase_jitter=0.0)
    s = generate_sample(cfg, seed=0)
    pats = s.patterns.reshape(3, 3, 32, 40)
    np.testing.assert_allclose(pats.mean(axis=1), 1.0, atol=1e-5)  # phases sum out
    assert pats.max() == pytest.approx(1.7, abs=0.02) and pats.min() == pytest.approx(0.3, abs=0.02)
    k = np.asarray(s.params["wave_vectors"])
    np.testing.assert_allclose(np.hypot(k[:, 0], k[:, 1]), 1 / (3.0 * 2), rtol=1e-5)
    assert s.psf.sum() == pytest.approx(1.0, abs=1e-5)


def test_structure_mix_is_configurable():
    rng = np.random.default_rng(0)
    only_beads = render_structures(tiny(n_filaments=(0, 0), n_rings=(0, 0), n_beads=(3, 3)), rng)
    # three isolated spots: most pixels are dark
    assert (only_beads > 0.05).mean() < 0.05
    fil = render_structures(tiny(n_filaments=(8, 8), n_rings=(0, 0), n_beads=(0, 0)), rng)
    assert (fil > 0.05).mean() > (only_beads > 0.05).mean()
    assert only_beads.max() == pytest.approx(1.0) and fil.max() == pytest.approx(1.0)


def test_parallel_workers_give_the_same_dataset(tmp_path, assert_same_noisy_data):
    cfg = tiny()
    run(generate_dataset(tmp_path / "a", 3, cfg, seed=7, workers=1))
    run(generate_dataset(tmp_path / "b", 3, cfg, seed=7, workers=2))
    for i in range(3):
        ra = read_image(tmp_path / "a" / "train" / f"sample_{i:05d}.tif").data
        rb = read_image(tmp_path / "b" / "train" / f"sample_{i:05d}.tif").data
        assert_same_noisy_data(ra, rb, f"sample {i}")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr_size": (-4, 16)}, "lr_size"),
        ({"lr_size": (0, 16)}, "lr_size"),
        ({"hr_factor": 0}, "hr_factor"),
        ({"modulation": (0.5, 1.2)}, r"modulation must lie in \[0, 1\]"),
        ({"modulation": (-0.1, 0.5)}, "modulation"),
        ({"psf_sigma_lr": (0.0, 1.0)}, "psf_sigma_lr"),
        ({"photons": (10.0, 5.0)}, "low <= high"),
        ({"n_filaments": (0, 0), "n_rings": (0, 0), "n_beads": (0, 0)}, "at least one"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(InputError, match=match):
        tiny(**kwargs)


def test_out_dir_rules(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        run(generate_dataset(f, 1, tiny()))
    run(generate_dataset(tmp_path / "d", 1, tiny(), workers=1))
    before = (tmp_path / "d" / "train" / "sample_00000.tif").read_bytes()
    with pytest.raises(FileExistsError, match="not empty"):
        run(generate_dataset(tmp_path / "d", 1, tiny(), seed=9, workers=1))
    assert (tmp_path / "d" / "train" / "sample_00000.tif").read_bytes() == before
    # another split goes next to it; --overwrite replaces
    run(generate_dataset(tmp_path / "d", 1, tiny(), split="val", workers=1))
    run(generate_dataset(tmp_path / "d", 1, tiny(), seed=9, workers=1, overwrite=True))
    assert (tmp_path / "d" / "train" / "sample_00000.tif").read_bytes() != before
    doc = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert set(doc["splits"]) == {"train", "val"}
    with pytest.raises(InputError, match="n_samples"):
        run(generate_dataset(tmp_path / "e", 0, tiny()))


def test_cli_generate(tmp_path, capsys):
    out = tmp_path / "ds"
    rc = main(
        [
            "generate",
            "--out-dir",
            str(out),
            "--n-samples",
            "2",
            "--lr-size",
            "16",
            "--hr-factor",
            "2",
            "--seed",
            "3",
            "--split",
            "val",
            "--workers",
            "1",
            "--quiet",
        ]
    )
    assert rc == 0
    assert "wrote 2 samples (val)" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "val_gt").iterdir()) == [
        "sample_00000.tif",
        "sample_00000_lp.tif",
        "sample_00001.tif",
        "sample_00001_lp.tif",
    ]
    meta = np.load(out / "val_meta" / "sample_00001.npz")
    for key in (
        "noise_sigma",
        "mask",
        "psf_sigma",
        "wave_vectors",
        "phases",
        "modulation",
        "photons",
    ):
        assert key in meta
    assert meta["noise_sigma"].shape == (9, 16, 16)
    # refuses to overwrite, with a one-line error
    rc = main(
        [
            "generate",
            "--out-dir",
            str(out),
            "--n-samples",
            "1",
            "--lr-size",
            "16",
            "--split",
            "val",
            "--quiet",
        ]
    )
    assert rc == 2 and "not empty" in capsys.readouterr().err
    # out-of-range values are refused by argparse (the ranges of SynthConfig's metadata)
    for bad, msg in (
        (["--modulation", "0.5", "1.5"], "argument --modulation: must be in [0, 1], got 1.5"),
        (["--hr-factor", "0"], "argument --hr-factor: must be >= 1, got 0"),
        (["--lr-size", "-3"], "argument --lr-size: must be >= 8, got -3"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(["generate", "--out-dir", str(tmp_path / "x"), "--n-samples", "1", *bad])
        assert exc.value.code == 2 and msg in capsys.readouterr().err
    # what the metadata does not check, SynthConfig still does: one line, exit status 2
    rc = main(
        [
            "generate",
            "--out-dir",
            str(tmp_path / "x"),
            "--n-samples",
            "1",
            "--lr-size",
            "16",
            "8",
            "8",
        ]
    )
    assert rc == 2 and "--lr-size takes H or H W" in capsys.readouterr().err
    rc = main(
        ["generate", "--out-dir", str(tmp_path / "x"), "--n-samples", "1", "--period", "0", "1"]
    )
    assert rc == 2 and "period_lr must be > 0" in capsys.readouterr().err


def test_airy_psf_option_and_shifted_config():
    from scipy.optimize import curve_fit

    from napari_sim_uq.tasks.sim.synth import shifted_config

    cfg = SynthConfig(lr_size=(24, 24), hr_factor=2, psf_model="airy", psf_sigma_lr=(1.0, 1.0))
    s = generate_sample(cfg, seed=0)
    assert s.params["psf_model"] == "airy"
    psf = s.psf.astype(np.float64)
    assert psf.sum() == pytest.approx(1.0, abs=1e-5)
    k = psf.shape[0]
    assert k % 2 == 1 and k <= 48  # fits the 48 x 48 HR grid
    # the best-fitting Gaussian of its core has the drawn sigma (2 HR pixels) within 10 %
    c = k // 2
    yy, xx = np.mgrid[-c : c + 1, -c : c + 1]
    core = (yy**2 + xx**2) <= 16
    (amp, sig), _ = curve_fit(
        lambda rr, a, sg: a * np.exp(-rr / (2 * sg**2)),
        (yy**2 + xx**2)[core].astype(float),
        psf[core],
        p0=(psf.max(), 2.0),
    )
    assert sig == pytest.approx(2.0, rel=0.1)
    # dark rings: the Airy PSF has zeros a Gaussian has not (ideal OTF with a cut-off)
    g = generate_sample(SynthConfig(lr_size=(24, 24), hr_factor=2, psf_sigma_lr=(1.0, 1.0)), 0)
    otf_a = np.abs(np.fft.fft2(psf, s=(64, 64)))
    otf_g = np.abs(np.fft.fft2(g.psf.astype(np.float64), s=(64, 64)))
    assert otf_a[0, 20] < 0.01 and otf_g[0, 20] > otf_a[0, 20]  # beyond the Airy cut-off
    with pytest.raises(InputError, match="psf_model"):
        SynthConfig(psf_model="lorentz")
    sh = shifted_config(SynthConfig(lr_size=(24, 24), hr_factor=2))
    assert sh.psf_model == "airy" and sh.line_width_hr == 0.3 and sh.lr_size == (24, 24)


def test_fixed_instrument_shares_the_optics_across_stacks_and_splits():
    """One instrument per dataset: period, orientation, modulation and PSF width are the
    same for every stack of every split; phases, photons and the sample are not."""
    from napari_sim_uq.tasks.sim.synth import instrument_parameters

    cfg = SynthConfig(lr_size=(16, 16), hr_factor=2, fixed_instrument=True, instrument_seed=3)
    a = generate_sample(cfg, seed=0, index=0).params
    b = generate_sample(cfg, seed=1000, index=5).params  # another split's seed
    for key in ("period_lr", "modulation", "angle_offset", "psf_sigma_lr"):
        assert a[key] == b[key]
    assert a["photons"] != b["photons"]
    assert not np.allclose(a["phases"], b["phases"])
    period, mod, offset, sigma = instrument_parameters(cfg)
    assert (a["period_lr"], a["modulation"], a["psf_sigma_lr"]) == (period, mod, sigma)
    assert cfg.period_lr[0] <= period <= cfg.period_lr[1]
    # another instrument seed, another instrument; off: drawn per stack
    other = SynthConfig(lr_size=(16, 16), hr_factor=2, fixed_instrument=True, instrument_seed=4)
    assert generate_sample(other, 0, 0).params["period_lr"] != a["period_lr"]
    free = SynthConfig(lr_size=(16, 16), hr_factor=2)
    assert (
        generate_sample(free, 0, 0).params["period_lr"]
        != generate_sample(free, 0, 1).params["period_lr"]
    )
    # the other draws of a stack do not depend on the mode
    np.testing.assert_array_equal(
        generate_sample(free, 0, 0).emitter, generate_sample(cfg, 0, 0).emitter
    )


def test_default_hr_factor_matches_the_models():
    from napari_sim_uq.tasks.sim.net import SimNetConfig

    assert SynthConfig().hr_factor == SimNetConfig().hr_factor == 2
