"""Sample data: deterministic, physically consistent, and what example_data/ ships."""

from pathlib import Path

import numpy as np
import pytest

from napari_sim_uq.data.samples import (
    EXAMPLE_FILES,
    hr_scale_translate,
    image2d_sample,
    sim_sample,
    write_example_data,
)
from napari_sim_uq.data.tiff_io import read_image

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "example_data"


def test_sim_sample_is_deterministic_and_shaped():
    a, b = sim_sample(seed=3), sim_sample(seed=3)
    np.testing.assert_array_equal(a.raw, b.raw)
    assert a.raw.shape == (9, 96, 96) and a.raw.dtype == np.float32
    assert a.emitter.shape == (192, 192)
    assert not np.array_equal(a.raw, sim_sample(seed=4).raw)


def test_modulation_is_visible_in_raw_frames():
    # phases of one angle differ (a structured pattern), and without modulation they do not
    quiet = {"read_noise": (1e-6, 1e-6), "photons": (1e6, 1e6), "high_noise_regions": 0}
    s = sim_sample(seed=0, **quiet)
    flat = sim_sample(seed=0, modulation=(0.0, 0.0), **quiet)
    d_mod = np.abs(s.raw[0] - s.raw[1]).mean() / s.raw[0].mean()
    d_flat = np.abs(flat.raw[0] - flat.raw[1]).mean() / flat.raw[0].mean()
    assert d_mod > 5 * d_flat


def test_image2d_sample():
    img = image2d_sample()
    assert img.shape == (256, 256) and img.dtype == np.uint16
    np.testing.assert_array_equal(img, image2d_sample())
    assert img.std() > 50  # has structure, not flat noise


def test_hr_overlay_maths():
    # pixel centres: LR pixel i covers [i - 1/2, i + 1/2] (scale 1); HR pixel j of f covers
    # the same span when j = f*i + (f-1)/2 lands on LR centre i
    f = 3
    sc, tr = hr_scale_translate((2.0, 2.0), (10.0, 0.0), f)
    lr_centre = 10.0 + 2.0 * 4
    hr_index = f * 4 + (f - 1) / 2
    assert tr[0] + sc[0] * hr_index == pytest.approx(lr_centre)


def test_shipped_example_data_matches_generator(tmp_path):
    written = write_example_data(tmp_path)
    assert sorted(p.name for p in written) == sorted(EXAMPLE_FILES)
    for name in EXAMPLE_FILES:
        shipped = read_image(EXAMPLE_DIR / name)
        fresh = read_image(tmp_path / name)
        np.testing.assert_allclose(shipped.data, fresh.data, rtol=1e-6, atol=1e-4)
        assert shipped.scale == fresh.scale


def test_write_example_data_refuses_overwrite(tmp_path):
    write_example_data(tmp_path)
    with pytest.raises(FileExistsError):
        write_example_data(tmp_path)
    write_example_data(tmp_path, overwrite=True)
