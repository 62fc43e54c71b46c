"""A recipe checked against its opened models and resolved to one `Job` per output tensor.

Everything a bad recipe can get wrong is found here, from configs and tensor headers, so a
mistake costs no tensor reads and leaves nothing at DST: layer ranges inside their models,
slice arity for the method, architectures that match (a merge names the first tensor whose
shape differs), and every parameter (weights, t, ...) resolved for every tensor the way
mergekit resolves it (source, then slice, then global parameters; gradients over a slice's
layers; filters matched against Hugging Face tensor names).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from solar_jax.checkpoint import hf_names
from solar_jax.checkpoint.sources import ParamSource
from solar_jax.checkpoint.writers import numpy_dtype
from solar_jax.config import canonical_dtype
from solar_jax.errors import SolarError
from solar_jax.recipes import OutputSlice, Recipe, evaluate_setting

# Config fields two models must share for their layers to be interchangeable.
ARCH_FIELDS = ("model_type", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
               "intermediate_size", "vocab_size")


@dataclasses.dataclass(frozen=True)
class Job:
    """How to compute one output tensor: `inputs` are (model key, layer or None)."""
    method: str
    inputs: tuple[tuple[str, int | None], ...]
    scale: float | None = None          # passthrough
    weights: tuple[float, ...] = ()     # linear: one per input; task_arithmetic: non-base
    normalize: bool = False
    t: float = 0.0                      # slerp
    base: int = 0                       # slerp / task_arithmetic: index of the base input
    lam: float = 1.0                    # task_arithmetic's lambda


@dataclasses.dataclass
class Plan:
    method: str
    base: str                           # key of the base model
    layers: list[int]                   # output layer -> slice index
    jobs: dict                          # stacked leaf path -> [Job per output layer]
    globals: dict                       # other leaf paths -> Job
    out_dtype: np.dtype | None


@dataclasses.dataclass(frozen=True)
class _Input:
    key: str
    name: str                           # the model as the recipe wrote it
    start: int
    end: int
    params: dict
    where: str


def build_plan(recipe: Recipe, sources: dict[str, ParamSource], key, dtype: str | None) -> Plan:
    method = recipe.merge_method
    base = key(recipe.base_model) if recipe.base_model else key(recipe.slices[0].sources[0].model)
    slices = [_inputs(k, s, sources, key) for k, s in enumerate(recipe.slices, 1)]
    if recipe.from_models and method in ("slerp", "task_arithmetic"):
        if all(i.key != base for i in slices[0]):  # mergekit adds a base missing from `models`
            n = sources[base].config.num_layers
            slices[0].append(_Input(base, recipe.base_model, 0, n, {}, "base_model"))
    for k, inputs in enumerate(slices, 1):
        _check_slice(method, k, inputs, base, recipe.from_models)
    _check_compatible(method, base, recipe, slices, sources)

    out_dtype = None
    if dtype is not None or recipe.dtype is not None:
        out_dtype = numpy_dtype(canonical_dtype(dtype or recipe.dtype))
    config = sources[base].config.replace(num_layers=sum(i[0].end - i[0].start for i in slices))
    resolver = _Resolver(recipe, method, base)
    rules = hf_names.rules_for(config)
    plan = Plan(method, base, [], {r.path: [] for r in rules if r.stacked}, {}, out_dtype)
    for k, inputs in enumerate(slices):
        n = inputs[0].end - inputs[0].start
        for o in range(n):
            t = o / (n - 1) if n > 1 else 1.0  # position in the slice, for gradients
            out_layer = len(plan.layers)
            plan.layers.append(k)
            for rule in rules:
                if rule.stacked:
                    names = [rule.hf_name.format(i=i.start + o) for i in inputs]
                    plan.jobs[rule.path].append(resolver.job(
                        recipe.slices[k], inputs, [i.start + o for i in inputs],
                        rule.hf_name.format(i=out_layer), names, t))
    for rule in rules:
        if not rule.stacked:  # embeddings from the first slice, the rest from the last
            first = rule.path[0] == "embed"
            k = 0 if first else len(slices) - 1
            inputs = slices[k]
            if method == "passthrough":
                inputs = [_Input(base, "", 0, 0, {}, "base_model")]
            plan.globals[rule.path] = resolver.job(
                recipe.slices[k], inputs, [None] * len(inputs), rule.hf_name,
                [rule.hf_name] * len(inputs), 0.0 if first else 1.0)
    return plan


def _inputs(k: int, s: OutputSlice, sources, key) -> list[_Input]:
    out = []
    for j, src in enumerate(s.sources, 1):
        n = sources[key(src.model)].config.num_layers
        a, b = src.layer_range if src.layer_range is not None else (0, n)
        where = f"slice {k} source {j} ({src.model})" if src.layer_range else f"model {src.model}"
        if not 0 <= a < b <= n:
            raise SolarError(f"{where}: layer_range [{a}, {b}] is outside the model's {n} "
                             f"layers (half-open, need 0 <= start < end <= {n})")
        out.append(_Input(key(src.model), src.model, a, b, src.parameters, where))
    return out


def _check_slice(method: str, k: int, inputs: list[_Input], base: str, from_models: bool):
    where = "models" if from_models else f"slice {k}"
    lengths = {i.end - i.start for i in inputs}
    if len(lengths) > 1:
        counts = ", ".join(f"{i.name}: {i.end - i.start}" for i in inputs)
        what = "the models have" if from_models else f"slice {k} sources have"
        raise SolarError(f"{what} different numbers of layers ({counts}); "
                         f"merged layers must pair up one to one")
    if method == "passthrough" and len(inputs) != 1:
        raise SolarError(f"{where}: passthrough takes exactly one source per slice, "
                         f"got {len(inputs)}")
    if method in ("linear", "task_arithmetic") and len(inputs) < 2:
        raise SolarError(f"{where}: {method} needs at least two models (the base and one "
                         f"more for task_arithmetic), got {len(inputs)}; a single model would "
                         f"only be copied (solar-jax convert does that)")
    if method == "slerp" and len(inputs) != 2:
        raise SolarError(f"{where}: slerp merges exactly two models, got {len(inputs)}")
    if method in ("slerp", "task_arithmetic") and all(i.key != base for i in inputs):
        raise SolarError(f"{where}: base_model is not among the sources; {method} "
                         f"starts from the base")


def _check_compatible(method, base, recipe, slices, sources) -> None:
    ref = sources[base]
    for inputs in slices:
        for inp in inputs:
            other = sources[inp.key]
            if other is ref:
                continue
            if method != "passthrough":
                _check_tensors(ref, other, inp.name, recipe.base_model or slices[0][0].name)
            for field in ARCH_FIELDS:
                a, b = getattr(other.config, field), getattr(ref.config, field)
                if a != b:
                    raise SolarError(f"{inp.where}: {field} is {a}, but the base model has {b}; "
                                     f"models must share an architecture")


def _check_tensors(ref: ParamSource, other: ParamSource, name: str, ref_name: str) -> None:
    """Name the first tensor whose per-layer shape differs (or that one model lacks)."""
    theirs = {r.path: r for r in hf_names.rules_for(other.config)}
    for rule in hf_names.rules_for(ref.config):
        label = rule.hf_name.replace("{i}", "*")
        if rule.path not in theirs:
            raise SolarError(f"cannot merge: tensor {label} is missing in {name} "
                             f"(tied embeddings) but present in {ref_name}")
        a, b = (tuple(s.leaf_spec(rule.path)[0]) for s in (ref, other))
        if rule.stacked:
            a, b = a[1:], b[1:]
        if a != b:
            ha, hb = hf_names.hf_shape(rule, a), hf_names.hf_shape(rule, b)
            raise SolarError(f"cannot merge: tensor {label} has shape {list(hb)} in {name} "
                             f"but {list(ha)} in {ref_name}")
    if len(theirs) != len(hf_names.rules_for(ref.config)):
        raise SolarError(f"cannot merge: tensor lm_head.weight is present in {name} but "
                         f"missing in {ref_name} (tied embeddings)")


class _Resolver:
    def __init__(self, recipe: Recipe, method: str, base: str):
        self.recipe, self.method, self.base = recipe, method, base

    def get(self, name, out_slice: OutputSlice, inp, tensor: str, t: float, default=None):
        levels = ([inp.params] if inp is not None else []) + [out_slice.parameters,
                                                             self.recipe.parameters]
        for params in levels:
            if name in params:
                value = evaluate_setting(params[name], tensor, t)
                if value is not None:
                    return value
        return default

    def job(self, out_slice, inputs: list[_Input], layers, out_name: str, in_names, t) -> Job:
        refs = tuple((i.key, layer) for i, layer in zip(inputs, layers))
        m = self.method
        if m == "passthrough":
            return Job(m, refs, scale=self.get("scale", out_slice, None, out_name, t))
        if m == "slerp":
            value = self.get("t", out_slice, None, out_name, t)
            if value is None:
                raise SolarError(f"slerp needs parameter t (none given for {out_name})")
            base = next(k for k, i in enumerate(inputs) if i.key == self.base)
            return Job(m, refs, t=float(value), base=base)
        base = next((k for k, i in enumerate(inputs) if i.key == self.base), 0)
        weighted = [(i, n) for k, (i, n) in enumerate(zip(inputs, in_names))
                    if m == "linear" or k != base]
        weights = []
        for inp, name in weighted:
            w = self.get("weight", out_slice, inp, name, t)
            if w is None:
                raise SolarError(f"{inp.where}: no weight for {name} ({m} needs one per model)")
            weights.append(float(w))
        normalize = bool(self.get("normalize", out_slice, None, out_name, t, m == "linear"))
        if m == "linear" and normalize and sum(weights) == 0:
            raise SolarError(f"linear weights for {out_name} sum to 0; cannot normalize")
        lam = float(self.get("lambda", out_slice, None, out_name, t, 1.0))
        return Job(m, refs, weights=tuple(weights), normalize=normalize, base=base, lam=lam)

