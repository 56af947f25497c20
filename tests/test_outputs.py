"""One output table for files and layers (data.outputs): a reconstruction written to files
and read back gives the same names, colormaps and placement as the layers built from it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sim_uq.api import SimSource, reconstruction_layer_data
from napari_sim_uq.core.io.outputs import OutputSpec, hr_scale_translate, placement
from napari_sim_uq.core.io.tiff_io import read_image
from napari_sim_uq.tasks.sim.reconstruct import SIM_OUTPUTS, SimReconstruction, write_reconstruction


def _rec(time_series: bool, h: int = 6, w: int = 8, f: int = 2) -> SimReconstruction:
    rng = np.random.default_rng(0)
    lead = (3,) if time_series else ()
    shapes = {
        "emitter": (f * h, f * w),
        "emitter_std": (f * h, f * w),
        "lp": (9, f * h, f * w),
        "lp_std": (9, f * h, f * w),
        "psf": (5, 5),
        "psf_std": (5, 5),
        "rec_std": (9, h, w),
        # with MC dropout only
        "emitter_aleatoric_std": (f * h, f * w),
        "emitter_epistemic_std": (f * h, f * w),
    }
    arrays = {k: rng.random(lead + s, dtype=np.float32) for k, s in shapes.items()}
    return SimReconstruction(arrays, f, time_series, {"model_type": "sim_uq_net"})


@pytest.mark.parametrize("time_series", [False, True])
def test_files_and_layers_agree(tmp_path, time_series):
    rec = _rec(time_series)
    lead = (2.0,) if time_series else ()
    lead_t = (5.0,) if time_series else ()
    source = SimSource(
        data=np.zeros(1), name="s", scale=(*lead, 1.0, 0.1, 0.2), translate=(*lead_t, 0, 3.0, 4.0)
    )
    layers = reconstruction_layer_data(rec, source)
    written = write_reconstruction(rec, tmp_path, "s", scale_lr=(0.1, 0.2), translate_lr=(3.0, 4.0))
    assert [p.name for p in written[:-1]] == [f"s_{o.key}.tif" for o in SIM_OUTPUTS]
    for spec, (data, kw, kind), path in zip(SIM_OUTPUTS, layers, written, strict=False):
        back = read_image(path)
        assert kind == "image" and kw["name"] == back.name == f"s {spec.suffix}"
        assert kw["colormap"] == back.display["colormap"] == spec.colormap
        np.testing.assert_array_equal(back.data, data)
        n_lead = len(lead)
        # spatial and frame axes are placed alike (a time axis: the file keeps a unit step)
        np.testing.assert_allclose(back.scale[n_lead:], kw["scale"][n_lead:])
        np.testing.assert_allclose(back.translate[n_lead:], kw["translate"][n_lead:])
        assert back.axis_labels == kw["axis_labels"]
        assert kw.get("visible", True) == spec.visible


def test_hr_outputs_overlay_the_raw_pixels():
    # pixel centres: LR pixel i covers [i - 1/2, i + 1/2] in its own units; HR pixel
    # j = f i + (f - 1) / 2 lands on the centre of LR pixel i
    f, sc_lr, tr_lr = 3, (2.0, 0.5), (10.0, -1.0)
    scale, translate, labels = placement(
        OutputSpec("e", "e", "gray", "hr"), sc_lr, tr_lr, hr_factor=f
    )
    assert (scale, translate) == hr_scale_translate(sc_lr, tr_lr, f) and labels == ("y", "x")
    for axis in (0, 1):
        i = 4
        assert translate[axis] + scale[axis] * (f * i + (f - 1) / 2) == pytest.approx(
            tr_lr[axis] + sc_lr[axis] * i
        )
    own = placement(OutputSpec("p", "p", "gray", "own", frame_axis=True), sc_lr, tr_lr)
    assert own == ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), ("frame", "y", "x"))
    with pytest.raises(ValueError, match="grid"):
        OutputSpec("x", "x", "gray", "psf")
