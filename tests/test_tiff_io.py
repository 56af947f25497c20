"""TIFF/PNG reading and writing, checked against files made by tifffile and Pillow."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_sim_uq.core.errors import FileFormatError, InputError
from napari_sim_uq.core.io.tiff_io import atomic_write, read_image, write_image


@pytest.mark.parametrize(
    ("shape", "kind", "labels"),
    [
        ((24, 20), "image2d", ("y", "x")),
        ((9, 24, 20), "sim", ("frame", "y", "x")),
        ((3, 3, 24, 20), "sim_ap", ("angle", "phase", "y", "x")),
        ((4, 9, 24, 20), "sim_t", ("t", "frame", "y", "x")),
    ],
)
def test_reads_plain_tifffile_stacks(tmp_path, rng, shape, kind, labels):
    data = rng.random(shape, dtype=np.float32)
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, data)  # no ImageJ metadata: layout from the shape alone
    rec = read_image(path)
    np.testing.assert_array_equal(rec.data, data)
    assert rec.layout.kind == kind
    assert rec.axis_labels == labels
    assert rec.name == "plain"
    assert rec.scale == (1.0,) * len(shape)
    assert rec.metadata["sim_uq"]["layout"]["kind"] == kind


def test_imagej_pixel_size_and_sim_metadata(tmp_path, rng):
    data = rng.integers(0, 4000, size=(15, 16, 16), dtype=np.uint16)
    path = tmp_path / "fiji.tif"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 0.065, 1 / 0.065),
        metadata={"axes": "ZYX", "unit": "micron", "sim_angles": 3, "sim_phases": 5},
    )
    rec = read_image(path)
    assert rec.data.dtype == np.uint16
    assert rec.layout.angles == 3 and rec.layout.phases == 5
    assert rec.scale[1:] == pytest.approx((0.065, 0.065))
    assert rec.unit == "um"


def test_ome_pixel_size(tmp_path, rng):
    data = rng.random((9, 16, 16), dtype=np.float32)
    path = tmp_path / "x.ome.tif"
    tifffile.imwrite(
        path, data, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.04, "PhysicalSizeY": 0.05}
    )
    rec = read_image(path)
    assert rec.scale[1:] == pytest.approx((0.05, 0.04))


def test_time_series_from_imagej_axes(tmp_path, rng):
    data = rng.random((2, 9, 8, 8), dtype=np.float32)
    path = tmp_path / "ts.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZYX"})
    rec = read_image(path)
    assert rec.layout.kind == "sim_t" and rec.layout.n_timepoints == 2


@pytest.mark.parametrize(
    "dtype", [np.float32, np.uint16, np.uint8, np.int16, np.float64, np.int32, bool]
)
def test_write_read_round_trip(tmp_path, rng, dtype):
    data = (rng.random((9, 12, 10)) * 200).astype(dtype)
    md = {
        "model": "tiny",
        "params": {"mc_samples": 8, "tile": None},
        "values": [1.5, 2.0],
        "sim_uq": {"layout": {"kind": "sim", "angles": 3, "phases": 3}},
    }
    path = write_image(
        tmp_path / "out.tif",
        data,
        name="my layer",
        scale=(1, 0.1, 0.1),
        translate=(0, -0.05, 0.25),
        metadata=md,
        unit="um",
        axis_labels=("frame", "y", "x"),
        display={"colormap": "magma"},
    )
    rec = read_image(path)
    assert rec.data.dtype == data.dtype
    if dtype is np.float64:
        np.testing.assert_allclose(rec.data, data, rtol=1e-7)  # stored as float32
    else:
        np.testing.assert_array_equal(rec.data, data)
    assert rec.name == "my layer"
    assert rec.scale == (1.0, 0.1, 0.1)
    assert rec.translate == (0.0, -0.05, 0.25)
    assert rec.metadata == md
    assert rec.unit == "um"
    assert rec.display["colormap"] == "magma"
    # Fiji sees the pixel size too (independent reader of the tags)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["unit"] == "um"
        num, den = tif.pages[0].tags["XResolution"].value
        assert den / num == pytest.approx(0.1, rel=1e-6)
        info = json.loads(tif.imagej_metadata["Info"])
        assert info["napari_sim_uq"]["name"] == "my layer"


def test_numpy_metadata_is_stored_as_json(tmp_path):
    md = {"scale_factor": np.float32(1.5), "hist": np.arange(3), "obj": object()}
    with pytest.warns(UserWarning, match="'obj'"):
        path = write_image(tmp_path / "a.tif", np.zeros((4, 4), np.float32), metadata=md)
    rec = read_image(path)
    assert rec.metadata["scale_factor"] == 1.5 and rec.metadata["hist"] == [0, 1, 2]
    assert "obj" not in rec.metadata


def test_write_refuses_to_overwrite_and_keeps_old_file(tmp_path):
    path = tmp_path / "keep.tif"
    write_image(path, np.ones((4, 4), np.float32))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        write_image(path, np.zeros((4, 4), np.float32))
    assert path.read_bytes() == before
    write_image(path, np.zeros((4, 4), np.float32), overwrite=True)
    assert read_image(path).data.max() == 0


def test_failed_write_leaves_existing_file_intact(tmp_path):
    path = tmp_path / "keep.tif"
    path.write_bytes(b"precious")

    def broken(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken, overwrite=True)
    assert path.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tif"]  # no temp file left


def test_png_grayscale(tmp_path, rng):
    data = rng.integers(0, 255, (20, 30), dtype=np.uint8)
    Image.fromarray(data).save(tmp_path / "g.png")
    rec = read_image(tmp_path / "g.png")
    np.testing.assert_array_equal(rec.data, data)
    assert rec.layout.kind == "image2d"


# ----------------------------------------------------------------------------- bad input


def _expect(path, exc, *fragments):
    with pytest.raises(exc) as info:
        read_image(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    for frag in fragments:
        assert frag in msg, msg


def test_corrupt_tiff(tmp_path):
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, np.ones((9, 16, 16), np.float32))
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(good.read_bytes()[:100])  # truncated
    _expect(bad, FileFormatError, "not a readable TIFF")
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"this is not a tiff at all" * 10)
    _expect(junk, FileFormatError, "not a readable TIFF")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.tif"
    p.touch()
    _expect(p, FileFormatError, "empty (0 bytes)")


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.tif", InputError, "file not found")


def test_four_frame_stack(tmp_path):
    p = tmp_path / "four.tif"
    tifffile.imwrite(p, np.ones((4, 16, 16), np.float32))
    _expect(p, InputError, "has 4 frames", "3 angles x 3 phases")


def test_nan_file(tmp_path):
    data = np.ones((9, 16, 16), np.float32)
    data[2, 3, 4] = np.nan
    data[5, 0, 0] = np.inf
    p = tmp_path / "nan.tif"
    tifffile.imwrite(p, data)
    _expect(p, FileFormatError, "1 NaN and 1 infinite", "(2, 3, 4)")


def test_rgb_png_and_tiff(tmp_path, rng):
    rgb = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    _expect(tmp_path / "rgb.png", FileFormatError, "colour", "grayscale")
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    _expect(tmp_path / "rgb.tif", FileFormatError, "colour (RGB)")


def test_unsupported_suffix(tmp_path):
    p = tmp_path / "a.jpg"
    p.write_bytes(b"x")
    _expect(p, InputError, "unsupported file type")


def test_write_bad_input(tmp_path):
    with pytest.raises(InputError, match="empty"):
        write_image(tmp_path / "e.tif", np.zeros((0, 4)))
    with pytest.raises(InputError, match="TIFF"):
        write_image(tmp_path / "e.png", np.zeros((4, 4)))
    with pytest.raises(InputError, match="2D to 4D"):
        write_image(tmp_path / "e.tif", np.zeros((2, 2, 2, 2, 2)))


def test_plain_stacks_written_here_read_back_and_foreign_ones_are_refused(tmp_path):
    # a (T, H, W) stack that is not SIM data (e.g. a time series of emitters) written by
    # this package reads back as a stack of planes; the same shape from elsewhere is refused
    data = np.random.default_rng(0).random((5, 8, 6), dtype=np.float32)
    path = write_image(tmp_path / "t.tif", data, axis_labels=("t", "y", "x"), name="emitters")
    rec = read_image(path)
    np.testing.assert_array_equal(rec.data, data)
    assert rec.layout.kind == "stack" and not rec.layout.is_sim
    assert rec.layout.what == "a stack of planes (not SIM data)"
    assert rec.axis_labels == ("t", "y", "x") and rec.name == "emitters"
    foreign = tmp_path / "foreign.tif"
    tifffile.imwrite(foreign, data)
    with pytest.raises(FileFormatError, match="has 5 frames"):
        read_image(foreign)
