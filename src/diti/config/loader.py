"""One strict loader from YAML/dicts to typed, nested dataclass configs.

- Unknown keys and wrong types are rejected with a message naming the key path (``train.lr``) and, for a
  misspelt key, the closest valid one.
- YAML's ``1e-4`` is read as a float (PyYAML follows YAML 1.1, which reads it as a string).
- Configs are data: nothing is evaluated.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key that diti cannot accept; the message names it."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as ``1e-4`` and ``3E5`` as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML text with the float-aware safe loader."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from None


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping from a file (an empty file is an empty mapping)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = parse_yaml(path.read_text(), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def to_dict(config: Any) -> dict:
    """A dataclass config as plain nested dicts/lists (what ``config.yaml`` holds)."""
    return dataclasses.asdict(config)


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge: mappings merge key by key, every other value is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict:
    """``["train.lr=3e-4", "partition.stages=[50,1000]"]`` -> nested dict; values are parsed as YAML."""
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        value = parse_yaml(raw, f"override {item!r}") if raw.strip() else None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part!r}")
        node[parts[-1]] = value
    return out


def from_dict(cls: type[T], data: dict | None, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, recursively, rejecting unknown keys and wrong types."""
    data = {} if data is None else data
    where = path or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    unknown = [key for key in data if key not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown config key {_join(path, key)!r}{hint}; valid keys here: {', '.join(fields)}"
        )
    kwargs = {key: _convert(hints[key], value, _join(path, key)) for key, value in data.items()}
    return cls(**kwargs)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


_YAML_BOOL_WORDS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}  # PyYAML's bool words


def _convert(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where lossless (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} matches none of {_name(tp)}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list ({_name(tp)}), got {type(value).__name__} {value!r}")
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is typing.Literal:
        if isinstance(value, bool) and value not in args:
            # YAML 1.1 reads an unquoted no/off/yes/on as a bool: take it back to the option it spelt.
            spelt = [a for a in _YAML_BOOL_WORDS[value] if a in args]
            value = spelt[0] if spelt else value
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"config annotation {tp!r} at {path} is not supported by the loader")


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
