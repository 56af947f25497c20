"""Reading and writing images: TIFF (ImageJ/OME metadata aware) and 2D PNG.

No napari or Qt here: the napari reader and writer in ``_napari`` are thin wrappers.

Written files are ImageJ hyperstacks (Fiji opens them with the right pixel size), and they
carry everything napari needs to rebuild the layer (name, scale, translate, axis labels,
layer metadata, display settings) as JSON in the ImageJ ``Info`` property, so that
``write_image`` followed by ``read_image`` gives back the same layer.
"""

from __future__ import annotations

import json
import os
import re
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sim_uq.data.layout import Layout, infer_layout
from napari_sim_uq.errors import FileFormatError, InputError

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
    except (TypeError, ValueError, ZeroDivisionError):
        return None, None, None
    unit = int(unit_tag.value) if unit_tag is not None else 2
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
    return float(py.group(1)), float(px.group(1)), _parse_unit(pu.group(1) if pu else "um")


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _read_tiff(path: Path):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise _fail(path, "the TIFF file holds no image data")
            series = tif.series[0]
            axes = series.axes
            page = series.pages[0] if series.pages else tif.pages[0]
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
            data = series.asarray()
            ij = dict(tif.imagej_metadata or {})
            ome = tif.ome_metadata if tif.is_ome else None
            sy, sx, unit = _pixel_size_from_tags(page)
    except FileFormatError:
        raise
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as err:
        raise _fail(path, f"it is not a readable TIFF file ({err})") from None
    if ij.get("unit"):
        unit = _parse_unit(ij["unit"])
    if ome:
        oy, ox, ounit = _ome_pixel_size(ome)
        if oy is not None:
            sy, sx, unit = oy, ox, ounit
    return data, axes, ij, (sy, sx), unit


def _read_png(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LA", "PA", "HSV", "LAB"):
                raise _fail(
                    path,
                    f"it is a colour image (PNG mode {mode!r}); napari-sim-uq works on "
                    "single-channel grayscale images. Convert it to grayscale first.",
                )
            data = np.asarray(img)
    except FileFormatError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise _fail(path, f"it is not a readable PNG file ({err})") from None
    if data.ndim != 2:
        raise _fail(path, f"expected a 2D grayscale PNG, got shape {data.shape}")
    return data


def _stored_layer_info(ij: dict) -> dict:
    info = ij.get("Info")
    if not info:
        return {}
    try:
        doc = json.loads(info)
    except (TypeError, ValueError):
        return {}
    if isinstance(doc, dict) and isinstance(doc.get(INFO_KEY), dict):
        return doc[INFO_KEY]
    return {}


def read_image(
    path: str | os.PathLike, *, angles: int | None = None, phases: int | None = None
) -> ImageRecord:
    """Read a TIFF or PNG file as an :class:`ImageRecord`.

    Raises :class:`~napari_sim_uq.errors.InputError` (or its subclass ``FileFormatError``)
    with a message naming the file and the problem for missing, empty, corrupt, colour or
    NaN-containing files and for shapes that are neither a 2D image nor a SIM stack.
    """
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix not in READ_SUFFIXES:
        raise InputError(
            f"Cannot open '{path}': unsupported file type '{suffix}' "
            f"(supported: {', '.join(READ_SUFFIXES)})"
        )
    stored: dict = {}
    unit = None
    size_yx: tuple[float | None, float | None] = (None, None)
    axes = None
    if suffix in TIFF_SUFFIXES:
        data, axes, ij, size_yx, unit = _read_tiff(path)
        stored = _stored_layer_info(ij)
        angles = angles if angles is not None else _int_or_none(ij.get("sim_angles"))
        phases = phases if phases is not None else _int_or_none(ij.get("sim_phases"))
    else:
        data = _read_png(path)
    data = _check_values(data, path)
    if stored.get("dtype") and stored["dtype"] != str(data.dtype):
        data = _restore_dtype(data, np.dtype(stored["dtype"]))
    if stored.get("layout"):
        lay = stored["layout"]
        angles = lay.get("angles", angles)
        phases = lay.get("phases", phases)
    ij_axes = stored.get("tiff_axes") or axes
    layout = infer_layout(data.shape, angles=angles, phases=phases, axes=ij_axes, what=f"'{path}'")

    if data.ndim < 2 or data.shape[-1] < 2 or data.shape[-2] < 2:
        raise _fail(path, f"image is too small (shape {data.shape})")

    nd = data.ndim
    if stored.get("scale") and len(stored["scale"]) == nd:
        scale = tuple(float(s) for s in stored["scale"])
    else:
        sy, sx = size_yx
        scale = (1.0,) * (nd - 2) + ((float(sy), float(sx)) if sy and sx else (1.0, 1.0))
    if stored.get("translate") and len(stored["translate"]) == nd:
        translate = tuple(float(t) for t in stored["translate"])
    else:
        translate = (0.0,) * nd
    axis_labels = tuple(stored.get("axis_labels") or layout.axis_labels)
    if len(axis_labels) != nd:
        axis_labels = layout.axis_labels
    metadata = dict(stored.get("metadata") or {})
    sim_md = metadata.get("sim_uq")
    metadata["sim_uq"] = {
        **(sim_md if isinstance(sim_md, dict) else {}),
        "layout": layout.to_dict(),
    }
    display = {
        k: v
        for k, v in (stored.get("display") or {}).items()
        if k in ("colormap", "contrast_limits", "blending", "opacity", "visible")
    }
    if "contrast_limits" in display:
        display["contrast_limits"] = tuple(display["contrast_limits"])
    return ImageRecord(
        data=data,
        layout=layout,
        name=str(stored.get("name") or path.stem),
        path=str(path),
        scale=scale,
        translate=translate,
        axis_labels=axis_labels,
        metadata=metadata,
        unit=stored.get("unit") or unit,
        display=display,
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
        layout = None  # not a SIM layout: still writable, read back by shape
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
