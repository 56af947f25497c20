"""Reader, writer and sample data through the plugin manifest, in a real napari viewer."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

pytestmark = pytest.mark.gui

PLUGIN = "napari-sim-uq"
EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "example_data"


@pytest.mark.parametrize(
    ("shape", "labels"),
    [
        ((9, 24, 20), ("frame", "y", "x")),
        ((3, 3, 24, 20), ("angle", "phase", "y", "x")),
        ((2, 9, 24, 20), ("t", "frame", "y", "x")),
        ((24, 20), ("y", "x")),
    ],
)
def test_open_every_layout(make_napari_viewer, tmp_path, rng, shape, labels):
    viewer = make_napari_viewer()
    data = rng.random(shape, dtype=np.float32)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert len(layers) == 1
    layer = layers[0]
    np.testing.assert_array_equal(layer.data, data)
    assert layer.name == "stack"
    assert tuple(layer.axis_labels) == labels
    assert layer.metadata["sim_uq"]["layout"]["kind"] in ("sim", "sim_ap", "sim_t", "image2d")


def test_open_png_and_shipped_examples(make_napari_viewer):
    viewer = make_napari_viewer()
    for name in ("sim_stack.tif", "sim_stack_gt.tif", "cells_2d.tif", "cells_2d.png"):
        viewer.open(str(EXAMPLE_DIR / name), plugin=PLUGIN)
    assert [lay.name for lay in viewer.layers] == [
        "SIM sample",
        "SIM sample GT emitter",
        "cells 2D",
        "cells_2d",
    ]
    gt = viewer.layers["SIM sample GT emitter"]
    assert tuple(gt.scale) == (0.5, 0.5) and tuple(gt.translate) == (-0.25, -0.25)


def test_open_sample(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "sim_stack")
    raw, gt = viewer.layers["SIM sample"], viewer.layers["SIM sample GT emitter"]
    assert raw.data.shape == (9, 96, 96)
    assert gt.data.shape == (192, 192)

    # the HR ground truth overlays the raw frames (DESIGN.md 3): the outer pixel edges
    # (extent of pixel centres +- half a pixel) coincide in world coordinates
    def edges(layer, dims):
        centres = layer.extent.world[:, dims]
        half = 0.5 * np.asarray(layer.scale)[dims]
        return np.stack([centres[0] - half, centres[1] + half])

    np.testing.assert_allclose(edges(raw, [1, 2]), edges(gt, [0, 1]), atol=1e-9)
    np.testing.assert_allclose(edges(raw, [1, 2]), [[-0.5, -0.5], [95.5, 95.5]])
    viewer.open_sample(PLUGIN, "cells_2d")
    assert viewer.layers["cells 2D"].data.dtype == np.uint16


def test_writer_round_trip(make_napari_viewer, tmp_path, rng):
    viewer = make_napari_viewer()
    data = rng.random((9, 16, 12), dtype=np.float32)
    md = {
        "model": "unit-test",
        "mc_samples": 16,
        "sim_uq": {"layout": {"kind": "sim", "angles": 3, "phases": 3}},
    }
    viewer.add_image(
        data,
        name="emitter std",
        scale=(1, 0.08, 0.08),
        translate=(0, 1.5, -2),
        metadata=md,
        colormap="magma",
    )
    out = tmp_path / "std.tif"
    written = viewer.layers.save(str(out), selected=False, plugin=PLUGIN)
    assert written == [str(out)]
    viewer.layers.clear()
    (layer,) = viewer.open(str(out), plugin=PLUGIN)
    np.testing.assert_array_equal(layer.data, data)
    np.testing.assert_allclose(layer.scale, (1, 0.08, 0.08))
    np.testing.assert_allclose(layer.translate, (0, 1.5, -2))
    assert layer.metadata == md
    assert layer.name == "emitter std"
    assert layer.colormap.name == "magma"


def test_save_several_layers_to_folder(make_napari_viewer, tmp_path, rng):
    viewer = make_napari_viewer()
    viewer.add_image(rng.random((8, 8), dtype=np.float32), name="x emitter")
    viewer.add_image(rng.random((8, 8), dtype=np.float32), name="x emitter std")
    folder = tmp_path / "results"
    written = viewer.layers.save(str(folder), selected=False, plugin=PLUGIN)
    assert sorted(Path(p).name for p in written) == ["x_emitter.tif", "x_emitter_std.tif"]
    # a second save into the same folder refuses instead of replacing earlier results
    before = (folder / "x_emitter.tif").read_bytes()
    with pytest.raises(Exception, match="already exist"):
        viewer.layers.save(str(folder), selected=False, plugin=PLUGIN)
    assert (folder / "x_emitter.tif").read_bytes() == before


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: p.write_bytes(b"garbage" * 20), "not a readable TIFF"),
        (lambda p: p.touch(), "empty (0 bytes)"),
        (
            lambda p: tifffile.imwrite(p, np.ones((4, 8, 8), np.float32), photometric="minisblack"),
            "has 4 frames",
        ),
        (lambda p: tifffile.imwrite(p, np.full((9, 8, 8), np.nan, np.float32)), "NaN"),
    ],
)
def test_bad_files_give_clear_errors(make_napari_viewer, tmp_path, make, fragment):
    viewer = make_napari_viewer()
    path = tmp_path / "bad.tif"
    make(path)
    with pytest.raises(Exception) as info:
        viewer.open(str(path), plugin=PLUGIN)
    text = "".join(str(e) for e in (info.value, info.value.__cause__) if e)
    assert fragment in text and "bad.tif" in text
    assert len(viewer.layers) == 0


def test_rgb_png_gives_clear_error(make_napari_viewer, tmp_path, rng):
    from PIL import Image

    viewer = make_napari_viewer()
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
    with pytest.raises(Exception) as info:
        viewer.open(str(path), plugin=PLUGIN)
    text = "".join(str(e) for e in (info.value, info.value.__cause__) if e)
    assert "colour" in text and "photo.png" in text


def test_reader_declines_other_files(tmp_path):
    from napari_sim_uq._napari._reader import napari_get_reader

    assert napari_get_reader(str(tmp_path / "a.czi")) is None
    assert napari_get_reader(str(tmp_path)) is None
    assert napari_get_reader([]) is None
    assert napari_get_reader(str(tmp_path / "a.tif")) is not None


def test_pixel_size_and_unit_survive_open_save_open(make_napari_viewer, tmp_path, rng):
    viewer = make_napari_viewer()
    src = tmp_path / "fiji.tif"
    tifffile.imwrite(
        src,
        rng.random((9, 16, 16), dtype=np.float32),
        imagej=True,
        resolution=(1 / 0.065, 1 / 0.065),
        metadata={"axes": "ZYX", "unit": "micron"},
    )
    (layer,) = viewer.open(str(src), plugin=PLUGIN)
    np.testing.assert_allclose(layer.scale[1:], (0.065, 0.065))
    out = tmp_path / "again.tif"
    viewer.layers.save(str(out), selected=False, plugin=PLUGIN)
    with tifffile.TiffFile(out) as tif:  # Fiji sees micrometres
        assert tif.imagej_metadata["unit"] == "um"
    viewer.layers.clear()
    (again,) = viewer.open(str(out), plugin=PLUGIN)
    np.testing.assert_allclose(again.scale[1:], (0.065, 0.065))
    assert str(again.units[-1]) == str(layer.units[-1])
