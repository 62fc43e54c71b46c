"""RecipeSource: the model a recipe describes, as a ParamSource computed leaf by leaf.

Up-scaling (passthrough) and merging (every other method of `solar_jax.merge_methods`)
are both "each output layer is a function of some layers of some input models", so one
source serves both: `open_recipe` opens every model (headers only), checks the recipe
against them and resolves every parameter of every output tensor; `read_leaf` then builds
a stacked leaf from the inputs' leaves with the method's tensor function. The writers `convert` uses
(solar-jax, HF, GGUF) consume it like any other source, so DUS and merges stream exactly
as convert does and inherit its atomic, nothing-at-DST-on-error output.

Which input weights feed which output, following mergekit: layer o of slice s reads layer
start+o of every source of s. Embeddings come from the first slice's sources and the final
norm / LM head from the last slice's; for passthrough (a single source per slice) these
three come from the base model instead: SOLAR's up-scaled model keeps its base's ends.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from solar_jax import merge_methods
from solar_jax.checkpoint import hf_names
from solar_jax.checkpoint.output import write_source
from solar_jax.checkpoint.recipe_plan import Job, build_plan
from solar_jax.checkpoint.opener import open_source
from solar_jax.checkpoint.sources import ParamSource
from solar_jax.destination import check_destination
from solar_jax.errors import SolarError
from solar_jax.recipes import Recipe, write_recipe_file


class RecipeSource(ParamSource):
    def __init__(self, sources: dict[str, ParamSource], base: str, plan,
                 recipe: Recipe | None = None):
        self.sources = sources
        self.base = sources[base]
        self.plan = plan  # recipe_plan.Plan
        self.recipe = recipe  # kept with the output (mergekit_config.yml), as mergekit does
        self.location = self.base.location
        self.config = self.base.config.replace(num_layers=len(plan.layers))
        self.method = merge_methods.get(plan.method)
        self.rules = {r.path: r for r in hf_names.rules_for(self.config)}
        # one output layer needs one layer of each input it reads: true where every input
        # reads single layers (a solar-jax checkpoint reads whole leaves)
        self.layer_reads = all(s.layer_reads for s in sources.values())

    @property
    def extras_source(self) -> ParamSource:
        """The input whose tokenizer and extra files the output carries (the base)."""
        return self.base

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
        rule = self.rules.get(path)
        if path[0] != "layers":
            return self._run(self.plan.globals[path],
                             lambda key, layer: self.sources[key].read_leaf(path), dtype, rule)
        layers = range(len(self.plan.layers)) if layers is None else list(layers)
        jobs = [self.plan.jobs[path][o] for o in layers]
        if self.method.stacks_layers:
            return self._passthrough(path, jobs, dtype)
        reader = _LayerReader(self.sources, path)
        out = None
        for slot, job in enumerate(jobs):
            merged = self._run(job, reader.get, dtype, rule)
            if out is None:
                out = np.empty((len(jobs), *merged.shape), dtype)
            out[slot] = merged
        return out

    def stored_tensor(self, path, index, dtype):
        """A passthrough copy of one input tensor, unscaled and in its dtype, is that
        input's stored bytes (an HF input's file range): the HF writer copies them."""
        path = tuple(path)
        if not self.method.stacks_layers:
            return None
        job = self.plan.jobs[path][index] if path[0] == "layers" else self.plan.globals[path]
        if len(job.inputs) != 1 or job.model_params[0].get("scale") not in (None, 1):
            return None
        key, layer = job.inputs[0]
        return self.sources[key].stored_tensor(path, layer or 0, dtype)

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
            scale = job.model_params[0].get("scale")
            if scale is not None and scale != 1:
                out[slot] = (out[slot].astype(np.float32) * np.float32(scale)).astype(dtype)
        return out

    def _run(self, job: Job, get, dtype, rule) -> np.ndarray:
        """One output tensor from its job; `get(source_key, layer)` reads an input tensor."""
        arrays = [get(key, layer) for key, layer in job.inputs]
        if self.method.stacks_layers:  # a copy, in the input's dtype unless scaled
            x = arrays[0]
            scale = job.model_params[0].get("scale")
            if scale is not None and scale != 1:
                x = x.astype(np.float32) * np.float32(scale)
            return x.astype(dtype, copy=False)
        others = [a for k, a in enumerate(arrays) if k != job.base]
        model_params = [p for k, p in enumerate(job.model_params) if k != job.base]
        base = arrays[job.base] if job.base is not None else None
        return self.method.merge(base, others, job.params, model_params, rule).astype(dtype)

    def copy_extras(self, dst: Path) -> None:
        self.base.copy_extras(dst)
        if self.recipe is not None:
            write_recipe_file(self.recipe, dst)


class _LayerReader:
    """One layer of one leaf of one input. Per-tensor formats (HF, GGUF) and layer-chunked
    solar-jax checkpoints read just that layer; a checkpoint that stores the stacked leaf
    in one chunk is read once per leaf and indexed."""

    def __init__(self, sources: dict[str, ParamSource], path):
        self.sources, self.path, self.cache = sources, path, {}

    def get(self, key: str, layer: int) -> np.ndarray:
        source = self.sources[key]
        if source.layer_reads:
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
    return RecipeSource(sources, plan.base, plan, recipe)


def write_recipe(source: RecipeSource, dst, *, to: str = "solar",
                 max_shard_size: str | int = "5GB", overwrite: bool = False,
                 quant: str | None = None, tokenizer: bool = True) -> Path:
    """Write the recipe's model in any format `convert` writes (solar, hf, gguf), with the
    same streaming writers. The dtype is the plan's (leaf_spec); GGUF encodes by `quant`."""
    # a GGUF of a merge is named after its file, not after the base it started from
    name = Path(dst).name.removesuffix(".gguf") if to == "gguf" else None
    return write_source(source, dst, to=to, max_shard_size=max_shard_size, overwrite=overwrite,
                        quant=quant, tokenizer=tokenizer, name=name)


def _models(recipe: Recipe) -> list[str]:
    out = [recipe.base_model] if recipe.base_model else []
    for s in recipe.slices:
        out += [src.model for src in s.sources]
    return out


def _key(model: str) -> str:
    return str(Path(model).absolute())

