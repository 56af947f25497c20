"""Shared behaviour of the dataclass configurations (generator, model, loss, training)."""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import numbers
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import MISSING, Field, asdict, field, fields
from typing import Any, ClassVar

from napari_sim_uq.core.errors import InputError


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


# ----------------------------------------------------------------------------- field metadata
#
# A config field declared with :func:`option` carries what a user interface needs to offer
# it: a help text, the allowed choices and an inclusive range. The ``sim-uq`` command line
# builds its options from this (:func:`add_config_arguments`), so a default, a choice list
# or a range is written once, in the dataclass. The metadata changes nothing else:
# equality, ``to_dict`` / ``from_dict`` and validation work as for a plain field.

#: Key of the :func:`option` entry in ``dataclasses.Field.metadata``.
OPTION_KEY = "napari_sim_uq.option"


def option(
    default: Any = MISSING,
    *,
    help: str = "",
    choices: Sequence | Callable[[], Sequence] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    flag: str | None = None,
    cli: bool = True,
    metavar: str | tuple[str, ...] | None = None,
    nargs: int | str | None = None,
    sep: str | None = None,
):
    """A dataclass field with user-interface metadata.

    ``default``: the field's default (a list, dict or set becomes a ``default_factory``
    that copies it). ``help``: one sentence, without the default (interfaces append it).
    ``choices``: the allowed values, or a function returning them (for a constant whose
    module is expensive to import). ``minimum`` / ``maximum``: inclusive bounds (for a
    tuple, of every element). ``flag``: the command-line flag when it is not derived from
    the field name (``--field-name``). ``cli``: ``False`` keeps the field off the command
    line. ``metavar`` / ``nargs``: argparse display and arity overrides. ``sep``: a tuple
    of strings is given as one ``sep``-separated word (``"a,b"``) instead of several.
    """
    meta = {
        "help": help,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "flag": flag,
        "cli": cli,
        "metavar": metavar,
        "nargs": nargs,
        "sep": sep,
    }
    if isinstance(default, (list, dict, set)):
        return field(
            default_factory=functools.partial(copy.deepcopy, default), metadata={OPTION_KEY: meta}
        )
    return field(default=default, metadata={OPTION_KEY: meta})


def option_meta(f: Field) -> dict | None:
    """The :func:`option` metadata of a dataclass field (``None`` for a plain field)."""
    return f.metadata.get(OPTION_KEY)


def option_choices(meta: dict) -> tuple | None:
    """The resolved choices of an :func:`option` (calls a choices function)."""
    choices = meta.get("choices")
    if callable(choices):
        choices = choices()
    return None if choices is None else tuple(choices)


def field_default(f: Field) -> Any:
    """The default value of a dataclass field (``MISSING`` when it has none)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def cli_fields(config_cls) -> list[Field]:
    """The fields of ``config_cls`` that the command line exposes (declared with
    :func:`option` and ``cli=True``), in declaration order."""
    return [f for f in fields(config_cls) if (m := option_meta(f)) is not None and m["cli"]]


def field_type(config_cls, name: str) -> tuple[Any, bool]:
    """``(type, optional)`` of the field ``name`` of the dataclass ``config_cls``
    (``X | None`` -> ``(X, True)``)."""
    return _unwrap(typing.get_type_hints(config_cls)[name])


def _flag_for(f: Field, prefix: str, flags: dict) -> str:
    if f.name in flags:
        return flags[f.name]
    return option_meta(f)["flag"] or "--" + (prefix + f.name).replace("_", "-")


def _dest_for(name: str, prefix: str) -> str:
    return prefix.replace("-", "_") + name


def _bound_checked(base: type, meta: dict, what: str) -> Callable[[str], Any]:
    """An argparse ``type=`` converting to ``base`` and checking the option's range."""
    lo, hi = meta["minimum"], meta["maximum"]

    def convert(text: str):
        try:
            v = base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {what} value: {text!r}") from None
        if lo is None and hi is None:
            return v
        if isinstance(v, float) and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            if hi is None:
                rng = f">= {lo:g}"
            elif lo is None:
                rng = f"<= {hi:g}"
            else:
                rng = f"in [{lo:g}, {hi:g}]"
            raise argparse.ArgumentTypeError(f"must be {rng}, got {text}")
        return v

    convert.__name__ = what  # argparse names the type in some messages
    return convert


def _separated(base: type, meta: dict, choices: tuple | None) -> Callable[[str], tuple]:
    """An argparse ``type=`` for a tuple given as one ``sep``-separated word."""
    sep = meta["sep"]
    item = _bound_checked(base, meta, base.__name__)

    def convert(text: str) -> tuple:
        values = tuple(item(t.strip()) for t in text.split(sep) if t.strip())
        bad = [v for v in values if choices is not None and v not in choices]
        if bad:
            shown = ", ".join(repr(c) for c in choices)
            raise argparse.ArgumentTypeError(
                f"invalid choice: {', '.join(repr(b) for b in bad)} "
                f"(choose any of {shown}, separated by {sep!r})"
            )
        return values

    convert.__name__ = "list"
    return convert


def _unwrap(tp) -> tuple[Any, bool]:
    """``(type, optional)``: ``X | None`` / ``Optional[X]`` -> ``(X, True)``."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if (origin is typing.Union or origin is types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"unsupported option type {tp!r}")
        return rest[0], True
    return tp, False


def _format_default(v: Any, meta: dict) -> str:
    if isinstance(v, (tuple, list)):
        return (meta["sep"] or " ").join(str(x) for x in v)
    return str(v)


def _argument_kwargs(f: Field, tp, flag: str) -> dict:
    """The ``add_argument`` keywords of one :func:`option` field."""
    meta = option_meta(f)
    default = field_default(f)
    tp, _optional = _unwrap(tp)
    choices = option_choices(meta)
    kw: dict[str, Any] = {"default": default}
    help_text = meta["help"]
    show_default = default is not None and default is not MISSING
    if tp is bool:
        if default is True:
            kw["action"] = "store_false"
        else:
            kw["action"] = "store_true"
        show_default = False
    elif typing.get_origin(tp) is tuple:
        items = typing.get_args(tp)
        base = items[0] if items else str
        if any(i is not base for i in items if i is not Ellipsis):
            raise TypeError(f"{f.name}: tuples of mixed types are not supported ({tp!r})")
        if meta["sep"] is not None:
            kw["type"] = _separated(base, meta, choices)
        else:
            n = "+" if Ellipsis in items else len(items)
            kw["nargs"] = meta["nargs"] or n
            kw["type"] = _bound_checked(base, meta, base.__name__)
            if choices is not None:
                kw["choices"] = choices
            if kw["nargs"] == 2 and meta["metavar"] is None:
                kw["metavar"] = ("LO", "HI")
    elif tp in (int, float, str):
        kw["type"] = _bound_checked(tp, meta, tp.__name__) if tp is not str else str
        if choices is not None:
            kw["choices"] = choices
    else:
        raise TypeError(f"{f.name}: unsupported option type {tp!r}")
    if meta["metavar"] is not None:
        kw["metavar"] = meta["metavar"]
    elif "action" not in kw and "metavar" not in kw and "choices" not in kw:
        kw["metavar"] = flag.lstrip("-").replace("-", "_").upper()
    if show_default:
        shown = f"(default: {_format_default(default, meta)})"
        help_text = f"{help_text} {shown}" if help_text else shown
    kw["help"] = help_text.replace("%", "%%")
    return kw


def add_config_arguments(
    parser,
    config_cls,
    *,
    prefix: str = "",
    exclude: Iterable[str] = (),
    include: Iterable[str] | None = None,
    flags: dict[str, str] | None = None,
    required: Iterable[str] = (),
) -> dict[str, str]:
    """Add one argparse option per exposed field of the dataclass ``config_cls``.

    ``parser`` is an ``ArgumentParser`` or an argument group. Every field declared with
    :func:`option` (and ``cli=True``) becomes an option, unless named in ``exclude`` or
    missing from ``include`` (when given). The flag is ``flags[name]``, else the field's
    ``flag`` metadata, else ``--<prefix><name>`` with ``_`` written ``-``; the value is
    stored under ``<prefix><name>`` (``-`` written ``_``) in the namespace. Type, default,
    choices and range come from the field; fields named in ``required`` must be given
    (their default is not shown). Returns ``{field name: flag}`` of the options added.

    :func:`config_from_args` turns the parsed namespace back into a config.
    """
    names = {f.name for f in fields(config_cls)}
    exclude = set(exclude)
    include = None if include is None else set(include)
    flags = dict(flags or {})
    required = set(required)
    for what, given in (
        ("exclude", exclude),
        ("include", include or set()),
        ("flags", set(flags)),
        ("required", required),
    ):
        if given - names:
            raise ValueError(
                f"{what}: {sorted(given - names)} are not fields of {config_cls.__name__}"
            )
    hints = typing.get_type_hints(config_cls)
    taken = {a.dest for a in parser._actions}
    added: dict[str, str] = {}
    for f in cli_fields(config_cls):
        if f.name in exclude or (include is not None and f.name not in include):
            continue
        flag = _flag_for(f, prefix, flags)
        dest = _dest_for(f.name, prefix)
        if dest in taken:
            raise ValueError(f"{config_cls.__name__}.{f.name}: the parser already stores {dest!r}")
        kw = _argument_kwargs(f, hints[f.name], flag)
        if f.name in required or kw["default"] is MISSING:
            kw["required"] = True
            kw["help"] = option_meta(f)["help"].replace("%", "%%")
            kw.pop("default")
        parser.add_argument(flag, dest=dest, **kw)
        taken.add(dest)
        added[f.name] = flag
    return added


def config_values_from_args(config_cls, args: argparse.Namespace, *, prefix: str = "") -> dict:
    """``{field name: value}`` of the exposed fields of ``config_cls`` found in ``args``
    (as stored by :func:`add_config_arguments` with the same ``prefix``); tuple fields
    become tuples."""
    hints = typing.get_type_hints(config_cls)
    values = {}
    for f in cli_fields(config_cls):
        dest = _dest_for(f.name, prefix)
        if not hasattr(args, dest):
            continue
        v = getattr(args, dest)
        tp, _ = _unwrap(hints[f.name])
        if isinstance(v, list) and typing.get_origin(tp) is tuple:
            v = tuple(v)
        values[f.name] = v
    return values


def config_from_args(config_cls, args: argparse.Namespace, *, prefix: str = "", **overrides):
    """The config ``config_cls(**values, **overrides)`` from a namespace parsed with the
    options of :func:`add_config_arguments`; fields without an option keep their default."""
    values = config_values_from_args(config_cls, args, prefix=prefix)
    values.update(overrides)
    return config_cls(**values)


# ----------------------------------------------------------------------------- value checks


def check_int(name: str, v: object, minimum: int, maximum: int | None = None) -> None:
    """Raise :class:`InputError` unless ``v`` is an integer (not a bool) in range."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise InputError(f"{name} must be an integer, got {v!r}")
    if v < minimum or (maximum is not None and v > maximum):
        rng = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise InputError(f"{name} must be an integer {rng}, got {v!r}")


def check_real(name: str, v: object) -> float:
    """``v`` as a float; :class:`InputError` unless it is a finite real number."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise InputError(f"{name} must be a finite number, got {v!r}")
    return float(v)


def check_dropout_and_logvar_range(cfg: Any) -> None:
    """Checks shared by the networks' configs: ``dropout`` in ``[0, 1)`` and a log-variance
    range ``logvar_min < logvar_init < logvar_max`` (finite numbers)."""
    p = check_real("dropout", cfg.dropout)
    if not 0.0 <= p < 1.0:
        raise InputError(f"dropout must lie in [0, 1), got {cfg.dropout!r}")
    lo = check_real("logvar_min", cfg.logvar_min)
    hi = check_real("logvar_max", cfg.logvar_max)
    init = check_real("logvar_init", cfg.logvar_init)
    if not lo < hi:
        raise InputError(
            f"logvar_min must be < logvar_max, got {cfg.logvar_min!r} and {cfg.logvar_max!r}"
        )
    if not lo < init < hi:
        raise InputError(
            f"logvar_init must lie strictly between logvar_min and logvar_max "
            f"({lo:g}, {hi:g}), got {cfg.logvar_init!r}"
        )
