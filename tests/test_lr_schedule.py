"""The training loop's learning-rate factor: linear warm-up, then cosine to the floor."""

import math

import pytest

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.training.loop import CosineFactor, TrainOptions


def test_warmup_then_cosine():
    f = CosineFactor(110, 0.02, True, warmup=10)
    assert [f(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)  # the cosine starts at the peak
    assert f(60) == pytest.approx(0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.02) and f(500) == pytest.approx(0.02)


def test_constant_schedule_and_no_warmup():
    assert CosineFactor(50, 0.1, False, warmup=5)(2) == pytest.approx(0.6)
    assert CosineFactor(50, 0.1, False, warmup=5)(30) == 1.0
    assert CosineFactor(50, 0.1, True)(0) == pytest.approx(1.0)


def test_options_validated():
    with pytest.raises(InputError, match="optimizer"):
        TrainOptions(optimizer="sgd").validate()
    with pytest.raises(InputError, match="warmup_steps"):
        TrainOptions(warmup_steps=-1).validate()
