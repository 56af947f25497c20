"""The bundled VAE on held-out corrupted images: the calibrated posterior covers the clean
image, the model explains the observed pixels, and holes are more uncertain than data.
(The acceptance numbers, on 16 images per split, are in bench/posterior.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from napari_sim_uq.api import example_vae_model_path
from napari_sim_uq.core.data.normalization import Normalization
from napari_sim_uq.core.events import run
from napari_sim_uq.tasks.sim.samples import image2d_clean
from napari_sim_uq.tasks.vae2d.reconstruct import load_vae_model, posterior_2d


@pytest.fixture(scope="module")
def bundled():
    return load_vae_model(example_vae_model_path())


def test_bundled_model_is_a_calibrated_vae(bundled):
    model, ck = bundled
    assert ck.model_type == "vae2d" and model.patch == 64 and model.latent_dim == 16
    assert 0 < ck.extra["sigma_model"] < 0.2
    scales = np.asarray(ck.extra["posterior_calibration"]["scales"])
    assert scales.shape == (6, 2) and (np.diff(scales[1:], axis=0) >= 0).all()


def test_held_out_posterior_covers_the_clean_image(bundled):
    model, ck = bundled
    rng = np.random.default_rng(0)
    cover = {"missing": [], "observed": []}
    std = {"missing": [], "observed": []}
    chi2 = []
    for i in range(6):
        img = image2d_clean(seed=9500 + i, size=256)  # seeds used by no training step
        norm = Normalization("percentile").fit(img)
        y, x = rng.integers(0, 192, 2)
        clean = img[y : y + 64, x : x + 64].astype(np.float32)
        sigma = 0.05 * norm.scale
        noisy = clean + rng.normal(0, sigma, clean.shape).astype(np.float32)
        observed = np.ones(clean.shape, bool)
        observed[20:44, 16:48] = False
        pred = run(
            posterior_2d(
                model, ck, noisy, mask=observed, noise_sigma=sigma, normalization=norm, seed=i
            )
        )
        z = np.abs(pred.arrays["posterior_mean"] - clean) / pred.arrays["posterior_std"]
        for part, sel in (("missing", ~observed), ("observed", observed)):
            cover[part].append(z[sel] < 1.96)
            std[part].append(pred.arrays["posterior_std"][sel])
        chi2.append(pred.meta["chi2_per_observed_pixel_at_map"])
    for part in cover:
        assert 0.8 <= np.concatenate(cover[part]).mean() <= 1.0, part
    assert np.concatenate(std["missing"]).mean() > 1.5 * np.concatenate(std["observed"]).mean()
    assert 0.6 <= np.mean(chi2) <= 1.4
