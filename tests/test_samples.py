"""Sample data: deterministic, physically consistent, and what example_data/ ships."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sim_uq.core.io.tiff_io import read_image
from napari_sim_uq.tasks.sim.samples import (
    EXAMPLE_FILES,
    hr_scale_translate,
    image2d_sample,
    sim_sample,
    write_example_data,
)

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "example_data"


def test_sim_sample_is_deterministic_and_shaped(assert_same_noisy_data):
    a, b = sim_sample(seed=3), sim_sample(seed=3)
    assert_same_noisy_data(a.raw, b.raw)
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


def _compare_with_shipped(folder: Path, assert_same_noisy_data) -> None:
    for name in EXAMPLE_FILES:
        shipped = read_image(EXAMPLE_DIR / name)
        fresh = read_image(folder / name)
        assert shipped.data.dtype == fresh.data.dtype, name
        # the ground-truth emitter is clean data: equal to rounding; the raw stack and the
        # 2D images hold noise: every draw must be the same (see assert_same_noisy_data)
        assert_same_noisy_data(shipped.data, fresh.data, name)
        assert shipped.scale == fresh.scale


def test_shipped_example_data_matches_generator(tmp_path, assert_same_noisy_data):
    written = write_example_data(tmp_path)
    assert sorted(p.name for p in written) == sorted(EXAMPLE_FILES)
    _compare_with_shipped(tmp_path, assert_same_noisy_data)


@pytest.mark.parametrize(
    ("threads", "env_extra"),
    [
        (1, {}),
        (2, {}),
        # torch's plain C++ kernels instead of the AVX2/AVX-512 ones: the float path of
        # another CPU
        (2, {"ATEN_CPU_CAPABILITY": "default"}),
    ],
)
def test_example_data_is_the_same_on_other_float_paths(
    tmp_path, threads, env_extra, assert_same_noisy_data
):
    # a fresh interpreter with another torch/OpenMP thread count or CPU kernel set (other
    # FFT work splits, other rounding) regenerates the same files as shipped
    code = (
        "import sys, torch; torch.set_num_threads(int(sys.argv[2]));"
        "from napari_sim_uq.tasks.sim.samples import write_example_data;"
        "write_example_data(sys.argv[1])"
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        **env_extra,
    }
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), str(threads)], check=True, env=env, timeout=300
    )
    _compare_with_shipped(tmp_path, assert_same_noisy_data)


def test_noise_draws_survive_another_float_path(monkeypatch, assert_same_noisy_data):
    # Another machine computes the clean forward model with other rounding. Simulate that by
    # perturbing it by 1e-11 relative (10^4 times float64 rounding, which is what the
    # generator's float64 forward model leaves): every noise draw must stay the same.
    from napari_sim_uq.tasks.sim import physics

    exact = physics.sim_forward
    rng = np.random.default_rng(0)

    calls = []

    def perturbed(*args, **kwargs):
        out = exact(*args, **kwargs)
        calls.append(out.dtype)
        return out * (1 + 1e-11 * torch.as_tensor(rng.uniform(-1, 1, out.shape)))

    ref = sim_sample(seed=1)
    monkeypatch.setattr(physics, "sim_forward", perturbed)
    other = sim_sample(seed=1)
    assert calls == [torch.float64]  # the generator's forward model runs in float64
    assert_same_noisy_data(ref.raw, other.raw, "raw stack")


def test_write_example_data_refuses_overwrite(tmp_path):
    write_example_data(tmp_path)
    with pytest.raises(FileExistsError):
        write_example_data(tmp_path)
    write_example_data(tmp_path, overwrite=True)
