"""Typed config loading: YAML/JSON documents and ``--set key=value`` overrides into dataclasses.

An unknown key or a value of the wrong type is an error that names the file and the field,
never silently ignored (STYLE.md, 1).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing

import yaml

from hasten.errors import HastenError


def _check_type(value, annotation, where: str):
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except HastenError as e:
                errors.append(str(e))
        raise HastenError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise HastenError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else typing.Any
        items = [_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise HastenError(f"{where}: expected a mapping, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise HastenError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise HastenError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string: YAML 1.1
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HastenError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise HastenError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls, data, source: str = "config"):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    Errors raised by the dataclass's ``__post_init__`` are prefixed with ``source``.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise HastenError(f"{source}: expected a mapping of fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise HastenError(f"{source}: unknown field(s) {unknown}; known fields: {sorted(fields)}")
    kwargs = {name: _check_type(value, hints[name], f"{source}: {name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise HastenError(f"{source}: {e}") from e


def load_document(path: str) -> dict:
    """Read a YAML or JSON mapping from ``path``."""
    if not os.path.isfile(path):
        raise HastenError(f"{path}: config file not found")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise HastenError(f"{path}: not valid YAML/JSON ({str(e).splitlines()[0]})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HastenError(f"{path}: expected a mapping of fields at the top level")
    return data


def apply_overrides(data: dict, overrides: list[str] | None, option: str = "--set") -> dict:
    """Apply ``key=value`` / ``section.key=value`` overrides; values are parsed as YAML scalars."""
    data = dict(data)
    for item in overrides or []:
        if "=" not in item:
            raise HastenError(f"{option} {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = value
    return data


def to_dict(config) -> dict:
    """Dataclass -> plain dict (JSON/YAML friendly)."""
    return dataclasses.asdict(config)
