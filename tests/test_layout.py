import numpy as np
import pytest

from napari_sim_uq.core.errors import InputError
from napari_sim_uq.core.io.layout import Layout, as_frames, infer_layout


@pytest.mark.parametrize(
    ("shape", "kwargs", "expected"),
    [
        ((32, 40), {}, Layout("image2d")),
        ((9, 32, 40), {}, Layout("sim", 3, 3)),
        ((3, 3, 32, 40), {}, Layout("sim_ap", 3, 3)),
        ((5, 9, 32, 40), {}, Layout("sim_t", 3, 3, n_timepoints=5)),
        ((3, 9, 32, 40), {}, Layout("sim_t", 3, 3, n_timepoints=3)),
        ((15, 32, 40), {"angles": 3, "phases": 5}, Layout("sim", 3, 5)),
        ((15, 32, 40), {"angles": 3}, Layout("sim", 3, 5)),
        ((3, 5, 32, 40), {"angles": 3, "phases": 5}, Layout("sim_ap", 3, 5)),
        ((2, 9, 32, 40), {"axes": "TZYX"}, Layout("sim_t", 3, 3, n_timepoints=2)),
    ],
)
def test_infer_layout(shape, kwargs, expected):
    assert infer_layout(shape, **kwargs) == expected


def test_time_axis_disambiguates_3x3():
    # (3, 9) is unambiguous; (3, 3, H, W) is (A, P) unless the axes say it is a time series
    assert infer_layout((3, 3, 8, 8)).kind == "sim_ap"
    with pytest.raises(InputError, match="3 frames"):
        infer_layout((3, 3, 8, 8), axes="TZYX")


@pytest.mark.parametrize(
    ("shape", "kwargs", "match"),
    [
        ((4, 16, 16), {}, "has 4 frames"),
        ((9, 16, 16), {"angles": 2, "phases": 2}, "2 angles x 2 phases"),
        ((2, 4, 16, 16), {}, "has 4 frames"),
        ((1, 2, 3, 4, 5), {}, "5 dimensions"),
        ((0, 16, 16), {}, "empty"),
        ((9, 16, 16), {"angles": 0}, "positive integer"),
    ],
)
def test_infer_layout_errors_are_specific(shape, kwargs, match):
    with pytest.raises(InputError, match=match):
        infer_layout(shape, what="x.tif", **kwargs)


def test_as_frames_is_angle_major():
    a, p = 3, 3
    data = np.arange(a * p * 4).reshape(a, p, 2, 2)
    frames = as_frames(data, Layout("sim_ap", a, p))
    assert frames.shape == (1, 9, 2, 2)
    for ia in range(a):
        for ip in range(p):
            np.testing.assert_array_equal(frames[0, ia * p + ip], data[ia, ip])
