"""The architecture registry: one record per model family, one module per family.

Every module of this package except `base` defines `ARCHITECTURE` (an
`solar_jax.arch.base.Architecture`); they are found by listing the package, so a new family
is a new module here (plus a preset in solar_jax/resources/presets/). Look records up by our
model_type (`get`), by a Hugging Face model_type (`for_hf`) or by a llama.cpp architecture
(`for_gguf`).
"""

from __future__ import annotations

import importlib
import pkgutil

from solar_jax.arch.base import Architecture, Param
from solar_jax.errors import SolarError

__all__ = ["Architecture", "Param", "REGISTRY", "get", "for_hf", "for_gguf", "names",
           "param_role"]


def _discover() -> dict[str, Architecture]:
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "base" or info.name.startswith("_"):
            continue
        record = importlib.import_module(f"{__name__}.{info.name}").ARCHITECTURE
        found[record.name] = record
    _check_shared_paths(found)
    return found


def _check_shared_paths(records: dict[str, Architecture]) -> None:
    """A leaf path means the same tensor in every family (same axes and role), so code that
    sees only a params tree (the optimizer's decay mask) can read any table."""
    seen: dict = {}
    for record in records.values():
        for p in record.params:
            other = seen.setdefault(p.path, p)
            if (other.axes, other.role, other.layout) != (p.axes, p.role, p.layout):
                raise RuntimeError(f"parameter {p.name} differs between architecture tables")


REGISTRY: dict[str, Architecture] = _discover()


def names() -> list[str]:
    return sorted(REGISTRY)


def get(model_type: str) -> Architecture:
    try:
        return REGISTRY[model_type]
    except KeyError:
        raise SolarError(f"unsupported model_type {model_type!r}; "
                         f"supported: {', '.join(names())}") from None


def _find(field: str, value) -> Architecture | None:
    """The record whose `field` (a tuple of names) holds `value`."""
    return next((r for r in REGISTRY.values() if value in getattr(r, field)), None)


def _supported(field: str) -> str:
    return ", ".join(sorted(n for r in REGISTRY.values() for n in getattr(r, field)))


def for_hf(hf_model_type) -> Architecture:
    record = _find("hf_model_types", hf_model_type)
    if record is None:
        raise SolarError(f"unsupported model_type {hf_model_type!r} in config.json; "
                         f"supported: {_supported('hf_model_types')}")
    return record


def for_gguf(gguf_arch, where) -> Architecture:
    record = _find("gguf_read_archs", gguf_arch)
    if record is None:
        raise SolarError(f"GGUF file {where} has architecture {gguf_arch!r}; supported: "
                         f"{_supported('gguf_read_archs')}")
    return record


_ROWS = {p.path: p for r in REGISTRY.values() for p in r.params}  # paths are shared (checked)
_ROLES = {path: p.role for path, p in _ROWS.items()}


def param_row(path: tuple[str, ...]) -> Param | None:
    """The parameter-table row of a leaf path (its layout is the same in every family), or
    None for a path no table has."""
    return _ROWS.get(tuple(path))


def param_role(path: tuple[str, ...]) -> str:
    """The role ("weight", "norm", "bias") of a leaf path in any family's table."""
    try:
        return _ROLES[tuple(path)]
    except KeyError:
        raise SolarError(f"parameter {'/'.join(path)} is in no architecture table") from None
