"""One strict (de)serialisation for the toolkit's frozen-dataclass configs (a leaf module: it imports only errors).

Every config saved beside weights, in a checkpoint, a deployment or the registry goes through these two functions:

* :func:`config_to_dict` gives a JSON-ready dict: nested configs become objects, tuples (tuples of tuples too)
  lists, enums their values, paths strings.
* :func:`config_from_dict` builds the config back from a mapping, strictly. A field the class does not have is an
  :class:`~medsign_forensics.errors.InputError` naming the class and the field; a field left out takes the
  dataclass default (a field without one is an InputError); every value is checked against the field's
  annotation and JSON's shapes are turned back (lists into tuples, objects into nested configs, values into enums;
  an int is accepted where a float is expected, nothing else is coerced). The class's own ``__post_init__`` then
  validates exactly as for a config built in code.

Derived fields: a config may write values computed from its fields for the reader of the file
(:class:`~medsign_forensics.watermark.decoder_config.DecoderTrainConfig` writes its effective loss weights and
peak learning rate). The class declares them once, as name -> function of the config, and passes the same mapping
both ways: written by :func:`config_to_dict`; on reading, a recorded value must equal the one recomputed from the
config, so a hand-edited derived field is refused rather than ignored.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn, TypeVar, Union, cast, get_args, get_origin, get_type_hints

from medsign_forensics.errors import InputError

T = TypeVar("T")
#: Per class: name -> function of the config, for values written beside the fields (see the module docstring).
Derived = Mapping[str, Callable[[Any], Any]]
_NONE: Derived = {}


def config_to_dict(config: object, *, derived: Derived = _NONE) -> dict[str, Any]:
    """The JSON-ready dict of a dataclass config, plus its ``derived`` values."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config_to_dict needs a dataclass instance, not {type(config).__name__}")
    data = {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}
    data.update({name: plain(compute(config)) for name, compute in derived.items()})
    return data


def plain(value: Any) -> Any:
    """``value`` as JSON data: dataclasses as dicts, tuples and lists as lists, enums as values, paths as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def config_from_dict(cls: type[T], data: object, *, derived: Derived = _NONE) -> T:
    """Build ``cls`` from ``data`` strictly (see the module docstring); every problem is an InputError."""
    given = _check_mapping(data, cls.__name__)
    recorded = {name: given.pop(name) for name in list(given) if name in derived}
    config = _build(cls, given, cls.__name__)
    for name, value in recorded.items():
        expected = plain(derived[name](config))
        if value != expected:
            raise InputError(
                f"{cls.__name__} records {name}={_short(value)}, but its fields give {_short(expected)}: {name} is "
                "computed from the other fields; correct them or leave it out"
            )
    return config


def _check_mapping(data: object, where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise InputError(f"{where} must be a JSON object, got {type(data).__name__}")
    if not all(isinstance(key, str) for key in data):
        raise InputError(f"{where} has a field name that is not a string")
    return dict(data)


def _build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cast(Any, cls)) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(
            f"{where} has unknown field(s) {', '.join(unknown)}; {cls.__name__} has {', '.join(fields)}"
        )
    missing = sorted(
        name for name, f in fields.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise InputError(f"{where} has missing field(s) {', '.join(missing)}; {cls.__name__} needs them")
    hints = get_type_hints(cls)
    values = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    """``value`` read from JSON as the annotation ``hint`` asks; InputError when it cannot be."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) != 1:
            raise TypeError(f"{where}: config fields support only 'X | None' unions, not {hint}")
        return _convert(options[0], value, where)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, _check_mapping(value, where), where)
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in hint)
            raise InputError(f"{where} must be one of {allowed}, not {_short(value)}") from None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            _wrong(where, "a list", value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
        if len(value) != len(args):
            raise InputError(f"{where} must have {len(args)} entries, got {len(value)}")
        return tuple(_convert(a, item, f"{where}[{i}]") for i, (a, item) in enumerate(zip(args, value, strict=True)))
    if origin is dict:
        value_hint = args[1] if args else Any
        return {key: _convert(value_hint, item, f"{where}.{key}") for key, item in _check_mapping(value, where).items()}
    if hint is Path:
        if not isinstance(value, str):
            _wrong(where, "a path", value)
        return Path(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
            _wrong(where, hint.__name__, value)
        return value
    raise TypeError(f"{where}: config fields of type {hint} are not supported by configio")


def _wrong(where: str, expected: str, value: Any) -> NoReturn:
    raise InputError(f"{where} has the wrong type: expected {expected}, got {_short(value)}")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
