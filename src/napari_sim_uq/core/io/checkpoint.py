"""Model checkpoints: saved atomically, loaded without ever executing code.

A checkpoint file is written with :func:`torch.save` and read with
``torch.load(..., weights_only=True)``, so it may hold only tensors and plain Python values
(dicts, lists, tuples, strings, numbers, bools, None). :func:`save_checkpoint` converts NumPy
values and refuses anything else, naming the entry, so every file it writes can be read
back. Files are written to a temporary name and renamed into place, so an interrupted save
(crash, Stop, full disk) leaves the previous checkpoint as it was.

The stored object is one dict::

    {
        "format": "napari-sim-uq checkpoint",   # marker, tells our files from others
        "format_version": 1,                     # layout of this dict
        "package_version": "0.1.0",              # napari-sim-uq that created it
        "model_type": "sim_uq_net",              # copy of config["model_type"]
        "config": {...},                         # full config, as JSON types
        "config_hash": "0123456789ab",           # config_hash(config)
        "model_state": {name: Tensor},           # model.state_dict()
        "optimizer_state": {...} or None,        # optimizer.state_dict(), for resuming
        "scheduler_state": {...} or None,        # lr scheduler state_dict(), for resuming
        "normalization": {...},                  # how inputs were normalised
        "sigma_scale": {"emitter": 1.0, ...},    # std calibration factors (missing = 1.0)
        "train_state": {"epoch": .., "step": .., "best_metric": ..},
        "extra": {...},                          # anything else the caller stores
    }

No Qt or napari here.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import pickle
import re
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_sim_uq._version import __version__
from napari_sim_uq.core.errors import FileFormatError, InputError
from napari_sim_uq.core.io.tiff_io import atomic_write

#: Value of the ``"format"`` entry that marks a napari-sim-uq checkpoint.
FORMAT_MARKER = "napari-sim-uq checkpoint"
#: Layout version of the stored dict; files with a larger number need a newer package.
FORMAT_VERSION = 1

_REQUIRED_KEYS = (
    "format_version",
    "package_version",
    "model_type",
    "config",
    "config_hash",
    "model_state",
    "optimizer_state",
    "scheduler_state",
    "normalization",
    "sigma_scale",
    "train_state",
    "extra",
)

# scalar types torch.load(weights_only=True) reads back as they are
_SCALAR_TYPES = (str, bool, int, float, complex, bytes, bytearray, type(None))


# --------------------------------------------------------------------------- converting


class _Unstorable(Exception):
    """An entry that a checkpoint cannot hold (turned into InputError with the file name)."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where} {problem}")


def _type_name(value: Any) -> str:
    cls = type(value)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _scalar(value: Any) -> Any:
    """Plain Python value of a (subclassed) builtin scalar, e.g. an IntEnum -> int."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, complex):
        return complex(value)
    return value


def _key(key: Any, where: str) -> Any:
    if isinstance(key, np.generic):
        key = key.item()
    if key is None or isinstance(key, (str, int, float, complex)):
        return _scalar(key)
    if isinstance(key, tuple):
        return tuple(_key(k, where) for k in key)
    raise _Unstorable(
        where, f"has a key of type {_type_name(key)} ({key!r}); keys must be strings or numbers"
    )


def _array_to_tensor(arr: np.ndarray, where: str) -> torch.Tensor:
    if arr.dtype.kind not in "biufc":
        raise _Unstorable(where, f"is a NumPy array of dtype {arr.dtype}, which cannot be stored")
    native = np.array(arr, dtype=arr.dtype.newbyteorder("="), order="C", copy=True)
    try:
        return torch.from_numpy(native)
    except TypeError as exc:
        raise _Unstorable(
            where, f"is a NumPy array of dtype {arr.dtype}, which torch does not support"
        ) from exc


def _convert(value: Any, where: str, mode: str, seen: tuple[int, ...] = ()) -> Any:
    """``value`` as types that ``torch.load(weights_only=True)`` reads.

    mode ``"json"``: JSON types only (NumPy -> Python, tuples -> lists, paths -> strings).
    mode ``"meta"``: NumPy scalars and arrays -> Python scalars and lists, 0-d tensors ->
    Python scalars (so ``best_metric=loss`` stores a float), other tensors kept.
    mode ``"state"``: NumPy scalars -> Python scalars, NumPy arrays -> tensors.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, _SCALAR_TYPES):
        if mode == "json" and isinstance(value, (complex, bytes, bytearray)):
            raise _Unstorable(where, f"is {_type_name(value)}, which JSON cannot hold")
        return _scalar(value)
    if isinstance(value, np.ndarray):
        if mode == "state":
            return _array_to_tensor(value, where)
        if value.dtype.kind not in "biuf":
            raise _Unstorable(
                where, f"is a NumPy array of dtype {value.dtype}, which cannot be stored here"
            )
        return value.tolist()
    if isinstance(value, torch.Tensor):
        if mode == "json":
            raise _Unstorable(
                where,
                "is a torch tensor; the config must hold plain JSON "
                "values (use .item() or .tolist())",
            )
        if mode == "meta" and value.ndim == 0:
            return value.item()
        tensor = value.detach()
        if type(tensor) is not torch.Tensor:
            tensor = tensor.as_subclass(torch.Tensor)
        return tensor
    if isinstance(value, os.PathLike) and mode == "json":
        return os.fspath(value)
    if mode != "json" and isinstance(value, (torch.dtype, torch.device)):
        return value

    if id(value) in seen:
        raise _Unstorable(where, "contains itself")
    seen = (*seen, id(value))
    if isinstance(value, Mapping):
        out = collections.OrderedDict() if isinstance(value, collections.OrderedDict) else {}
        for k, v in value.items():
            sub = f"{where}[{k!r}]"
            out[_key(k, sub)] = _convert(v, sub, mode, seen)
        meta = getattr(value, "_metadata", None)  # module versions in a state_dict
        if isinstance(out, collections.OrderedDict) and meta is not None and mode != "json":
            out._metadata = _convert(meta, f"{where}._metadata", mode, seen)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_convert(v, f"{where}[{i}]", mode, seen) for i, v in enumerate(value)]
        if isinstance(value, (set, frozenset)):
            if mode != "json":
                return set(items)
            try:  # a fixed order, so that the config hash does not change between runs
                return sorted(items)
            except TypeError:
                raise _Unstorable(where, "is a set of mixed types; use a list") from None
        if mode == "json" or isinstance(value, list):
            return items
        return torch.Size(items) if isinstance(value, torch.Size) else tuple(items)
    raise _Unstorable(
        where,
        f"is a {_type_name(value)}, which a checkpoint cannot hold (allowed: tensors, "
        "numbers, strings, bools, None, and lists, tuples and dicts of these)",
    )


def _json_config(config: Any, where: str = "config") -> dict:
    if not isinstance(config, Mapping):
        raise _Unstorable(where, f"must be a dict, got {_type_name(config)}")
    plain = _convert(config, where, "json")
    try:
        # the JSON form itself: tuples -> lists, number keys -> strings, as JSON readers see it
        return json.loads(json.dumps(plain))
    except (TypeError, ValueError) as exc:
        raise _Unstorable(where, f"cannot be written as JSON: {exc}") from exc


def _canonical_json(config: dict) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(config: Mapping) -> str:
    """First 12 hex digits of the SHA-256 of the config's canonical JSON.

    Canonical: sorted keys, no spaces, ASCII; NumPy values count as the Python values they
    stand for, and tuples as lists, so the hash of a config equals the hash of the config
    read back from a checkpoint.
    """
    try:
        plain = _json_config(config)
    except _Unstorable as exc:
        raise InputError(f"Cannot hash the config: {exc}") from None
    return hashlib.sha256(_canonical_json(plain).encode("ascii")).hexdigest()[:12]


def _sigma_scale(sigma_scale: Any, where: str = "sigma_scale") -> dict[str, float]:
    if sigma_scale is None:
        return {}
    if not isinstance(sigma_scale, Mapping):
        raise _Unstorable(
            where, f"must be a dict of names to numbers, got {_type_name(sigma_scale)}"
        )
    out = {}
    for name, value in sigma_scale.items():
        sub = f"{where}[{name!r}]"
        if isinstance(name, np.str_):
            name = str(name)
        if not isinstance(name, str):
            raise _Unstorable(sub, "has a key that is not a string")
        if isinstance(value, np.generic) or (
            isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0
        ):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Unstorable(sub, f"must be a number, got {_type_name(value)}")
        value = float(value)
        if not (math.isfinite(value) and value > 0):
            raise _Unstorable(sub, f"must be a finite number > 0, got {value}")
        out[str.__str__(name)] = value
    return out


def _as_state(obj: Any, where: str, *, optional: bool) -> Any:
    """A state dict, taken from ``obj.state_dict()`` if given a module/optimizer/scheduler."""
    if obj is None and optional:
        return None
    if not isinstance(obj, Mapping) and callable(getattr(obj, "state_dict", None)):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise _Unstorable(where, f"must be a state_dict (a dict), got {_type_name(obj)}")
    return _convert(obj, where, "state")


def _payload(
    *,
    model_state: Any,
    config: Any,
    optimizer_state: Any,
    scheduler_state: Any,
    normalization: Any,
    sigma_scale: Any,
    train_state: Any,
    extra: Any,
    package_version: str,
) -> dict:
    cfg = _json_config(config)
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or not model_type.strip():
        raise _Unstorable(
            "config['model_type']",
            f"must be a non-empty string naming the model (e.g. 'sim_uq_net'), got {model_type!r}",
        )
    model = _as_state(model_state, "model_state", optional=False)
    if any(not isinstance(k, str) for k in model):
        raise _Unstorable("model_state", "must have parameter names (strings) as keys")
    sections = {}
    for name, value in (("normalization", normalization), ("train_state", train_state)):
        if value is not None and not isinstance(value, Mapping):
            raise _Unstorable(name, f"must be a dict, got {_type_name(value)}")
        sections[name] = _convert(dict(value or {}), name, "meta")
    if extra is not None and not isinstance(extra, Mapping):
        raise _Unstorable("extra", f"must be a dict, got {_type_name(extra)}")
    return {
        "format": FORMAT_MARKER,
        "format_version": FORMAT_VERSION,
        "package_version": str(package_version),
        "model_type": model_type,
        "config": cfg,
        "config_hash": hashlib.sha256(_canonical_json(cfg).encode("ascii")).hexdigest()[:12],
        "model_state": model,
        "optimizer_state": _as_state(optimizer_state, "optimizer_state", optional=True),
        "scheduler_state": _as_state(scheduler_state, "scheduler_state", optional=True),
        "normalization": sections["normalization"],
        "sigma_scale": _sigma_scale(sigma_scale),
        "train_state": sections["train_state"],
        "extra": _convert(dict(extra or {}), "extra", "state"),
    }


# --------------------------------------------------------------------------- saving


def _write(path: Path, payload: dict, overwrite: bool) -> Path:
    def write(tmp: str) -> None:
        torch.save(payload, tmp)
        # on disk before the rename, so a power cut cannot leave an empty file in its place
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())

    return atomic_write(path, write, overwrite=overwrite)


def _save(path: str | os.PathLike, overwrite: bool, **fields: Any) -> Path:
    path = Path(path)
    try:
        payload = _payload(**fields)
    except _Unstorable as exc:
        raise InputError(f"Cannot save checkpoint '{path}': {exc}") from None
    return _write(path, payload, overwrite)


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model_state: Mapping[str, torch.Tensor],
    config: Mapping,
    optimizer_state: Mapping | None = None,
    scheduler_state: Mapping | None = None,
    normalization: Mapping | None = None,
    sigma_scale: Mapping[str, float] | None = None,
    train_state: Mapping | None = None,
    extra: Mapping | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a checkpoint atomically; returns its path.

    ``model_state``, ``optimizer_state`` and ``scheduler_state`` are ``state_dict()``s (a
    module, optimizer or scheduler is also accepted and its ``state_dict()`` taken).
    ``config`` must be JSON-serialisable and name the model in ``config["model_type"]``.
    ``train_state`` conventionally holds ``epoch``, ``step`` and ``best_metric``;
    ``sigma_scale`` maps output names to std calibration factors (finite, > 0).

    NumPy values are converted (to Python values in config, normalization and train_state,
    to tensors elsewhere); any other object raises :class:`InputError` naming its entry. An
    existing file is replaced only if ``overwrite`` (:class:`FileExistsError` otherwise),
    and a save that fails half-way leaves it untouched.
    """
    return _save(
        path,
        overwrite,
        model_state=model_state,
        config=config,
        optimizer_state=optimizer_state,
        scheduler_state=scheduler_state,
        normalization=normalization,
        sigma_scale=sigma_scale,
        train_state=train_state,
        extra=extra,
        package_version=__version__,
    )


# --------------------------------------------------------------------------- loading


@dataclass
class Checkpoint:
    """A checkpoint as read by :func:`load_checkpoint` (see the module doc for the fields)."""

    model_state: dict[str, torch.Tensor]
    config: dict
    optimizer_state: dict | None = None
    scheduler_state: dict | None = None
    normalization: dict = field(default_factory=dict)
    sigma_scale: dict[str, float] = field(default_factory=dict)
    train_state: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    package_version: str = __version__
    format_version: int = FORMAT_VERSION
    config_hash: str = ""
    path: Path | None = None

    def __post_init__(self) -> None:
        if not self.config_hash:
            self.config_hash = config_hash(self.config)

    @property
    def model_type(self) -> str:
        return self.config["model_type"]

    @property
    def epoch(self) -> int | None:
        return self.train_state.get("epoch")

    @property
    def step(self) -> int | None:
        return self.train_state.get("step")

    def with_sigma_scale(self, sigma_scale: Mapping[str, float]) -> Checkpoint:
        """A copy with ``sigma_scale`` replacing the stored one (everything else shared)."""
        try:
            scale = _sigma_scale(sigma_scale)
        except _Unstorable as exc:
            raise InputError(f"Invalid sigma-scale: {exc}") from None
        return dataclasses.replace(self, sigma_scale=scale)

    def save(self, path: str | os.PathLike | None = None, *, overwrite: bool = True) -> Path:
        """Write this checkpoint (to ``path``, default where it was read from), atomically.

        The package version it records stays the one that created the checkpoint.
        """
        target = path if path is not None else self.path
        if target is None:
            raise InputError("This checkpoint was not read from a file; give a path to save it")
        return _save(
            target,
            overwrite,
            model_state=self.model_state,
            config=self.config,
            optimizer_state=self.optimizer_state,
            scheduler_state=self.scheduler_state,
            normalization=self.normalization,
            sigma_scale=self.sigma_scale,
            train_state=self.train_state,
            extra=self.extra,
            package_version=self.package_version,
        )

    def layer_metadata(self) -> dict:
        """What napari layers made with this checkpoint record about the model (JSON types)."""
        return {
            "model_type": self.model_type,
            "config_hash": self.config_hash,
            "checkpoint": None if self.path is None else str(self.path),
            "package_version": self.package_version,
            "epoch": self.epoch,
            "sigma_scale": dict(self.sigma_scale),
        }


def _damaged(path: Path, detail: str) -> FileFormatError:
    return FileFormatError(
        f"Cannot open checkpoint '{path}': it is not a napari-sim-uq checkpoint or is "
        f"damaged ({detail})"
    )


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"Cannot open checkpoint '{path}': file not found")
    if path.is_dir():
        raise InputError(f"Cannot open checkpoint '{path}': it is a folder, not a checkpoint file")
    if path.stat().st_size == 0:
        raise FileFormatError(
            f"Cannot open checkpoint '{path}': the file is empty (0 bytes), e.g. left by an "
            "interrupted copy or download"
        )


def _check_container(path: Path) -> None:
    """Cheap checks before unpickling: a zip with intact checksums, or a legacy pickle."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not zipfile.is_zipfile(path):
        if head.startswith(b"PK"):
            raise _damaged(
                path,
                "the zip archive is incomplete: the file was probably cut "
                "short by an interrupted save, copy or download",
            )
        if not head.startswith(b"\x80"):
            raise _damaged(path, "it is neither a PyTorch zip archive nor a pickle")
        return  # a pre-1.6 PyTorch file: torch.load(weights_only=True) judges it
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if not any(i.filename == "data.pkl" or i.filename.endswith("/data.pkl") for i in infos):
                raise _damaged(path, "it is a zip archive without PyTorch data")
            for info in infos:
                if info.CRC == 0 and info.file_size:
                    continue  # written without checksums
                with zf.open(info) as member:  # checks the CRC at the end
                    while member.read(1 << 22):
                        pass
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise _damaged(path, f"corrupted contents: {exc}") from None


def _unpickle(path: Path, map_location: Any) -> Any:
    try:
        _check_container(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols etc.
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        match = re.search(r"GLOBAL (\S+) was not an allowed global", msg)
        if match or "Unsupported global" in msg or "Unsupported class" in msg:
            what = f" (it refers to '{match.group(1)}')" if match else ""
            raise FileFormatError(
                f"Refusing to load checkpoint '{path}': it contains code or Python objects "
                f"that are not allowed in a checkpoint{what}. It was NOT loaded. Only use "
                "checkpoints written by napari-sim-uq that come from a source you trust."
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", msg)
        raise _damaged(
            path, f"unreadable pickle data: {_short(detail.group(1) if detail else msg)}"
        ) from None
    except OSError as exc:
        raise InputError(f"Cannot read checkpoint '{path}': {exc.strerror or exc}") from None
    except FileFormatError:
        raise
    except Exception as exc:
        msg = str(exc)
        if map_location is not None and "deserialize object on" in msg:
            raise InputError(
                f"Cannot load checkpoint '{path}' onto {map_location!r}: {_short(msg)}"
            ) from None
        raise _damaged(path, f"{type(exc).__name__}: {_short(msg)}") from None


def _short(msg: str, limit: int = 200) -> str:
    """First non-empty line of an error message, shortened."""
    line = next((line.strip() for line in msg.splitlines() if line.strip()), "no details")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _foreign(path: Path, payload: Any) -> FileFormatError:
    """Explain what a file that is not one of our checkpoints seems to be."""
    start = f"Cannot open checkpoint '{path}': "
    if not isinstance(payload, dict):
        return FileFormatError(
            f"{start}it holds a {_type_name(payload)}, not a napari-sim-uq checkpoint"
        )
    if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return FileFormatError(
            f"{start}it is a bare PyTorch state_dict (model weights only, {len(payload)} "
            "tensors), not a napari-sim-uq checkpoint: it lacks the model config, data "
            "normalisation and sigma-scale needed to use it. Use a checkpoint written by "
            "napari-sim-uq training (or save_checkpoint) instead."
        )
    known = [k for k in ("state_dict", "model_state_dict", "model", "optimizer") if k in payload]
    if known:
        return FileFormatError(
            f"{start}it is a PyTorch training checkpoint from other software (entries "
            f"{', '.join(map(repr, known))}), not a napari-sim-uq checkpoint; it lacks the "
            "config, normalisation and sigma-scale this package needs"
        )
    keys = ", ".join(repr(k) for k in list(payload)[:8])
    return FileFormatError(
        f"{start}it is not a napari-sim-uq checkpoint (no format marker; it holds a dict "
        f"with entries {keys or 'none'})"
    )


def _validate(payload: Any, path: Path) -> Checkpoint:
    if not isinstance(payload, dict) or "format" not in payload:
        raise _foreign(path, payload)
    start = f"Cannot open checkpoint '{path}': "
    if payload["format"] != FORMAT_MARKER:
        raise FileFormatError(
            f"{start}it is not a napari-sim-uq checkpoint (its format marker is "
            f"{payload['format']!r}, expected {FORMAT_MARKER!r})"
        )
    version = payload.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise FileFormatError(f"{start}it has an invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise FileFormatError(
            f"{start}it was written by a newer napari-sim-uq (version "
            f"{payload.get('package_version', '?')}, checkpoint format {version}); this is "
            f"version {__version__}, which reads checkpoint formats up to {FORMAT_VERSION}. "
            "Upgrade napari-sim-uq to use it."
        )
    missing = [k for k in _REQUIRED_KEYS if k not in payload]
    if missing:
        raise FileFormatError(
            f"{start}the checkpoint is incomplete or damaged: it lacks "
            f"{', '.join(map(repr, missing))}"
        )

    def bad(key: str, expected: str) -> FileFormatError:
        return FileFormatError(
            f"{start}the checkpoint is damaged: {key!r} should be {expected}, found "
            f"{_type_name(payload[key])}"
        )

    for key in ("config", "model_state", "normalization", "sigma_scale", "train_state", "extra"):
        if not isinstance(payload[key], dict):
            raise bad(key, "a dict")
    for key in ("optimizer_state", "scheduler_state"):
        if payload[key] is not None and not isinstance(payload[key], dict):
            raise bad(key, "a dict or None")
    for key in ("package_version", "model_type", "config_hash"):
        if not isinstance(payload[key], str):
            raise bad(key, "a string")
    config = payload["config"]
    if config.get("model_type") != payload["model_type"]:
        raise FileFormatError(
            f"{start}the checkpoint is damaged: its model type {payload['model_type']!r} "
            f"differs from the one in its config ({config.get('model_type')!r})"
        )
    try:
        actual_hash = config_hash(config)
    except InputError:
        actual_hash = None
    if actual_hash != payload["config_hash"]:
        raise FileFormatError(
            f"{start}the checkpoint is damaged: its config does not match its config hash"
        )
    try:
        sigma_scale = _sigma_scale(payload["sigma_scale"])
    except _Unstorable as exc:
        raise FileFormatError(f"{start}the checkpoint is damaged: {exc}") from None
    return Checkpoint(
        model_state=payload["model_state"],
        config=config,
        optimizer_state=payload["optimizer_state"],
        scheduler_state=payload["scheduler_state"],
        normalization=payload["normalization"],
        sigma_scale=sigma_scale,
        train_state=payload["train_state"],
        extra=payload["extra"],
        package_version=payload["package_version"],
        format_version=version,
        config_hash=payload["config_hash"],
        path=path,
    )


def load_checkpoint(
    path: str | os.PathLike,
    *,
    expected_model_type: str | None = None,
    map_location: Any = "cpu",
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`, never executing code from it.

    Raises :class:`InputError` for a missing file or a checkpoint for another model than
    ``expected_model_type``, and :class:`FileFormatError` (a subclass) for an empty,
    truncated, corrupted or foreign file, one holding code or disallowed objects (which is
    then not loaded), or one written in a newer checkpoint format.
    """
    path = Path(path)
    _check_file(path)
    ckpt = _validate(_unpickle(path, map_location), path)
    if expected_model_type is not None and ckpt.model_type != expected_model_type:
        raise InputError(
            f"Checkpoint '{path}' is for model '{ckpt.model_type}', this needs "
            f"'{expected_model_type}'"
        )
    return ckpt


def update_sigma_scale(path: str | os.PathLike, sigma_scale: Mapping[str, float]) -> Checkpoint:
    """Replace the sigma-scale stored in a checkpoint file, keeping everything else.

    The file is rewritten atomically: if this is interrupted, the old checkpoint stays.
    Returns the updated checkpoint.
    """
    ckpt = load_checkpoint(path).with_sigma_scale(sigma_scale)
    ckpt.save(path, overwrite=True)
    return ckpt


def update_calibration(
    path: str | os.PathLike,
    sigma_scale: Mapping[str, float],
    sigma_maps: Mapping[str, dict] | None = None,
    *,
    out: str | os.PathLike | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Checkpoint:
    """Store a recalibration: the sigma scales and the per-quantity sigma maps (plain
    dicts, ``extra["sigma_map"][quantity]``; ``None``: no map, and any stored map is
    removed), keeping everything else. ``extra``: further JSON entries of the checkpoint's
    ``extra`` to set (``None`` values remove them). Written atomically into ``path``
    itself, or with ``out`` into a new file (never replacing an existing one). Returns the
    checkpoint."""
    fresh = load_checkpoint(path)
    updates = dict(extra or {})
    drop = {"sigma_map", *updates}
    new_extra = {k: v for k, v in (fresh.extra or {}).items() if k not in drop}
    new_extra.update({k: v for k, v in updates.items() if v is not None})
    extra = new_extra
    if sigma_maps:
        extra["sigma_map"] = {str(q): dict(d) for q, d in sigma_maps.items()}
    ckpt = dataclasses.replace(fresh.with_sigma_scale(sigma_scale), extra=extra)
    if out is None:
        ckpt.save(path, overwrite=True)
    else:
        ckpt.save(out, overwrite=False)
    return ckpt


def checkpoint_summary(path: str | os.PathLike) -> dict:
    """A short description of a checkpoint (JSON types), e.g. for ``sim-uq info``."""
    ckpt = load_checkpoint(path)
    tensors = [t for t in ckpt.model_state.values() if isinstance(t, torch.Tensor)]
    return {
        "path": str(ckpt.path),
        "file_size_bytes": Path(path).stat().st_size,
        "model_type": ckpt.model_type,
        "package_version": ckpt.package_version,
        "format_version": ckpt.format_version,
        "config_hash": ckpt.config_hash,
        "epoch": ckpt.epoch,
        "step": ckpt.step,
        "best_metric": ckpt.train_state.get("best_metric"),
        "sigma_scale": dict(ckpt.sigma_scale),
        "n_parameters": int(sum(t.numel() for t in tensors)),
        "has_optimizer_state": ckpt.optimizer_state is not None,
        "has_scheduler_state": ckpt.scheduler_state is not None,
    }
