"""Merge recipes in mergekit's YAML syntax, parsed and checked without touching any model.

    slices:                      # or `models:` (each model whole), never both
      - sources:
          - model: PATH          # HF folder, solar-jax checkpoint or .gguf
            layer_range: [0, 24] # half-open, as in mergekit
            parameters: {weight: 0.5}
        parameters: {...}        # slice-level parameters
    merge_method: passthrough | linear | slerp | task_arithmetic | ties | model_stock
    base_model: PATH
    parameters: {t: 0.5, normalize: true, ...}
    dtype: bfloat16              # and out_dtype, as mergekit

A parameter value is a number/bool, a gradient (list of numbers, interpolated over the
layers of a slice) or a list of {filter, value} conditions matched against the Hugging Face
tensor name — the same lookup mergekit does (`evaluate_setting` below reproduces it).
Which parameters a method takes, their types and ranges come from its record in
`solar_jax.merge_methods`. Only syntax and values are checked here; layer counts and
architectures are checked when the models are opened (recipe_source.open_recipe), still
before any tensor is read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from solar_jax import merge_methods
from solar_jax.config import canonical_dtype
from solar_jax.errors import SolarError

TOP_LEVEL_KEYS = {"slices", "models", "merge_method", "base_model", "dtype", "out_dtype",
                  "parameters", "tokenizer_source"}


@dataclasses.dataclass(frozen=True)
class InputSlice:
    model: str
    layer_range: tuple[int, int] | None  # None: the whole model (`models:` form)
    parameters: dict


@dataclasses.dataclass(frozen=True)
class OutputSlice:
    sources: tuple[InputSlice, ...]
    parameters: dict


@dataclasses.dataclass(frozen=True)
class Recipe:
    merge_method: str
    slices: tuple[OutputSlice, ...]  # the `models:` form becomes one slice of whole models
    base_model: str | None = None
    dtype: str | None = None
    parameters: dict = dataclasses.field(default_factory=dict)
    from_models: bool = False  # written with `models:` (mergekit adds a missing base then)


def load_recipe(path: str | Path, default_model: str | None = None) -> Recipe:
    """Parse a mergekit YAML file. `default_model` fills slices that name no model."""
    path = Path(path)
    if not path.is_file():
        raise SolarError(f"recipe {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SolarError(f"recipe {path} is not valid YAML{where}: "
                         f"{getattr(e, 'problem', None) or e}") from None
    return parse_recipe(data, default_model=default_model, relative_to=path.parent)


def parse_recipe(data: Any, default_model: str | None = None,
                 relative_to: Path | None = None) -> Recipe:
    if not isinstance(data, dict):
        raise SolarError("recipe must be a YAML mapping with `slices` or `models`")
    unknown = sorted(set(data) - TOP_LEVEL_KEYS)
    if unknown:
        raise SolarError(f"recipe key {unknown[0]!r} is not supported "
                         f"(supported: {', '.join(sorted(TOP_LEVEL_KEYS))})")
    method = data.get("merge_method")
    merge_methods.get(method, "merge_method")
    if data.get("tokenizer_source") not in (None, "base"):
        raise SolarError("tokenizer_source other than `base` is not supported (the output "
                         "keeps the base model's tokenizer)")

    def model_path(value, where: str) -> str:
        if value is None:
            if default_model is None:
                raise SolarError(f"{where} names no model")
            return str(default_model)
        if not isinstance(value, (str, Path)):
            raise SolarError(f"{where}: model must be a path, got {value!r}")
        return _resolve(str(value), relative_to)

    has_slices, has_models = "slices" in data, "models" in data
    if has_slices == has_models:
        raise SolarError("recipe needs exactly one of `slices` or `models`")
    if has_slices:
        slices = _as_list(data["slices"], "slices")
        out = []
        for k, raw in enumerate(slices, 1):
            where = f"slice {k}"
            raw = _mapping(raw, where, {"sources", "parameters", "base_model"})
            if "base_model" in raw:
                raise SolarError(f"{where}: a per-slice base_model is not supported")
            sources = []
            for j, src in enumerate(_as_list(raw.get("sources"), f"{where} sources"), 1):
                swhere = f"{where} source {j}"
                src = _mapping(src, swhere, {"model", "layer_range", "parameters"})
                model = model_path(src.get("model"), swhere)
                sources.append(InputSlice(model, _layer_range(src.get("layer_range"), swhere),
                                          _params(src.get("parameters"), method,
                                                  f"{swhere} ({model})", model_level=True)))
            out.append(OutputSlice(tuple(sources), _params(raw.get("parameters"), method, where)))
        slices = tuple(out)
    else:
        models = []
        for j, entry in enumerate(_as_list(data["models"], "models"), 1):
            where = f"model {j}"
            if isinstance(entry, str):
                entry = {"model": entry}
            entry = _mapping(entry, where, {"model", "parameters"})
            model = model_path(entry.get("model"), where)
            models.append(InputSlice(model, None, _params(entry.get("parameters"), method,
                                                          f"{where} ({model})",
                                                          model_level=True)))
        slices = (OutputSlice(tuple(models), {}),)
    base = data.get("base_model")
    dtype = data.get("out_dtype") or data.get("dtype")  # out_dtype wins, as in mergekit
    return Recipe(method, slices,
                  base_model=model_path(base, "base_model") if base is not None else None,
                  dtype=canonical_dtype(dtype) if dtype else None,
                  parameters=_params(data.get("parameters"), method, "parameters"),
                  from_models=has_models)


RECIPE_FILE = "mergekit_config.yml"  # mergekit's name for the recipe kept with its output


def recipe_to_dict(recipe: Recipe) -> dict:
    """The recipe in mergekit's YAML syntax (what `parse_recipe` reads back): written as
    RECIPE_FILE beside every merged or up-scaled model, so its parents stay on record."""
    def entry(src: InputSlice) -> dict:
        out: dict = {"model": src.model}
        if src.layer_range is not None:
            out["layer_range"] = list(src.layer_range)
        if src.parameters:
            out["parameters"] = dict(src.parameters)
        return out

    data: dict = {"merge_method": recipe.merge_method}
    if recipe.from_models:
        data["models"] = [entry(src) for src in recipe.slices[0].sources]
    else:
        data["slices"] = [{"sources": [entry(src) for src in s.sources],
                           **({"parameters": dict(s.parameters)} if s.parameters else {})}
                          for s in recipe.slices]
    if recipe.base_model:
        data["base_model"] = recipe.base_model
    if recipe.parameters:
        data["parameters"] = dict(recipe.parameters)
    if recipe.dtype:
        data["dtype"] = recipe.dtype
    return data


def write_recipe_file(recipe: Recipe, directory: Path) -> None:
    (Path(directory) / RECIPE_FILE).write_text(
        yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))


def evaluate_setting(setting: Any, tensor_name: str, t: float) -> Any:
    """A parameter's value for one tensor at relative depth t in [0, 1] of its slice:
    mergekit's semantics (gradients interpolate, the first matching condition wins)."""
    if not isinstance(setting, list):
        return setting
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in setting):
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    for cond in setting:
        flt = cond.get("filter")
        if flt is None or flt == "*" or flt in tensor_name:
            return evaluate_setting(cond["value"], tensor_name, t)
    return None


# ---- syntax checks --------------------------------------------------------------------


def _resolve(model: str, relative_to: Path | None) -> str:
    # mergekit resolves paths against the working directory; a recipe kept next to its
    # models also works from elsewhere, so fall back to the recipe's own folder.
    if Path(model).exists() or relative_to is None or Path(model).is_absolute():
        return model
    beside = relative_to / model
    return str(beside) if beside.exists() else model


def _as_list(value, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise SolarError(f"recipe {where} must be a non-empty list")
    return value


def _mapping(value, where: str, allowed: set[str]) -> dict:
    if not isinstance(value, dict):
        raise SolarError(f"{where} must be a mapping, got {value!r}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise SolarError(f"{where}: unsupported key {unknown[0]!r}")
    return value


def _layer_range(value, where: str) -> tuple[int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise SolarError(f"{where}: layer_range must be [start, end] integers, got {value!r}")
    a, b = value
    if not 0 <= a < b:
        raise SolarError(f"{where}: layer_range [{a}, {b}] is empty or negative "
                         f"(half-open, need 0 <= start < end)")
    return (a, b)


def _params(value, method: str, where: str, model_level: bool = False) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SolarError(f"{where}: parameters must be a mapping, got {value!r}")
    spec = merge_methods.get(method)
    for name, setting in value.items():
        param = spec.param(name)
        if param is None:
            raise SolarError(f"{where}: parameter {name!r} is not used by {method} "
                             f"(it takes {spec.param_names()})")
        if model_level and not param.per_model:
            # mergekit reads it for the whole merge only: here it would be silently ignored
            raise SolarError(f"{where}: {name} is a parameter of the whole {method} merge, "
                             f"not of one model; set it in the slice's or the top-level "
                             f"parameters")
        for v in _leaves(setting, f"{where} {name}"):
            param.validate(v, where)
    return dict(value)


def _leaves(setting, where: str) -> list:
    """Every scalar a setting can evaluate to (checking its shape on the way)."""
    if isinstance(setting, (bool, int, float)):
        return [setting]
    if isinstance(setting, list) and setting:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in setting):
            return list(setting)
        out = []
        for cond in setting:
            if not isinstance(cond, dict) or "value" not in cond or set(cond) - {"filter", "value"}:
                raise SolarError(f"{where}: expected a number, a list of numbers or a list "
                                 f"of {{filter, value}} conditions, got {cond!r}")
            if cond.get("filter") is not None and not isinstance(cond["filter"], str):
                raise SolarError(f"{where}: filter must be a string, got {cond['filter']!r}")
            out += _leaves(cond["value"], where)
        return out
    raise SolarError(f"{where}: expected a number, a list of numbers or a list of "
                     f"{{filter, value}} conditions, got {setting!r}")
