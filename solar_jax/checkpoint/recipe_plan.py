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

from solar_jax import merge_methods
from solar_jax.checkpoint import hf_names
from solar_jax.checkpoint.sources import ParamSource
from solar_jax.checkpoint.writers import numpy_dtype
from solar_jax.config import canonical_dtype
from solar_jax.errors import SolarError
from solar_jax.recipes import OutputSlice, Recipe, evaluate_setting

@dataclasses.dataclass(frozen=True)
class Job:
    """How to compute one output tensor: `inputs` are (model key, layer or None); `params`
    are the method's global parameters and `model_params` one dict per input, all resolved
    for this tensor (the base's entry is empty: no method reads parameters of the base)."""
    method: str
    inputs: tuple[tuple[str, int | None], ...]
    base: int | None                    # index of the base among inputs; None: no base
    params: dict
    model_params: tuple[dict, ...]


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
    method = merge_methods.get(recipe.merge_method)
    if method.base == "required" and not recipe.base_model:
        raise SolarError(f"{method.name} needs base_model ({method.base_help})")
    base = key(recipe.base_model) if recipe.base_model else key(recipe.slices[0].sources[0].model)
    slices = [_inputs(k, s, sources, key) for k, s in enumerate(recipe.slices, 1)]
    if recipe.from_models and method.uses_base:
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
    numel = {r.path: int(np.prod(sources[base].leaf_spec(r.path)[0][1 if r.stacked else 0:]))
             for r in rules}
    plan = Plan(method.name, base, [], {r.path: [] for r in rules if r.stacked}, {}, out_dtype)
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
                        rule.hf_name.format(i=out_layer), names, t, numel[rule.path]))
    for rule in rules:
        if not rule.stacked:  # embeddings from the first slice, the rest from the last
            first = rule.path[0] == "embed"
            k = 0 if first else len(slices) - 1
            inputs = slices[k]
            if method.stacks_layers:
                inputs = [_Input(base, "", 0, 0, {}, "base_model")]
            plan.globals[rule.path] = resolver.job(
                recipe.slices[k], inputs, [None] * len(inputs), rule.hf_name,
                [rule.hf_name] * len(inputs), 0.0 if first else 1.0, numel[rule.path])
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


def _check_slice(method, k: int, inputs: list[_Input], base: str, from_models: bool):
    where = "models" if from_models else f"slice {k}"
    lengths = {i.end - i.start for i in inputs}
    if len(lengths) > 1:
        counts = ", ".join(f"{i.name}: {i.end - i.start}" for i in inputs)
        what = "the models have" if from_models else f"slice {k} sources have"
        raise SolarError(f"{what} different numbers of layers ({counts}); "
                         f"merged layers must pair up one to one")
    n = len(inputs)
    if method.stacks_layers and n != 1:
        raise SolarError(f"{where}: {method.name} takes exactly one source per slice, got {n}")
    if n < method.min_models or (method.max_models is not None and n > method.max_models):
        copy = ("; a single model would only be copied (solar-jax convert does that)"
                if n == 1 else "")
        raise SolarError(f"{where}: {method.name} merges {method.arity()}, got {n}{copy}")
    if method.uses_base and all(i.key != base for i in inputs):
        raise SolarError(f"{where}: base_model is not among the sources; {method.name} "
                         f"starts from the base")


def _check_compatible(method, base, recipe, slices, sources) -> None:
    ref = sources[base]
    for inputs in slices:
        for inp in inputs:
            other = sources[inp.key]
            if other is ref:
                continue
            if not method.stacks_layers:
                _check_tensors(ref, other, inp.name, recipe.base_model or slices[0][0].name)
            for field in ref.config.arch.interchange_fields:
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
    """Every parameter of one output tensor, looked up as mergekit does: the source's own
    parameters (per-model ones only), then the slice's, then the top level."""

    def __init__(self, recipe: Recipe, method, base: str):
        self.recipe, self.method, self.base = recipe, method, base

    def get(self, name, out_slice: OutputSlice, inp, tensor: str, t: float):
        levels = ([inp.params] if inp is not None else []) + [out_slice.parameters,
                                                             self.recipe.parameters]
        for params in levels:
            if name in params:
                value = evaluate_setting(params[name], tensor, t)
                if value is not None:
                    return value
        return None

    def job(self, out_slice, inputs: list[_Input], layers, out_name: str, in_names, t,
            numel: int) -> Job:
        m = self.method
        refs = tuple((i.key, layer) for i, layer in zip(inputs, layers))
        base = next((k for k, i in enumerate(inputs) if i.key == self.base), None)
        base = base if m.uses_base else None
        params = {}
        for p in m.params:
            if not p.per_model:
                params[p.name] = self._value(p, out_slice, None, out_name, t, out_name)
        model_params = []
        for k, (inp, name) in enumerate(zip(inputs, in_names)):
            model_params.append({} if k == base else {
                p.name: self._value(p, out_slice, inp, name, t, out_name)
                for p in m.params if p.per_model})
        problem = m.check(params, [mp for k, mp in enumerate(model_params) if k != base],
                          numel) if m.check else None
        if problem:
            raise SolarError(f"{out_name}: {problem}")
        return Job(m.name, refs, base, params, tuple(model_params))

    def _value(self, p, out_slice, inp, name: str, t: float, out_name: str):
        value = self.get(p.name, out_slice, inp, name, t)
        if value is None:
            if p.recipe_required or p.default is merge_methods.REQUIRED:
                if p.per_model:
                    raise SolarError(f"{inp.where}: no {p.name} for {name} ({self.method.name} "
                                     f"needs one per model)")
                raise SolarError(f"{self.method.name} needs parameter {p.name} (none given "
                                 f"for {out_name})")
            value = p.default_for(1)
        return value if value is None else p.kind(value)
