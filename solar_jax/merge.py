"""Model merging, tensor by tensor in fp32, with any method of `solar_jax.merge_methods`.

The methods (linear, slerp, task_arithmetic, ties, model_stock) follow mergekit's
definitions exactly, so recipes give the same models; each is one module declaring its
parameters, arity and tensor function. `merge_params` applies them to in-memory params
trees; `merge_checkpoints` streams files through `RecipeSource`, one tensor (one layer of
a stacked leaf) at a time, into any format `convert` writes.

Parameters use mergekit's names (`weight`, `density`, `t`, `normalize`, `lambda`, ...).
A per-model parameter is one value for every model or a list with one per model (the
base not counted); `weights=`, `t=` and `normalize=` are shorthands for the common ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from solar_jax import arch, merge_methods
from solar_jax.checkpoint.output import check_output
from solar_jax.checkpoint.recipe_source import open_recipe, write_recipe
from solar_jax.errors import SolarError
from solar_jax.merge_methods.linear import linear  # noqa: F401  (array functions, re-exported)
from solar_jax.merge_methods.model_stock import model_stock  # noqa: F401
from solar_jax.merge_methods.slerp import slerp  # noqa: F401
from solar_jax.merge_methods.task_arithmetic import task_arithmetic  # noqa: F401
from solar_jax.merge_methods.ties import ties  # noqa: F401
from solar_jax.recipes import InputSlice, OutputSlice, Recipe, load_recipe


def parameter_values(weights=None, t=None, normalize=None, parameters=None) -> dict:
    """The shorthand keywords folded into one mergekit-named dict."""
    values = dict(parameters or {})
    for name, value in (("weight", weights), ("t", t), ("normalize", normalize)):
        if value is None:
            continue
        if values.get(name) is not None:
            raise SolarError(f"{name} given twice (as a keyword and in parameters)")
        values[name] = list(value) if name == "weight" else value
    return values


# ---- whole params trees in memory ---------------------------------------------------------


def merge_params(params_list: Sequence[dict], method: str, *, base: dict | None = None,
                 weights=None, t=None, normalize: bool | None = None,
                 parameters: dict | None = None) -> dict:
    """Merge params trees of one architecture (e.g. `Model.params`) on the host.

    linear: weighted average of the trees; slerp: two trees, t toward the second (or
    `base` and one tree); task_arithmetic / ties / model_stock: `base` plus the trees.
    The result has the dtype of the base (else of the first tree). Stacked layer leaves
    are merged layer by layer, as each layer is its own tensor in mergekit (this matters
    for slerp's and model_stock's angles and for ties' trimming).
    """
    import jax  # on use: merge_checkpoints streams numpy and never needs it

    spec = merge_methods.get(method)
    if spec.stacks_layers:
        raise SolarError(f"{method} stacks layers; use solar_jax.dus.upscale")
    others = list(params_list)
    if not others:
        raise SolarError("nothing to merge")
    if spec.base == "none" and base is not None:
        raise SolarError(f"{method} takes no base (it weights every model)")
    if spec.base == "required" and base is None:
        raise SolarError(f"{method} needs a base model ({spec.base_help})")
    if spec.base == "first" and base is None:
        base, others = others[0], others[1:]
    count = len(others) + (base is not None)
    if count < spec.min_models or (spec.max_models is not None and count > spec.max_models):
        raise SolarError(f"{method} merges {spec.arity()}, got {count}")
    params, model_params = spec.resolve(parameter_values(weights, t, normalize, parameters),
                                        len(others), where="merge_params")
    trees = ([base] if base is not None else []) + others
    flat = [jax.tree_util.tree_flatten_with_path(tree) for tree in trees]
    for k, (leaves, treedef) in enumerate(flat[1:], 1):
        if treedef != flat[0][1]:
            raise SolarError(f"model {k + 1} has a different parameter tree than model 1")

    def one(arrays: list[np.ndarray], rule, name: str) -> np.ndarray:
        problem = spec.check(params, model_params, arrays[0].size) if spec.check else None
        if problem:
            raise SolarError(f"{name}: {problem}")
        if base is None:
            return spec.merge(None, arrays, params, model_params, rule)
        return spec.merge(arrays[0], arrays[1:], params, model_params, rule)

    out = []
    for i, (path, first) in enumerate(flat[0][0]):
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        name = "/".join(keys)
        arrays = [np.asarray(jax.device_get(f[0][i][1])) for f in flat]
        for k, a in enumerate(arrays[1:], 1):
            if a.shape != arrays[0].shape:
                raise SolarError(f"cannot merge: tensor {name} has shape {list(a.shape)} in "
                                 f"model {k + 1} but {list(arrays[0].shape)} in model 1")
        rule = arch.param_row(keys)
        if keys[0] == "layers":  # stacked: one tensor per layer
            merged = np.stack([one([a[l] for a in arrays], rule, f"{name}[{l}]")
                               for l in range(arrays[0].shape[0])])
        else:
            merged = one(arrays, rule, name)
        out.append(merged.astype(np.asarray(first).dtype))
    return jax.tree_util.tree_unflatten(flat[0][1], out)


# ---- checkpoints on disk ------------------------------------------------------------------


def merge_checkpoints(models: Sequence[str | Path] | None, dst: str | Path, *,
                      method: str | None = None, base=None, weights=None, t=None,
                      normalize: bool | None = None, parameters: dict | None = None,
                      recipe: str | Path | None = None, to: str = "solar",
                      dtype: str | None = None, quant: str | None = None,
                      tokenizer: bool = True, max_shard_size: str | int = "5GB",
                      overwrite: bool = False) -> Path:
    """Merge checkpoints (any format convert reads) into DST (any format convert writes:
    to="solar" | "hf" | "gguf", GGUF encoded by `quant`), streaming tensor by tensor.

    Either flags (models, method, base, parameters and the weights/t/normalize shorthands)
    or a mergekit `recipe`; everything is validated before a tensor is read.
    """
    check_output(to, dst, dtype=dtype, quant=quant, tokenizer=tokenizer)
    values = parameter_values(weights, t, normalize, parameters)
    if recipe is not None:
        given = [f for f, v in (("models", models), ("method", method), ("base", base),
                                *values.items()) if v is not None and v != []]
        if given:
            raise SolarError(f"with a recipe, give {given[0]} in the recipe, not on the "
                             f"command line")
        plan = load_recipe(recipe)
        if merge_methods.get(plan.merge_method).stacks_layers:
            raise SolarError(f"recipe merge_method is {plan.merge_method!r}; merge runs "
                             f"{', '.join(merge_methods.names(stacks_layers=False))} "
                             f"(passthrough recipes: solar-jax upscale)")
    else:
        plan = recipe_from_flags(models or [], method, base, values)
    source = open_recipe(plan, dtype=dtype, dst=dst, overwrite=overwrite, inputs=[recipe])
    return write_recipe(source, dst, to=to, max_shard_size=max_shard_size, overwrite=overwrite,
                        quant=quant, tokenizer=tokenizer)


def recipe_from_flags(models, method, base, values: dict) -> Recipe:
    """The command line's merge as a recipe in `models:` form (so one code path runs both):
    per-model values go on each model, the rest at the top level."""
    merging = merge_methods.names(stacks_layers=False)
    if method is None:
        raise SolarError(f"choose a merge method with --method ({', '.join(merging)})")
    spec = merge_methods.get(method)
    if spec.stacks_layers:
        raise SolarError(f"{method} stacks layers: use solar-jax upscale "
                         f"(merge runs {', '.join(merging)})")
    models = [str(m) for m in models]
    if not models:
        raise SolarError("no models to merge")
    if spec.base == "none" and base is not None:
        raise SolarError(f"{method} merges take no --base (it weights every model)")
    if spec.base == "required" and base is None:
        raise SolarError(f"{method} needs --base ({spec.base_help})")
    if spec.base == "first" and base is None:
        base = models[0]
    params, model_params = spec.resolve(values, len(models))
    sources = tuple(InputSlice(m, None, p) for m, p in zip(models, model_params))
    return Recipe(method, (OutputSlice(sources, {}),), base_model=str(base) if base else None,
                  parameters=params, from_models=True)
