"""One config system for the whole project: typed dataclasses, YAML files, dotted overrides.

A config class is a plain (nested) dataclass. :func:`from_dict` builds it from a mapping and
checks every field's type, naming the field by its dotted path in the error; each class may add
a ``validate(self)`` method that raises :class:`ConfigError` for value checks. Variants are the
base plus a small diff: ``merge(base_dict, diff_dict)`` then ``apply_overrides(d, ["a.b=3"])``.

Example::

    @dataclass
    class Optim:
        lr: float = 1e-3

    @dataclass
    class Train:
        optim: Optim = field(default_factory=Optim)
        steps: int = 100

    cfg = from_dict(Train, apply_overrides({}, ["optim.lr=3e-4"]))

Why not OmegaConf (audiocraft's and Demucs' choice): weighed and kept, because switching would
not make this simpler. OmegaConf 2.3's structured configs reject the ``Literal[...]`` fields that
recipes and training configs use for every choice (17 of them; typing.Literal support was merged
upstream only in 2026, else each becomes an Enum) and fixed-length tuples (``betas: tuple[float,
float]``); its errors span three lines (message, ``full_key``, ``object_type``) and list no known
fields, so each would still be caught and rewritten into the one-line :class:`ConfigError`; it has
no per-class ``validate`` hook and no ``base:`` inheritance, and YAML syntax errors would still
come from :func:`load_yaml`. Most of this module would remain, plus a dependency.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is wrong; ``field`` is its dotted path (``room.rt60_s``)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


def load_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file; a syntax error or a tag plain YAML lacks (``!!python/...``,
    refused unread by the safe loader) is a one-line ConfigError naming the file and line."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = exc.problem or exc.context or "not valid YAML"
        if isinstance(exc, yaml.constructor.ConstructorError):
            problem = f"{problem.split(' for ')[-1]} is not allowed (plain YAML values only)" \
                if "constructor" in problem else problem
        raise ConfigError("", f"{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError("", f"{path} must hold a mapping at the top level")
    return data


def load_with_base(name: str, find, seen: tuple = ()) -> dict:
    """Load the YAML that ``find(name)`` locates; a ``base: other`` key inherits ``other``'s
    fields (recursively) and this file's fields change them: variants are a small diff."""
    data = load_yaml(find(name))
    base = data.pop("base", None)
    if base:
        if base in seen:
            raise ConfigError("base", f"inheritance loops through {base!r}")
        data = merge(load_with_base(base, find, seen + (base,)), data)
    return data


def merge(base: Mapping, diff: Mapping) -> dict:
    """Recursively merge ``diff`` into a copy of ``base`` (mappings merge, anything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in diff.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"room.rt60_s=[0.2, 0.6]"`` -> (["room", "rt60_s"], [0.2, 0.6]); values are YAML."""
    if "=" not in item:
        raise ConfigError(item, "an override is key=value, e.g. room.rt60_s=[0.2,0.6]")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(key, "empty key in override")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(key, f"cannot parse value {raw!r}: {exc}") from None
    return key.split("."), value


def apply_overrides(data: Mapping, overrides: Sequence[str]) -> dict:
    out = copy.deepcopy(dict(data))
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(".".join(path[: i + 1]), "is not a section, cannot set a key below it")
            node = child
        node[path[-1]] = value
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as exc:
                errors.append(str(exc).split(": ", 1)[-1])
        raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(path, f"must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, path)
    if origin in (list, Sequence, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(path, f"expected {len(args)} values, got {len(value)}: {value!r}")
            return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_convert(kt, k, f"{path}.{k}"): _convert(vt, v, f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {value!r}")
        if not math.isfinite(value):  # NaN passes every range check: it compares false to anything
            raise ConfigError(path, f"must be a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping | None, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, checking types and unknown keys recursively."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(path, f"expected a section (mapping), got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"{where}{unknown[0]}", f"unknown field (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name in fields:
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{path}.{name}" if path else name)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as exc:
            if path and not exc.field.startswith(path):
                raise ConfigError(f"{path}.{exc.field}", str(exc).split(": ", 1)[-1]) from None
            raise
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain JSON/YAML-able structures (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def check_range(path: str, value: Sequence[float], lo: float | None = None, hi: float | None = None) -> None:
    """A ``[min, max]`` pair with ``min <= max``, inside ``[lo, hi]`` when given."""
    if len(value) != 2:
        raise ConfigError(path, f"expected [min, max], got {list(value)!r}")
    a, b = value
    if a > b:
        raise ConfigError(path, f"min {a} is above max {b}")
    if lo is not None and a < lo:
        raise ConfigError(path, f"must be >= {lo}, got {a}")
    if hi is not None and b > hi:
        raise ConfigError(path, f"must be <= {hi}, got {b}")
