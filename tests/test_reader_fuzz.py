"""Fuzz the file reader with damaged copies of valid TIFF and PNG files.

Every outcome must be one the napari reader promises: valid layer data, a
``FileFormatError`` naming the file, or no reader at all. A raw exception from inside
tifffile, Pillow or zlib (``ZeroDivisionError``, ``TypeError``, ...) is a bug.

Seeded numpy randomness only (no torch, no Qt, no napari viewer), so a failure is
reproducible from the printed mutation.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_sim_uq._napari._reader import napari_get_reader
from napari_sim_uq.core.errors import FileFormatError
from napari_sim_uq.core.io import tiff_io
from napari_sim_uq.core.io.tiff_io import read_image, write_image

SEED = 20240611
MUTANTS_PER_FILE = 100  # x 5 valid files = 500 damaged files (about 0.5 s)

# TIFF tags whose values say how big the image is and where its pixels are
_SIZE_TAGS = (256, 257, 258, 273, 277, 278, 279)  # width, length, bits, offsets, spp, rps, counts


# ----------------------------------------------------------------------------- valid files


def _write_png(path: Path, data: np.ndarray) -> Path:
    Image.fromarray(data).save(path)
    return path


def _valid_files(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(SEED)
    sim = (rng.random((9, 32, 32), dtype=np.float32) * 1000).astype(np.float32)
    img16 = rng.integers(0, 60000, (40, 48), dtype=np.uint16)
    files = {
        "sim.tif": write_image(folder / "sim.tif", sim, scale=(1, 0.065, 0.065), unit="um"),
        "plain2d.tif": folder / "plain2d.tif",
        "deflate2d.tif": folder / "deflate2d.tif",
        "gray8.png": _write_png(folder / "gray8.png", rng.integers(0, 255, (36, 44), np.uint8)),
        "gray16.png": _write_png(folder / "gray16.png", img16),
    }
    tifffile.imwrite(files["plain2d.tif"], img16)
    tifffile.imwrite(files["deflate2d.tif"], img16, compression="zlib", rowsperstrip=8)
    for path in files.values():  # the originals themselves must read cleanly
        read_image(path)
    return files


# ----------------------------------------------------------------------------- file structure


def _tiff_structure(buf: bytes) -> tuple[list[tuple[int, int]], list[int]]:
    """(byte ranges of header and IFDs, offsets of the size/offset tag values) of a
    little-endian classic TIFF, found by walking the IFD chain."""
    ranges = [(0, 8)]
    fields = []
    (ifd,) = struct.unpack_from("<I", buf, 4)
    seen = set()
    while 0 < ifd < len(buf) - 2 and ifd not in seen:
        seen.add(ifd)
        (n,) = struct.unpack_from("<H", buf, ifd)
        end = ifd + 2 + 12 * n + 4
        ranges.append((ifd, min(end, len(buf))))
        for i in range(n):
            entry = ifd + 2 + 12 * i
            (tag,) = struct.unpack_from("<H", buf, entry)
            if tag in _SIZE_TAGS:
                fields.append(entry + 8)  # the value (or value offset) field
        (ifd,) = struct.unpack_from("<I", buf, end - 4)
    return ranges, fields


def _png_structure(buf: bytes) -> tuple[list[tuple[int, int]], list[int]]:
    """(byte ranges of signature, chunk headers and IHDR, offsets of IHDR width/height)."""
    ranges = [(0, 8)]
    pos = 8
    while pos + 8 <= len(buf):
        (length,) = struct.unpack_from(">I", buf, pos)
        ranges.append((pos, pos + 8))
        if buf[pos + 4 : pos + 8] == b"IHDR":
            ranges.append((pos + 8, pos + 8 + length + 4))
        pos += 12 + length
    return ranges, [16, 20]


def _fix_ihdr_crc(buf: bytearray) -> None:
    """Recompute the IHDR checksum, so that a mutated header gets past the CRC check."""
    if len(buf) >= 33 and buf[12:16] == b"IHDR":
        buf[29:33] = struct.pack(">I", zlib.crc32(bytes(buf[12:29])))


# ----------------------------------------------------------------------------- mutations


def _mutate(buf: bytes, is_png: bool, rng: np.random.Generator) -> tuple[bytes, str]:
    """One random damaged copy of ``buf`` and a description of the damage."""
    ranges, fields = _png_structure(buf) if is_png else _tiff_structure(buf)
    out = bytearray(buf)
    size = len(buf)
    kind = ("header", "header", "anywhere", "truncate", "zero", "insert", "huge")[
        int(rng.integers(7))
    ]
    if kind == "header":
        changes = []
        for _ in range(int(rng.integers(1, 5))):
            start, end = ranges[int(rng.integers(len(ranges)))]
            pos = int(rng.integers(start, end))
            out[pos] = int(rng.integers(256))
            changes.append(f"{pos}={out[pos]}")
        if is_png and rng.random() < 0.5:
            _fix_ihdr_crc(out)
            changes.append("IHDR crc fixed")
        what = f"header bytes {', '.join(changes)}"
    elif kind == "anywhere":
        pos = sorted(int(p) for p in rng.integers(0, size, int(rng.integers(1, 9))))
        for p in pos:
            out[p] = int(rng.integers(256))
        what = f"random bytes at {pos}"
    elif kind == "truncate":
        n = int(rng.integers(1, size))
        out = out[:n]
        what = f"truncated to {n} of {size} bytes"
    elif kind == "zero":
        start = int(rng.integers(size))
        n = int(rng.integers(1, 257))
        out[start : start + n] = bytes(len(out[start : start + n]))
        what = f"zeroed {n} bytes from {start}"
    elif kind == "insert":
        pos = int(rng.integers(size))
        n = int(rng.integers(1, 17))
        out[pos:pos] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        what = f"inserted {n} bytes at {pos}"
    else:
        pos = fields[int(rng.integers(len(fields)))]
        value = int(rng.choice([2**16 - 1, 2**20, 2**24 + 3, 2**31 - 1, 2**32 - 1]))
        out[pos : pos + 4] = struct.pack(">I" if is_png else "<I", value)
        if is_png:
            _fix_ihdr_crc(out)
        what = f"value {value} written at {pos}"
    return bytes(out), f"{kind}: {what}"


# ----------------------------------------------------------------------------- checks


def _outcome(path: Path) -> tuple[str, BaseException | None]:
    """'data', 'no reader' or 'error' (a FileFormatError naming the file); anything else
    is returned as ('raw', exception)."""
    reader = napari_get_reader(str(path))
    if reader is None:
        return "no reader", None
    try:
        layers = reader(str(path))
    except FileFormatError as err:
        if path.name not in str(err):
            return "raw", err  # the message must say which file
        return "error", None
    except Exception as err:  # what this test looks for
        return "raw", err
    try:  # an invalid layer is reported like a raw exception, with its mutation
        assert isinstance(layers, list) and layers, "no layers"
        for layer in layers:
            assert isinstance(layer, tuple) and len(layer) == 3, "not a layer data tuple"
            data, kwargs, kind = layer
            assert kind == "image" and isinstance(kwargs, dict), "not image layer data"
            assert isinstance(data, np.ndarray) and data.ndim >= 2 and data.size > 0, "bad data"
            assert data.dtype.kind != "f" or np.isfinite(data).all(), "non-finite data"
    except AssertionError as err:
        return "raw", err
    return "data", None


def fuzz_reader(folder: Path, n_per_file: int = MUTANTS_PER_FILE):
    """Run the fuzz; returns (outcome counts, [(type, message, file, mutation), ...])."""
    files = _valid_files(folder)
    rng = np.random.default_rng(SEED)
    counts: dict[str, int] = {}
    raw = []
    for name, src in files.items():
        buf = src.read_bytes()
        stem, suffix = os.path.splitext(name)
        for i in range(n_per_file):
            mutant, what = _mutate(buf, suffix == ".png", rng)
            path = folder / f"{stem}_mut{i:03d}{suffix}"
            path.write_bytes(mutant)
            outcome, err = _outcome(path)
            counts[outcome] = counts.get(outcome, 0) + 1
            if err is not None:
                kind = f"{type(err).__module__}.{type(err).__qualname__}"
                raw.append((kind, str(err)[:200], path.name, what))
            else:
                path.unlink()  # keep only the files that show a bug
    return counts, raw


def test_reader_survives_damaged_files(tmp_path):
    counts, raw = fuzz_reader(tmp_path)
    n = sum(counts.values())
    assert n >= 200
    shown = "\n".join(f"  {t}: {msg!r}\n    file {f}, {what}" for t, msg, f, what in raw[:8])
    assert not raw, f"{len(raw)} of {n} damaged files raised raw exceptions:\n{shown}"
    # the damage must actually be noticed, and some files must survive (byte flips in pixels)
    assert counts.get("error", 0) > 0 and counts.get("data", 0) > 0, counts


# ----------------------------------------------------------------------------- focused cases


def _sim_file(folder: Path) -> Path:
    return write_image(folder / "stack.tif", np.ones((9, 32, 32), np.float32))


def _expect_format_error(path: Path, *fragments: str) -> str:
    reader = napari_get_reader(str(path))
    assert reader is not None
    with pytest.raises(FileFormatError) as info:
        reader(str(path))
    msg = str(info.value)
    assert path.name in msg, msg
    for frag in fragments:
        assert frag in msg, msg
    return msg


def _set_ifd0_tag(buf: bytes, tag: int, value: int) -> bytes:
    """A copy of a little-endian TIFF with tag ``tag`` of the first IFD set to ``value``
    (as a LONG)."""
    out = bytearray(buf)
    (ifd,) = struct.unpack_from("<I", out, 4)
    (n,) = struct.unpack_from("<H", out, ifd)
    for i in range(n):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", out, entry)[0] == tag:
            struct.pack_into("<HII", out, entry + 2, 4, 1, value)
            return bytes(out)
    raise AssertionError(f"tag {tag} not in the first IFD")


def test_gigantic_declared_size_is_refused_before_allocating(tmp_path, monkeypatch):
    src = tmp_path / "small.tif"
    tifffile.imwrite(src, np.ones((32, 32), np.uint16))
    # 2**31-1 x 2**31-1 pixels: 8 EiB of uint16 declared by a 2 kB file
    buf = _set_ifd0_tag(src.read_bytes(), 256, 2**31 - 1)
    bad = tmp_path / "gigantic.tif"
    bad.write_bytes(_set_ifd0_tag(buf, 257, 2**31 - 1))

    def no_asarray(*args, **kwargs):  # pragma: no cover - reached only on a regression
        raise AssertionError("tried to load the gigantic image")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", no_asarray)
    msg = _expect_format_error(bad, "declares an image of shape", "EiB", "truncated or corrupt")
    assert "(2147483647, 2147483647)" in msg


def test_compressed_size_above_memory_cap_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "deflate.tif"
    tifffile.imwrite(path, np.zeros((256, 256), np.uint16), compression="zlib")
    monkeypatch.setattr(tiff_io, "MAX_IMAGE_BYTES", 64 * 1024)  # 128 KiB declared > 64 KiB
    _expect_format_error(path, "declares an image of shape (256, 256)", "more than")


@pytest.mark.parametrize(
    ("side", "fragment"),
    [
        (9000, "declares an image of shape (9000, 9000)"),  # below Pillow's own limit
        (60000, "DecompressionBombError"),  # Pillow refuses 3.6 gigapixels itself
    ],
)
def test_png_declaring_a_huge_image_is_refused(tmp_path, side, fragment):
    src = _write_png(tmp_path / "small.png", np.zeros((16, 16), np.uint8))
    buf = bytearray(src.read_bytes())
    struct.pack_into(">II", buf, 16, side, side)  # in the IHDR of a 70-byte file
    _fix_ihdr_crc(buf)
    bad = tmp_path / "huge.png"
    bad.write_bytes(bytes(buf))
    _expect_format_error(bad, fragment)


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.05])
def test_truncated_sim_stack(tmp_path, keep):
    buf = _sim_file(tmp_path).read_bytes()
    bad = tmp_path / "cut.tif"
    bad.write_bytes(buf[: int(len(buf) * keep)])
    _expect_format_error(bad, "truncated")


def test_truncated_png(tmp_path):
    src = _write_png(tmp_path / "g.png", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    buf = src.read_bytes()
    bad = tmp_path / "cut.png"
    bad.write_bytes(buf[: len(buf) // 2])
    _expect_format_error(bad, "PNG")


def _decoder_raises(monkeypatch, exc: BaseException) -> None:
    def broken(*args, **kwargs):
        raise exc

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", broken)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (MemoryError(), ("memory",)),
        (ZeroDivisionError("division by zero"), ("not a readable TIFF", "ZeroDivisionError")),
    ],
)
def test_decoder_errors_become_format_errors(tmp_path, monkeypatch, exc, expected):
    path = _sim_file(tmp_path)
    _decoder_raises(monkeypatch, exc)
    _expect_format_error(path, *expected)


def test_keyboard_interrupt_is_not_swallowed(tmp_path, monkeypatch):
    path = _sim_file(tmp_path)
    _decoder_raises(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        read_image(path)


def test_damaged_layer_metadata_is_ignored(tmp_path):
    """Valid JSON with wrong types in the napari-sim-uq ``Info`` document: the pixels
    are still read, the unusable entries are left out."""
    doc = {
        "napari_sim_uq": {
            "dtype": "not a dtype",
            "scale": ["a", 1],
            "translate": 5,
            "axis_labels": 7,
            "metadata": [1, 2],
            "display": {"contrast_limits": "x", "colormap": "magma"},
            "layout": {"angles": [3], "phases": None},
            "tiff_axes": 12,
            "unit": 3,
        }
    }
    path = tmp_path / "odd.tif"
    tifffile.imwrite(
        path, np.ones((9, 8, 8), np.float32), imagej=True, metadata={"Info": json.dumps(doc)}
    )
    layers = napari_get_reader(str(path))(str(path))
    data, kwargs, _ = layers[0]
    assert data.shape == (9, 8, 8) and data.dtype == np.float32
    assert kwargs["scale"] == (1.0, 1.0, 1.0) and kwargs["translate"] == (0.0, 0.0, 0.0)
    assert kwargs["axis_labels"] == ("frame", "y", "x") and kwargs["colormap"] == "magma"
    assert "contrast_limits" not in kwargs and "units" not in kwargs


def test_sim_metadata_not_matching_the_file(tmp_path):
    path = tmp_path / "mismatch.tif"
    tifffile.imwrite(
        path,
        np.ones((9, 8, 8), np.float32),
        imagej=True,
        metadata={"axes": "ZYX", "sim_angles": 2, "sim_phases": 2},
    )
    _expect_format_error(path, "has 9 frames", "2 angles x 2 phases")


def test_ifd_chain_looping_back_is_refused(tmp_path):
    src = tmp_path / "two.tif"
    tifffile.imwrite(src, np.ones((2, 16, 16), np.uint16), photometric="minisblack")
    buf = bytearray(src.read_bytes())
    ranges, _ = _tiff_structure(bytes(buf))
    first, second = ranges[1], ranges[2]  # the two IFDs
    struct.pack_into("<I", buf, second[1] - 4, first[0])  # second IFD points back to the first
    bad = tmp_path / "loop.tif"
    bad.write_bytes(bytes(buf))
    _expect_format_error(bad, "loops back")
    # the training data loader probes headers itself: the same error, no endless read
    from napari_sim_uq.tasks.sim.dataset import SimStackDataset

    with pytest.raises(FileFormatError, match="loops back"):
        SimStackDataset([bad])


def test_ground_truth_files_get_the_same_checks(tmp_path):
    # the training dataset reads ground truth of any shape through tiff_io.decode_image:
    # a truncated file is a FileFormatError naming it, not a raw decoder error
    from napari_sim_uq.tasks.sim.dataset import _read_gt

    good = _sim_file(tmp_path)
    bad = tmp_path / "gt_cut.tif"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(FileFormatError, match="gt_cut.tif.*truncated"):
        _read_gt(bad)
    assert _read_gt(good).shape == (9, 32, 32)
