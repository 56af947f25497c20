"""Reading and writing images: TIFF (ImageJ/OME metadata aware) and 2D PNG.

No napari or Qt here: the napari reader and writer in ``_napari`` are thin wrappers.

Written files are ImageJ hyperstacks (Fiji opens them with the right pixel size), and they
carry everything napari needs to rebuild the layer (name, scale, translate, axis labels,
layer metadata, display settings) as JSON in the ImageJ ``Info`` property, so that
``write_image`` followed by ``read_image`` gives back the same layer.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sim_uq.core.errors import FileFormatError, InputError
from napari_sim_uq.core.io.layout import Layout, _check_ap, infer_layout

TIFF_SUFFIXES = (".tif", ".tiff")
PNG_SUFFIXES = (".png",)
READ_SUFFIXES = TIFF_SUFFIXES + PNG_SUFFIXES

#: Key of the JSON document this package stores in the ImageJ ``Info`` property.
INFO_KEY = "napari_sim_uq"
FORMAT_VERSION = 1

# ImageJ hyperstacks hold only these types; others are converted on write and the original
# type is restored on read (exact for integers up to 2**24, float64 is rounded to float32).
_IMAGEJ_DTYPES = (np.uint8, np.uint16, np.int16, np.float32)

_UNIT_ALIASES = {
    "micron": "um",
    "microns": "um",
    "micrometer": "um",
    "\\u00B5m": "um",
    "µm": "um",
    "μm": "um",
}


@dataclass
class ImageRecord:
    """An image read from disk, with what napari needs to show it."""

    data: np.ndarray
    layout: Layout
    name: str
    path: str
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    axis_labels: tuple[str, ...]
    metadata: dict = field(default_factory=dict)
    unit: str | None = None
    #: display settings restored from a file written by this package (colormap, ...)
    display: dict = field(default_factory=dict)

    def layer_kwargs(self) -> dict:
        kwargs = {
            "name": self.name,
            "scale": self.scale,
            "translate": self.translate,
            "axis_labels": self.axis_labels,
            "metadata": self.metadata,
        }
        kwargs.update(self.display)
        return kwargs


def _fail(path: Path, problem: str) -> FileFormatError:
    return FileFormatError(f"Cannot open '{path}': {problem}")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(type(obj).__name__)


def to_jsonable(metadata: dict, what: str = "metadata") -> dict:
    """Metadata as plain JSON types; entries JSON cannot hold are dropped with a warning."""
    out = {}
    for key, value in metadata.items():
        try:
            out[str(key)] = json.loads(json.dumps(value, default=_json_default))
        except (TypeError, ValueError):
            warnings.warn(
                f"{what}: entry {key!r} of type {type(value).__name__} cannot be stored "
                "in a TIFF file and was left out",
                stacklevel=2,
            )
    return out


# --------------------------------------------------------------------------- reading

#: The most pixel data (in bytes) :func:`read_image` loads from one file; a file declaring
#: more is refused before anything is allocated. ``None``: half of this machine's physical
#: memory (4 GiB where that cannot be found out).
MAX_IMAGE_BYTES: int | None = None

# Deflate (PNG, TIFF "zlib") cannot shrink data by more than 1032:1, so a deflated file
# declaring more pixel bytes than 1032 times its size cannot hold them.
_DEFLATE_MAX_RATIO = 1032


def _max_image_bytes() -> tuple[int, str]:
    """(the most bytes of pixels to load, where that limit comes from)."""
    if MAX_IMAGE_BYTES is not None:
        return int(MAX_IMAGE_BYTES), "napari_sim_uq.core.io.tiff_io.MAX_IMAGE_BYTES"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on POSIX
        total = 0
    if total > 0:
        return total // 2, "half of this machine's memory"
    return 4 * 2**30, "the limit where this machine's memory is unknown"


def _format_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} EiB"


def _check_declared_size(
    path: Path, shape: tuple[int, ...], itemsize: int, stored_min: int | None
) -> None:
    """Refuse an image whose declared size cannot be real, before allocating it.

    ``stored_min`` is the fewest bytes of the file the pixels need (uncompressed data),
    or None when compressed data could be any size.
    """
    nbytes = math.prod(shape) * itemsize
    declares = f"it declares an image of shape {shape} ({_format_bytes(nbytes)})"
    file_size = path.stat().st_size
    if stored_min is not None and stored_min > file_size:
        raise _fail(
            path,
            f"{declares}, but the file has only {_format_bytes(file_size)}: "
            "it looks truncated or corrupt",
        )
    cap, source = _max_image_bytes()
    if nbytes > cap:
        raise _fail(
            path,
            f"{declares}, more than the {_format_bytes(cap)} this reader loads at once "
            f"({source}): it looks truncated or corrupt, or is too large to open in one "
            "piece",
        )


def _error_name(err: BaseException) -> str:
    cls = type(err)
    module = cls.__module__.split(".")[0]
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"Cannot open '{path}': file not found")
    if path.is_dir():
        raise InputError(f"Cannot open '{path}': it is a folder, not an image file")
    if path.stat().st_size == 0:
        raise _fail(path, "the file is empty (0 bytes)")


def _check_values(data: np.ndarray, path: Path) -> np.ndarray:
    if data.dtype == bool:
        return data.astype(np.uint8)
    if data.dtype.kind == "c":
        raise _fail(path, f"complex-valued data ({data.dtype}) is not supported")
    if data.dtype.kind not in "uif":
        raise _fail(path, f"unsupported data type {data.dtype}")
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            n_nan = int(np.isnan(data).sum())
            n_inf = int(data.size - finite.sum()) - n_nan
            first = tuple(int(i) for i in np.argwhere(~finite)[0])
            raise _fail(
                path,
                f"it contains {n_nan} NaN and {n_inf} infinite pixel values (first at index "
                f"{first}). Replace them (e.g. with 0 or the background level) before "
                "reconstruction; uncertainty maps cannot be computed from NaN input.",
            )
    return data


def _parse_unit(unit: str | None) -> str | None:
    if not unit:
        return None
    unit = str(unit).strip()
    return _UNIT_ALIASES.get(unit, unit)


def _pixel_size_from_tags(page) -> tuple[float | None, float | None, str | None]:
    """(y size, x size, unit) from the TIFF resolution tags, if they mean something."""
    tags = page.tags
    xres, yres, unit_tag = (
        tags.get("XResolution"),
        tags.get("YResolution"),
        tags.get("ResolutionUnit"),
    )
    if xres is None or yres is None:
        return None, None, None
    try:
        xn, xd = xres.value
        yn, yd = yres.value
        sx, sy = xd / xn, yd / yn
        unit = int(unit_tag.value) if unit_tag is not None else 2
    except (TypeError, ValueError, ZeroDivisionError):
        return None, None, None
    if not (math.isfinite(sx) and math.isfinite(sy) and sx > 0 and sy > 0):
        return None, None, None
    if unit == 3:  # centimetre
        return sy * 1e4, sx * 1e4, "um"
    if unit == 1:  # no absolute unit (ImageJ files carry theirs in the description)
        return sy, sx, None
    return None, None, None  # inch: almost always a meaningless 72 dpi default


def _ome_pixel_size(ome_xml: str | None) -> tuple[float | None, float | None, str | None]:
    if not ome_xml:
        return None, None, None
    px = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', ome_xml)
    py = re.search(r'PhysicalSizeY="([0-9.eE+-]+)"', ome_xml)
    pu = re.search(r'PhysicalSizeXUnit="([^"]+)"', ome_xml)
    if not (px and py):
        return None, None, None
    try:
        sy, sx = float(py.group(1)), float(px.group(1))
    except ValueError:
        return None, None, None
    return sy, sx, _parse_unit(pu.group(1) if pu else "um")


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _declared_planes(tif, series) -> int | None:
    """Number of planes the file's own description declares, when tifffile could not
    build the series it describes (a truncated file, or damaged metadata)."""
    if tif.is_imagej and series.kind != "imagej":
        return _int_or_none((tif.imagej_metadata or {}).get("images"))
    shaped = tif.shaped_metadata if series.kind != "shaped" else None
    if shaped and isinstance(shaped[0], dict):
        shape = shaped[0].get("shape")
        if isinstance(shape, (list, tuple)) and len(shape) >= 2:
            ints = [_int_or_none(s) for s in shape[:-2]]
            if all(i is not None for i in ints):
                return math.prod(ints)
    return None


def _check_tiff_size(path: Path, tif, series) -> None:
    """Refuse truncated files and gigantic declared images before reading any pixels."""
    shape = tuple(int(s) for s in series.shape)
    page = series.keyframe
    file_size = path.stat().st_size
    planes = math.prod(shape[:-2]) if len(shape) > 2 else 1
    declared = _declared_planes(tif, series)
    if declared is not None and declared > planes:
        raise _fail(
            path,
            f"its metadata declares {declared} image planes, but only {planes} could be "
            "found: it looks truncated or corrupt",
        )
    compression = int(page.compression)
    uncompressed = compression == 1
    stored_min = math.prod(shape) * int(page.bitspersample) // 8
    if compression in (8, 32946):  # deflate
        stored_min //= _DEFLATE_MAX_RATIO
    elif not uncompressed:
        stored_min = None
    _check_declared_size(path, shape, np.dtype(series.dtype).itemsize, stored_min)
    if uncompressed and series.dataoffset is not None:
        ends = [int(series.dataoffset) + stored_min]
    else:
        ends = [
            int(offset) + int(count)
            for p in series.pages
            if p is not None
            for offset, count in zip(p.dataoffsets, p.databytecounts, strict=False)
            if count
        ]
    if ends and max(ends) > file_size:
        raise _fail(
            path,
            f"its pixel data of shape {shape} runs to byte {max(ends)}, but the file has "
            f"only {file_size} bytes: it looks truncated",
        )


def check_ifd_chain(path: Path) -> None:
    """Walk the file's chain of image file directories (IFDs) before tifffile does.

    In a damaged file the chain can loop back on itself, and tifffile then reads the same
    pages over and over without end.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(16)
        if head[:2] not in (b"II", b"MM") or len(head) < 8:
            return  # not a TIFF file at all: tifffile says so
        order = "<" if head[:2] == b"II" else ">"
        version = struct.unpack(order + "H", head[2:4])[0]
        if version == 42:  # classic TIFF
            count_fmt, offset_fmt, entry_size = order + "H", order + "I", 12
            offset = struct.unpack(offset_fmt, head[4:8])[0]
        elif version == 43 and len(head) == 16:  # BigTIFF
            count_fmt, offset_fmt, entry_size = order + "Q", order + "Q", 20
            offset = struct.unpack(offset_fmt, head[8:16])[0]
        else:
            return  # tifffile reports the unknown version
        count_size, offset_size = struct.calcsize(count_fmt), struct.calcsize(offset_fmt)
        seen = set()
        while 0 < offset < size:
            if offset in seen:
                raise _fail(
                    path,
                    f"its chain of image directories loops back to byte {offset}: "
                    "the file is corrupt",
                )
            seen.add(offset)
            fh.seek(offset)
            raw = fh.read(count_size)
            if len(raw) < count_size:
                return  # truncated: tifffile (or the size checks) report it
            next_at = offset + count_size + struct.unpack(count_fmt, raw)[0] * entry_size
            if next_at + offset_size > size:
                return
            fh.seek(next_at)
            offset = struct.unpack(offset_fmt, fh.read(offset_size))[0]


def _read_tiff(path: Path):
    import tifffile

    check_ifd_chain(path)
    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise _fail(path, "the TIFF file holds no image data")
        series = tif.series[0]
        axes = series.axes
        page = series.keyframe
        # Interleaved samples (..., Y, X, S) are a colour image. Separate sample planes
        # (S, Y, X) are what tifffile writes by default for a float (3, H, W) or
        # (4, H, W) stack, so those are read as an ordinary stack axis.
        if axes.endswith("S"):
            raise _fail(
                path,
                f"it is a colour (RGB) image with shape {series.shape}; napari-sim-uq "
                "works on single-channel intensity images. Convert it to grayscale, or "
                "save the channels as separate files.",
            )
        _check_tiff_size(path, tif, series)
        data = series.asarray()
        ij = dict(tif.imagej_metadata or {})
        ome = tif.ome_metadata if tif.is_ome else None
        sy, sx, unit = _pixel_size_from_tags(page)
    if ij.get("unit"):
        unit = _parse_unit(ij["unit"])
    if ome:
        oy, ox, ounit = _ome_pixel_size(ome)
        if oy is not None:
            sy, sx, unit = oy, ox, ounit
    return data, axes, ij, (sy, sx), unit


# bytes per pixel of the array Pillow makes from each grayscale PNG mode
_PNG_ITEMSIZE = {"1": 1, "L": 1, "I;16": 2, "I;16B": 2, "I;16L": 2}


def _read_png(path: Path):
    from PIL import Image

    with Image.open(path) as img:
        mode = img.mode
        if mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LA", "PA", "HSV", "LAB"):
            raise _fail(
                path,
                f"it is a colour image (PNG mode {mode!r}); napari-sim-uq works on "
                "single-channel grayscale images. Convert it to grayscale first.",
            )
        width, height = img.size
        # at least 1 bit per pixel goes through deflate, which shrinks by at most 1032:1
        raw_min = height * ((width + 7) // 8) // _DEFLATE_MAX_RATIO
        _check_declared_size(path, (height, width), _PNG_ITEMSIZE.get(mode, 4), raw_min)
        data = np.asarray(img)
    if data.ndim != 2:
        raise _fail(path, f"expected a 2D grayscale PNG, got shape {data.shape}")
    return data


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """The pixels of a TIFF or PNG file as stored (any shape; no layout inference, no NaN
    check), with the same checks and clear errors as :func:`read_image` (missing, damaged,
    truncated, colour or implausibly large files)."""
    path = Path(path)
    _check_file(path)
    return _decode(path)[0]


def _decode(path: Path):
    """(data, tifffile axes, ImageJ metadata, (y, x) pixel size, unit) of a TIFF or PNG.

    The one place where whatever the decoders (tifffile, Pillow, zlib, ...) raise on a
    damaged file becomes a :class:`FileFormatError` naming the file.
    """
    is_tiff = path.suffix.lower() in TIFF_SUFFIXES
    try:
        if is_tiff:
            return _read_tiff(path)
        return _read_png(path), None, {}, (None, None), None
    except FileFormatError:
        raise
    except MemoryError:
        raise _fail(
            path,
            "there is not enough memory to load it; the file is too large for this "
            "machine, or truncated or corrupt",
        ) from None
    except PermissionError:
        raise InputError(f"Cannot open '{path}': permission denied") from None
    except Exception as err:  # decoders raise anything at all on a damaged file
        kind = "TIFF" if is_tiff else "PNG"
        raise _fail(path, f"it is not a readable {kind} file ({_error_name(err)}: {err})") from err


def _stored_layer_info(ij: dict) -> dict:
    info = ij.get("Info")
    if not info:
        return {}
    try:
        doc = json.loads(info)
    except (TypeError, ValueError, RecursionError):
        return {}
    if isinstance(doc, dict) and isinstance(doc.get(INFO_KEY), dict):
        return doc[INFO_KEY]
    return {}


def _stored_floats(value, n: int) -> tuple[float, ...] | None:
    """``value`` as ``n`` finite floats, or None if it is not that (damaged metadata)."""
    if not isinstance(value, (list, tuple)) or len(value) != n:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if all(math.isfinite(v) for v in out) else None


def _stored_dtype(value) -> np.dtype | None:
    try:
        dtype = np.dtype(value) if isinstance(value, str) else None
    except TypeError:
        return None
    return dtype if dtype is not None and dtype.kind in "biuf" else None


def _stored_display(value) -> dict:
    if not isinstance(value, dict):
        return {}
    display = {
        k: v
        for k, v in value.items()
        if k in ("colormap", "blending", "opacity", "visible", "contrast_limits")
    }
    if "contrast_limits" in display:
        limits = _stored_floats(display.pop("contrast_limits"), 2)
        if limits is not None:
            display["contrast_limits"] = limits
    return display


def read_image(
    path: str | os.PathLike, *, angles: int | None = None, phases: int | None = None
) -> ImageRecord:
    """Read a TIFF or PNG file as an :class:`ImageRecord`.

    Raises :class:`~napari_sim_uq.core.errors.InputError` with a message naming the file and the
    problem: for a missing file, and as the subclass ``FileFormatError`` for every file that
    cannot be read (empty, truncated or corrupt, colour, NaN-containing, declaring an
    implausibly large image, or with a shape that is neither a 2D image nor a SIM stack).
    Damaged napari-sim-uq layer metadata (scale, display settings, ...) is ignored.
    """
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix not in READ_SUFFIXES:
        raise InputError(
            f"Cannot open '{path}': unsupported file type '{suffix}' "
            f"(supported: {', '.join(READ_SUFFIXES)})"
        )
    _check_ap(angles, phases, "read_image")
    data, axes, ij, size_yx, unit = _decode(path)
    if data.size == 0:
        raise _fail(path, f"it holds no pixels (shape {data.shape})")
    stored = _stored_layer_info(ij)
    if angles is None:
        angles = _int_or_none(ij.get("sim_angles"))
    if phases is None:
        phases = _int_or_none(ij.get("sim_phases"))
    data = _check_values(data, path)
    dtype = _stored_dtype(stored.get("dtype"))
    if dtype is not None and dtype != data.dtype:
        data = _restore_dtype(data, dtype)
        if dtype.kind == "f":  # damaged metadata could name a type too small for the data
            data = _check_values(data, path)
    lay = stored.get("layout")
    if isinstance(lay, dict):
        angles = _int_or_none(lay.get("angles", angles))
        phases = _int_or_none(lay.get("phases", phases))
    ij_axes = stored.get("tiff_axes") or axes
    try:
        if isinstance(lay, dict) and lay.get("kind") == "stack" and data.ndim == 3:
            layout = Layout("stack")  # written by this package: a stack of non-SIM planes
        else:
            layout = infer_layout(
                data.shape,
                angles=angles,
                phases=phases,
                axes=ij_axes if isinstance(ij_axes, str) else None,
                what=f"Cannot open '{path}'",
            )
    except InputError as err:  # a file whose shape or SIM metadata does not fit
        raise FileFormatError(str(err)) from None

    if data.ndim < 2 or data.shape[-1] < 2 or data.shape[-2] < 2:
        raise _fail(path, f"image is too small (shape {data.shape})")

    nd = data.ndim
    scale = _stored_floats(stored.get("scale"), nd)
    if scale is None:
        sy, sx = size_yx
        scale = (1.0,) * (nd - 2) + ((float(sy), float(sx)) if sy and sx else (1.0, 1.0))
    translate = _stored_floats(stored.get("translate"), nd) or (0.0,) * nd
    axis_labels = stored.get("axis_labels")
    if not (
        isinstance(axis_labels, list)
        and len(axis_labels) == nd
        and all(isinstance(a, str) for a in axis_labels)
    ):
        axis_labels = layout.axis_labels
    stored_md = stored.get("metadata")
    metadata = dict(stored_md) if isinstance(stored_md, dict) else {}
    sim_md = metadata.get("sim_uq")
    metadata["sim_uq"] = {
        **(sim_md if isinstance(sim_md, dict) else {}),
        "layout": layout.to_dict(),
    }
    stored_unit = stored.get("unit")
    return ImageRecord(
        data=data,
        layout=layout,
        name=str(stored.get("name") or path.stem),
        path=str(path),
        scale=scale,
        translate=translate,
        axis_labels=tuple(axis_labels),
        metadata=metadata,
        unit=stored_unit if stored_unit and isinstance(stored_unit, str) else unit,
        display=_stored_display(stored.get("display")),
    )


def _restore_dtype(data: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "uib":
        info = np.iinfo(dtype) if dtype.kind != "b" else None
        rounded = np.rint(data)
        if info is not None:
            rounded = np.clip(rounded, info.min, info.max)
        return rounded.astype(dtype)
    return data.astype(dtype)


# --------------------------------------------------------------------------- writing


def _imagej_data(data: np.ndarray) -> np.ndarray:
    if data.dtype in _IMAGEJ_DTYPES:
        return data
    if data.dtype == bool or data.dtype == np.int8:
        return data.astype(np.uint8 if data.dtype == bool else np.int16)
    if data.dtype.kind in "uif":
        return data.astype(np.float32)
    raise InputError(f"cannot write data of type {data.dtype} to TIFF")


_IMAGEJ_AXES = {2: "YX", 3: "ZYX", 4: "TZYX"}


def _imagej_axes(layout: Layout | None, ndim: int) -> str:
    if layout is not None and layout.kind == "sim_ap":
        return "ZCYX"  # angle as slices, phase as channels
    if ndim in _IMAGEJ_AXES:
        return _IMAGEJ_AXES[ndim]
    raise InputError(f"cannot write a {ndim}D array to TIFF (2D-4D are supported)")


def atomic_write(path: Path, write, *, overwrite: bool) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one step.

    An existing file at ``path`` is never touched unless ``overwrite`` is true, and a write
    that fails half-way leaves it as it was.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"'{path}' already exists; not overwriting it (pass overwrite=True, or "
            "--overwrite on the command line, to replace it)"
        )
    if path.is_dir():
        raise InputError(f"'{path}' is a folder; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name in the same folder (same file system, so the rename is atomic); created
    # by ``write`` itself so that it gets the usual permissions
    tmp = str(path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part"))
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_image(
    path: str | os.PathLike,
    data: np.ndarray,
    *,
    name: str | None = None,
    scale: tuple[float, ...] | None = None,
    translate: tuple[float, ...] | None = None,
    axis_labels: tuple[str, ...] | None = None,
    metadata: dict | None = None,
    unit: str | None = None,
    display: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``data`` to an ImageJ-compatible TIFF that :func:`read_image` reads back.

    The pixel size (last two entries of ``scale``) goes into the TIFF resolution tags and
    the ImageJ unit; the whole layer description (name, scale, translate, axis labels,
    metadata as JSON) goes into the ImageJ ``Info`` property. Writes are atomic, and an
    existing file is only replaced with ``overwrite=True``.
    """
    import tifffile

    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        raise InputError(f"'{path}': can only write TIFF files (.tif, .tiff)")
    data = np.asarray(data)
    if data.size == 0:
        raise InputError(f"'{path}': refusing to write an empty array (shape {data.shape})")
    nd = data.ndim
    if not 2 <= nd <= 4:
        raise InputError(f"'{path}': can write 2D to 4D images, got shape {data.shape}")
    unit = _parse_unit(unit)  # "micrometer" (napari/pint) -> "um" (ImageJ)
    md = dict(metadata or {})
    sim_md = md.get("sim_uq") if isinstance(md.get("sim_uq"), dict) else {}
    lay_d = sim_md.get("layout") if isinstance(sim_md.get("layout"), dict) else {}
    try:
        layout = infer_layout(data.shape, angles=lay_d.get("angles"), phases=lay_d.get("phases"))
    except InputError:
        # not a SIM layout: a 3D array is stored as a plain stack of planes (read back as
        # such), a 4D one by shape
        layout = Layout("stack") if nd == 3 else None
    scale = tuple(float(s) for s in (scale if scale is not None else (1.0,) * nd))
    translate = tuple(float(t) for t in (translate if translate is not None else (0.0,) * nd))
    if len(scale) != nd or len(translate) != nd:
        raise InputError(f"'{path}': scale/translate must have {nd} entries")
    out = _imagej_data(data)
    tiff_axes = _imagej_axes(layout, nd)
    doc = {
        "format_version": FORMAT_VERSION,
        "name": name or path.stem,
        "dtype": str(data.dtype),
        "shape": list(data.shape),
        "scale": list(scale),
        "translate": list(translate),
        "axis_labels": list(axis_labels) if axis_labels is not None else None,
        "unit": unit,
        "tiff_axes": tiff_axes,
        "layout": layout.to_dict() if layout is not None else None,
        "metadata": to_jsonable(md, what=f"'{path}' layer metadata"),
        "display": to_jsonable(dict(display or {}), what=f"'{path}' display settings"),
    }
    ij_meta: dict[str, Any] = {"axes": tiff_axes, "Info": json.dumps({INFO_KEY: doc})}
    if unit:
        ij_meta["unit"] = unit
    if layout is not None and layout.is_sim:
        ij_meta["sim_angles"] = layout.angles
        ij_meta["sim_phases"] = layout.phases
    sy, sx = scale[-2], scale[-1]

    def _write(tmp: str) -> None:
        tifffile.imwrite(tmp, out, imagej=True, resolution=(1.0 / sx, 1.0 / sy), metadata=ij_meta)

    return atomic_write(path, _write, overwrite=overwrite)
