"""What a merge method is, and the registry every entry point finds methods in.

A method declares, in one record: its parameters (mergekit's names, types, defaults and
checks; global or one value per model), its arity (how many models a slice merges, counting
the base as mergekit does), the role of the base model, and its tensor function. The CLI's
flags and help, `merge_params` / `merge_checkpoints`, and mergekit-syntax recipes
(`recipes.parse_recipe`, `checkpoint.recipe_plan`) all read these records, so a new method is
one module that calls `register`.

Tensor functions take fp32 numpy arrays and return fp32:

    fn(base, others, params=..., model_params=..., rule=...) -> np.ndarray

`base` is the base model's tensor (None when the method has no base), `others` the other
models' tensors, `params` the global parameters resolved for this tensor, `model_params`
one dict per entry of `others`, and `rule` the `hf_names.Rule` relating the array's layout
to the Hugging Face [out, in] tensor (None when unknown) for methods that work row by row.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import numpy as np

from solar_jax.errors import SolarError


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED = _Required()


def _in_unit_interval(v) -> str | None:
    return None if 0.0 <= v <= 1.0 else "must be in [0, 1]"


def _finite(v) -> str | None:
    return None if math.isfinite(v) else "must be a finite number"


@dataclasses.dataclass(frozen=True)
class Param:
    name: str                        # mergekit's name, in recipes and in `parameters=`
    kind: type                       # float or bool
    per_model: bool = False          # mergekit's tensor_parameters: one value per model
    default: Any = REQUIRED          # a value, or a callable of the number of models
    recipe_required: bool = False    # mergekit requires it in recipes (flags use `default`)
    check: Callable[[Any], str | None] | None = None  # -> what is wrong with a value
    flag: str | None = None          # the `solar-jax merge` flag; None: recipes/API only
    help: str = ""
    default_text: str | None = None  # how --help shows a callable default

    def default_for(self, n_models: int):
        return self.default(n_models) if callable(self.default) else self.default

    def validate(self, value, where: str) -> None:
        """One scalar value (a leaf of a gradient or filter list)."""
        if self.kind is bool:
            if not isinstance(value, (bool, np.bool_)):
                raise SolarError(f"{where}: {self.name} must be true or false, got {value!r}")
            return
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            raise SolarError(f"{where}: {self.name} must be a number, got {value!r}")
        for check in (_finite, self.check):
            problem = check(float(value)) if check else None
            if problem:
                raise SolarError(f"{where}: {self.name} {problem}, got {value!r}")


def weight(default, default_text: str | None = None) -> Param:
    # mergekit requires a weight per model in recipes; flags and the API default it
    return Param("weight", float, per_model=True, default=default, recipe_required=True,
                 flag="--weights", default_text=default_text,
                 help="one weight per MODEL (one value: the same for all)")


def normalize(default: bool) -> Param:
    return Param("normalize", bool, default=default, flag="--normalize",
                 help="divide the weighted sum by the sum of the weights")


def lam() -> Param:
    return Param("lambda", float, default=1.0, flag="--lambda",
                 help="scale of the merged task vector")


def unit_t() -> Param:
    return Param("t", float, check=_in_unit_interval, flag="--t",
                 help="interpolation factor toward the second model, in [0, 1]")


def accepted_noop(name: str, why: str) -> Param:
    """A mergekit parameter with no numerical effect here, accepted so recipes copy over."""
    return Param(name, bool, default=False, help=why)


@dataclasses.dataclass(frozen=True)
class MergeMethod:
    name: str
    summary: str                       # one line, for help and docs
    fn: Callable[..., np.ndarray]
    params: tuple[Param, ...] = ()
    min_models: int = 2                # inputs of a slice, the base included
    max_models: int | None = None
    base: str = "none"                 # "none": no base, every model alike; "required";
                                       # "first": the first model unless one is named
    base_help: str = "the base model"
    stacks_layers: bool = False        # passthrough: each output tensor copies one input
    # Per-tensor checks that need the tensor's size: (params, model_params, numel) -> problem.
    check: Callable[[dict, list[dict], int], str | None] | None = None
    reference: str = ""

    @property
    def uses_base(self) -> bool:
        return self.base != "none"

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def param_names(self) -> str:
        return ", ".join(sorted(p.name for p in self.params)) or "no parameters"

    def arity(self) -> str:
        words = {1: "one", 2: "two", 3: "three"}
        lo = words.get(self.min_models, str(self.min_models))
        if self.max_models == self.min_models:
            return f"exactly {lo} model" + ("s" if self.min_models != 1 else "")
        return f"at least {lo} models" + (" (the base included)" if self.uses_base else "")

    def merge(self, base, others: Sequence[np.ndarray], params: dict,
              model_params: Sequence[dict], rule=None) -> np.ndarray:
        base = None if base is None else np.asarray(base, np.float32)
        others = [np.asarray(x, np.float32) for x in others]
        return np.asarray(self.fn(base, others, params=params, model_params=list(model_params),
                                  rule=rule), np.float32)

    # ---- values given as flags or Python arguments (recipes resolve their own) ----------

    def resolve(self, values: dict, n_models: int, where: str = "command line"):
        """(global params, [per-model params] * n_models) from `values` (mergekit names;
        a per-model value is a scalar for all models or a list with one per model),
        defaults filled in and every value checked."""
        unknown = sorted(set(values) - {p.name for p in self.params})
        if unknown:
            raise SolarError(f"{self.name} takes no parameter {unknown[0]!r} "
                             f"(it takes {self.param_names()})")
        globals_, per_model = {}, [{} for _ in range(n_models)]
        for p in self.params:
            value = values.get(p.name)
            if value is None:
                value = p.default_for(n_models)
                if value is REQUIRED:
                    flag = f" (--{p.flag.lstrip('-')})" if p.flag else ""
                    raise SolarError(f"{self.name} needs {p.name}{flag}: {p.help}")
            if not p.per_model:
                if isinstance(value, (list, tuple)):
                    raise SolarError(f"{where}: {p.name} is one value for the whole merge, "
                                     f"got {len(value)}")
                p.validate(value, where)
                globals_[p.name] = p.kind(value)
                continue
            given = list(value) if isinstance(value, (list, tuple)) else [value] * n_models
            if len(given) != n_models:
                plural = p.name[:-1] + "ies" if p.name.endswith("y") else p.name + "s"
                models = "model" if n_models == 1 else "models"
                raise SolarError(f"{len(given)} {plural} given for {n_models} {models}; give "
                                 f"one per model (or one for all)")
            for k, v in enumerate(given):
                if v is not None:
                    p.validate(v, where)
                    per_model[k][p.name] = p.kind(v)
        return globals_, per_model


_REGISTRY: dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    if method.name in _REGISTRY:
        raise ValueError(f"merge method {method.name!r} registered twice")
    _REGISTRY[method.name] = method
    return method


def names(*, stacks_layers: bool | None = None) -> list[str]:
    return [m.name for m in _REGISTRY.values()
            if stacks_layers is None or m.stacks_layers == stacks_layers]


def methods() -> list[MergeMethod]:
    return list(_REGISTRY.values())


def get(name, what: str = "merge method") -> MergeMethod:
    if name not in _REGISTRY:
        raise SolarError(f"unknown {what} {name!r}; use one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]
