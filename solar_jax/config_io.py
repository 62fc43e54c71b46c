"""Typed YAML configs: nested dataclasses, dotted `key=value` overrides, strict validation.

Every key is checked before anything runs: an unknown key (with a close-match hint), a
value of the wrong type, or an impossible value is a one-line SolarError naming the key.

Relative paths written in a config file are relative to that file (`rebase_paths`), so a
config works from any directory; paths given as `key=value` overrides on the command line
stay relative to the current directory, as a shell user expects.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from solar_jax.errors import SolarError


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SolarError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SolarError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SolarError(f"{path} must hold a mapping of config keys")
    return data


# Keys of a mapping whose values are paths (or lists/mappings holding paths).
PATH_FIELDS = ("path", "cache_dir", "mixture", "data", "fewshot_data")


def rebase_paths(data: dict, config_path: str | Path, keys, names=()) -> dict:
    """Make the relative paths under the dotted `keys` of `data` (read from `config_path`)
    relative to the config file's directory. A value may be a string, a list of strings or
    a mapping: a data section (its `path`, `cache_dir` and `mixture` sources) or an eval
    task (its `data` and `fewshot_data`). URLs, absolute paths and `names` (preset or alias
    names, unless such a file exists beside the config) are left as they are."""
    base = os.path.dirname(os.path.abspath(config_path))

    def rebase(value):
        if isinstance(value, list):
            return [rebase(v) for v in value]
        if isinstance(value, dict):
            return {k: rebase(v) if k in PATH_FIELDS else v for k, v in value.items()}
        if not isinstance(value, str) or not value or "://" in value:
            return value
        expanded = os.path.expanduser(value)
        if os.path.isabs(expanded):
            return value
        joined = os.path.normpath(os.path.join(base, expanded))
        if value in names and not os.path.exists(joined):
            return value
        return joined

    for key in keys:
        node, parts = data, key.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and parts[-1] in node:
            node[parts[-1]] = rebase(node[parts[-1]])
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b=3` sets data['a']['b'] = 3 (the value parsed as YAML: numbers, lists, null)."""
    for item in overrides:
        if "=" not in item:
            raise SolarError(f"override {item!r} must look like key=value (e.g. data.path=x.txt)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SolarError(f"override {key}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass `cls` from `data`, validating keys and types recursively."""
    if not isinstance(data, dict):
        raise SolarError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise SolarError(f"unknown config key {prefix}{key}{hint}")
    kwargs = {name: _coerce(hints[name], data[name], f"{prefix}{name}")
              for name in fields if name in data}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise SolarError(f"{prefix.rstrip('.') or 'config'}: {e}") from None


def _coerce(hint, value, key: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except SolarError as e:
                errors.append(str(e))
        raise SolarError(errors[0] if errors else f"config key {key} has a bad value {value!r}")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value if value is not None else {}, f"{key}.")
    if origin is list:
        (inner,) = typing.get_args(hint) or (Any,)
        if not isinstance(value, list):
            value = [value]
        return [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SolarError(f"config key {key} must be a mapping, got {value!r}")
        _, inner = typing.get_args(hint) or (str, Any)
        return {k: _coerce(inner, v, f"{key}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise SolarError(f"config key {key} must be one of {', '.join(map(str, allowed))}, "
                             f"got {value!r}")
        return value
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise SolarError(f"config key {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise SolarError(f"config key {key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SolarError(f"config key {key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise SolarError(f"config key {key} must be a string, got {value!r}")
        return str(value)
    return value
