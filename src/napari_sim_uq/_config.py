"""Shared behaviour of the dataclass configurations (generator, model, loss, training)."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import ClassVar

from napari_sim_uq.errors import InputError


class JsonConfig:
    """Mixin for dataclass configs: a plain-JSON ``to_dict`` and a checked ``from_dict``.

    ``from_dict`` refuses unknown keys (a typo must not be ignored silently) and turns
    lists back into tuples, so ``from_dict(to_dict())`` gives an equal config.
    """

    _what: ClassVar[str] = "parameters"

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict):
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`InputError`."""
        if not isinstance(d, dict):
            raise InputError(f"{cls._what} must be given as a dict, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise InputError(f"unknown {cls._what}: {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @classmethod
    def coerce(cls, cfg):
        """A validated private copy from ``None`` (defaults), a dict or an instance."""
        if cfg is None:
            return cls()
        if isinstance(cfg, dict):
            return cls.from_dict(cfg)
        if isinstance(cfg, cls):
            return cls.from_dict(cfg.to_dict())
        raise InputError(f"cfg must be a {cls.__name__} or a dict, got {type(cfg).__name__}")
