"""RecipeSource: the model a recipe describes, as a ParamSource computed leaf by leaf.

Up-scaling (passthrough) and merging (linear, slerp, task_arithmetic) are both "each
output layer is a function of some layers of some input models", so one source serves
both: `open_recipe` opens every model (headers only), checks the recipe against them and
resolves every parameter of every output tensor; `read_leaf` then builds a stacked leaf
from the inputs' leaves. write_solar / write_hf consume it like any other source, so DUS
and merges stream exactly as convert does and inherit its atomic, nothing-at-DST-on-error
output.

Which input weights feed which output, following mergekit: layer o of slice s reads layer
start+o of every source of s. Embeddings come from the first slice's sources and the final
norm / LM head from the last slice's; for passthrough (a single source per slice) these
three come from the base model instead: SOLAR's up-scaled model keeps its base's ends.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from solar_jax.checkpoint.recipe_plan import Job, build_plan
from solar_jax.checkpoint.sources import NamedTensorSource, ParamSource, open_source
from solar_jax.checkpoint.writers import write_hf, write_solar
from solar_jax.destination import check_destination
from solar_jax.errors import SolarError
from solar_jax.merge import linear, slerp, task_arithmetic
from solar_jax.recipes import Recipe

FORMATS = ("solar", "hf")


class RecipeSource(ParamSource):
    def __init__(self, sources: dict[str, ParamSource], base: str, plan):
        self.sources = sources
        self.base = sources[base]
        self.plan = plan  # recipe_plan.Plan
        self.location = self.base.location
        self.config = self.base.config.replace(num_layers=len(plan.layers))

    def input_paths(self) -> list[Path]:
        return [p for source in self.sources.values() for p in source.input_paths()]

    def leaf_spec(self, path):
        shape, dtype = self.base.leaf_spec(path)
        if path[0] == "layers":
            shape = (len(self.plan.layers), *shape[1:])
        return tuple(shape), self.plan.out_dtype or dtype

    def read_leaf(self, path, layers=None):
        path = tuple(path)
        _, dtype = self.leaf_spec(path)
        if path[0] != "layers":
            return _run(self.plan.globals[path], lambda key, layer: self.sources[key].read_leaf(path),
                        dtype)
        layers = range(len(self.plan.layers)) if layers is None else list(layers)
        jobs = [self.plan.jobs[path][o] for o in layers]
        if self.plan.method == "passthrough":
            return self._passthrough(path, jobs, dtype)
        reader = _LayerReader(self.sources, path)
        out = None
        for slot, job in enumerate(jobs):
            merged = _run(job, reader.get, dtype)
            if out is None:
                out = np.empty((len(jobs), *merged.shape), dtype)
            out[slot] = merged
        return out

    def _passthrough(self, path, jobs: list[Job], dtype) -> np.ndarray:
        # One read per source model with all the layers it contributes (repeats included),
        # so a single-source recipe is exactly one `read_leaf` and no extra copy.
        by_source: dict[str, list[int]] = {}
        for slot, job in enumerate(jobs):
            by_source.setdefault(job.inputs[0][0], []).append(slot)
        out = None
        for key, slots in by_source.items():
            block = self.sources[key].read_leaf(path, layers=[jobs[s].inputs[0][1] for s in slots])
            if len(by_source) == 1 and block.dtype == dtype:
                out = block
            else:
                if out is None:
                    out = np.empty((len(jobs), *block.shape[1:]), dtype)
                out[slots] = block
            del block
        for slot, job in enumerate(jobs):
            if job.scale is not None and job.scale != 1:
                out[slot] = (out[slot].astype(np.float32) * np.float32(job.scale)).astype(dtype)
        return out

    def copy_extras(self, dst: Path) -> None:
        self.base.copy_extras(dst)


def _run(job: Job, get, dtype) -> np.ndarray:
    """One output tensor from its job; `get(source_key, layer)` reads an input tensor."""
    arrays = [get(key, layer) for key, layer in job.inputs]
    if job.method == "passthrough":
        x = arrays[0]
        if job.scale is not None and job.scale != 1:
            x = x.astype(np.float32) * np.float32(job.scale)
        return x.astype(dtype, copy=False)
    if job.method == "linear":
        out = linear(arrays, job.weights, job.normalize)
    elif job.method == "slerp":
        other = 1 - job.base
        out = slerp(arrays[job.base], arrays[other], job.t)
    else:
        rest = [a for k, a in enumerate(arrays) if k != job.base]
        out = task_arithmetic(arrays[job.base], rest, job.weights, job.normalize, job.lam)
    return out.astype(dtype)


class _LayerReader:
    """One layer of one leaf of one input. Per-tensor formats (HF, GGUF) read just that
    layer; a solar-jax checkpoint stores the stacked leaf whole, so it is read once per
    leaf and indexed."""

    def __init__(self, sources: dict[str, ParamSource], path):
        self.sources, self.path, self.cache = sources, path, {}

    def get(self, key: str, layer: int) -> np.ndarray:
        source = self.sources[key]
        if isinstance(source, NamedTensorSource):
            return source.read_leaf(self.path, layers=[layer])[0]
        if key not in self.cache:
            self.cache[key] = source.read_leaf(self.path)
        return self.cache[key][layer]


def open_recipe(recipe: Recipe, *, dtype: str | None = None, dst=None,
                overwrite: bool = False, inputs=()) -> RecipeSource:
    """Open and check every model of `recipe` and resolve all its parameters; no tensor
    data is read. `dtype` overrides the recipe's output dtype. With `dst`, the destination
    guard runs first against every model and the extra `inputs` (the recipe file)."""
    models = _models(recipe)
    if dst is not None:
        check_destination(dst, [*models, *inputs], overwrite=overwrite)
    sources: dict[str, ParamSource] = {}
    for model in models:
        key = _key(model)
        if key not in sources:
            sources[key] = open_source(key)  # absolute: orbax misreads relative paths
    plan = build_plan(recipe, sources, _key, dtype)
    return RecipeSource(sources, plan.base, plan)


def write_recipe(source: RecipeSource, dst, *, to: str = "solar",
                 max_shard_size: str | int = "5GB", overwrite: bool = False) -> Path:
    if to not in FORMATS:
        raise SolarError(f"unknown output format {to!r}; use one of {', '.join(FORMATS)}")
    if to == "solar":
        return write_solar(source, dst, overwrite=overwrite)
    return write_hf(source, dst, max_shard_size=max_shard_size, overwrite=overwrite)


def _models(recipe: Recipe) -> list[str]:
    out = [recipe.base_model] if recipe.base_model else []
    for s in recipe.slices:
        out += [src.model for src in s.sources]
    return out


def _key(model: str) -> str:
    return str(Path(model).absolute())

