"""Model merging: linear averaging, slerp and task arithmetic, tensor by tensor in fp32.

The array functions follow mergekit's definitions exactly (so recipes give the same
models), with the arithmetic always in fp32 whatever the stored dtype:

    linear           sum_i w_i x_i  (/ sum_i w_i when normalize)
    slerp            per tensor: angle between the normalized tensors, interpolate the
                     original tensors along the great circle; lerp when |cos| > 0.9995
    task_arithmetic  base + lambda * sum_i w_i (x_i - base)  (/ sum_i w_i when normalize)

`merge_params` applies them to in-memory params trees; `merge_checkpoints` streams files
through `RecipeSource`, one tensor (one layer of a stacked leaf) at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from solar_jax.errors import SolarError

METHODS = ("linear", "slerp", "task_arithmetic")
DOT_THRESHOLD = 0.9995  # mergekit's: above it the tensors are treated as colinear
EPS = 1e-8


def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def linear(arrays: Sequence[np.ndarray], weights: Sequence[float],
           normalize: bool = True) -> np.ndarray:
    if len(arrays) != len(weights):
        raise SolarError(f"{len(weights)} weights for {len(arrays)} models")
    out = np.zeros(np.shape(arrays[0]), np.float32)
    for x, w in zip(arrays, weights):
        out += np.float32(w) * _f32(x)
    if normalize:
        total = float(np.float32(sum(np.float32(w) for w in weights)))
        if total == 0:
            raise SolarError("linear merge weights sum to 0; cannot normalize "
                             "(pass --no-normalize or other weights)")
        out /= np.float32(total)
    return out


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation from `a` (t=0) to `b` (t=1), treating each tensor as one
    vector; the normalized copies only give the angle, the originals are interpolated."""
    a, b = _f32(a), _f32(b)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    ua = a / na if na > EPS else a
    ub = b / nb if nb > EPS else b
    dot = np.sum(ua * ub)
    if np.abs(dot) > DOT_THRESHOLD:
        return (1 - t) * a + t * b
    theta0 = np.arccos(dot)
    sin0 = np.sin(theta0)
    theta_t = theta0 * t
    s0 = np.sin(theta0 - theta_t) / sin0
    s1 = np.sin(theta_t) / sin0
    return (s0 * a + s1 * b).astype(np.float32)


def task_arithmetic(base: np.ndarray, arrays: Sequence[np.ndarray], weights: Sequence[float],
                    normalize: bool = False, lam: float = 1.0) -> np.ndarray:
    if len(arrays) != len(weights):
        raise SolarError(f"{len(weights)} weights for {len(arrays)} models")
    base = _f32(base)
    delta = np.zeros(base.shape, np.float32)
    for x, w in zip(arrays, weights):
        delta += np.float32(w) * (_f32(x) - base)
    if normalize:
        total = float(sum(weights))
        delta /= np.float32(total if abs(total) >= 1e-8 else 1.0)  # mergekit's guard
    return base + np.float32(lam) * delta


# ---- whole params trees in memory ---------------------------------------------------------


def check_method_args(method: str, n: int, weights, t, normalize) -> tuple[list[float], bool]:
    """Validate and default the arguments of a merge of n models (the base not counted)."""
    if method not in METHODS:
        raise SolarError(f"unknown merge method {method!r}; use one of {', '.join(METHODS)}")
    if method == "slerp":
        if t is None:
            raise SolarError("slerp needs t (the interpolation factor toward the second model)")
        if not 0.0 <= float(t) <= 1.0:
            raise SolarError(f"t must be in [0, 1], got {t}")
        if weights is not None or normalize is not None:
            raise SolarError("slerp takes t only, not weights or normalize")
        return [], False
    if t is not None:
        raise SolarError(f"{method} takes weights, not t")
    if weights is None:
        weights = [1.0 / n] * n if method == "linear" else [1.0] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise SolarError(f"{len(weights)} weights given for {n} models; give one per model")
    if normalize is None:
        normalize = method == "linear"  # mergekit's defaults
    if method == "linear" and normalize and sum(weights) == 0:
        raise SolarError("linear merge weights sum to 0; cannot normalize")
    return weights, bool(normalize)


def merge_params(params_list: Sequence[dict], method: str, *, weights=None, t=None,
                 base: dict | None = None, normalize: bool | None = None) -> dict:
    """Merge params trees of one architecture (e.g. `Model.params`) on the host.

    linear: weighted average of all trees; slerp: exactly two trees, t toward the second;
    task_arithmetic: `base` plus the weighted task vectors of the trees. The result has
    the dtype of the first tree. Stacked layer leaves are merged layer by layer, as each
    layer is its own tensor in mergekit (this matters for slerp's angle).
    """
    import jax

    params_list = list(params_list)
    if not params_list:
        raise SolarError("nothing to merge")
    weights, normalize = check_method_args(method, len(params_list), weights, t, normalize)
    if method == "slerp" and len(params_list) != 2:
        raise SolarError(f"slerp merges exactly two models, got {len(params_list)}")
    if method == "task_arithmetic" and base is None:
        raise SolarError("task_arithmetic needs a base model")
    trees = params_list + ([base] if method == "task_arithmetic" else [])
    flat = [jax.tree_util.tree_flatten_with_path(tree) for tree in trees]
    for k, (leaves, treedef) in enumerate(flat[1:], 1):
        if treedef != flat[0][1]:
            raise SolarError(f"model {k + 1} has a different parameter tree than model 1")

    def one(arrays: list[np.ndarray]) -> np.ndarray:
        if method == "linear":
            return linear(arrays, weights, normalize)
        if method == "slerp":
            return slerp(arrays[0], arrays[1], float(t))
        return task_arithmetic(arrays[-1], arrays[:-1], weights, normalize)

    out = []
    for i, (path, first) in enumerate(flat[0][0]):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        arrays = [np.asarray(jax.device_get(f[0][i][1])) for f in flat]
        for k, a in enumerate(arrays[1:], 1):
            if a.shape != arrays[0].shape:
                raise SolarError(f"cannot merge: tensor {name} has shape {list(a.shape)} in "
                                 f"model {k + 1} but {list(arrays[0].shape)} in model 1")
        if name.startswith("layers/"):  # stacked: one tensor per layer
            merged = np.stack([one([a[l] for a in arrays]) for l in range(arrays[0].shape[0])])
        else:
            merged = one(arrays)
        out.append(merged.astype(np.asarray(first).dtype))
    return jax.tree_util.tree_unflatten(flat[0][1], out)


# ---- checkpoints on disk ------------------------------------------------------------------


def merge_checkpoints(models: Sequence[str | Path] | None, dst: str | Path, *,
                      method: str | None = None, weights=None, t=None, base=None,
                      normalize: bool | None = None, recipe: str | Path | None = None,
                      to: str = "solar", dtype: str | None = None,
                      max_shard_size: str | int = "5GB", overwrite: bool = False) -> Path:
    """Merge checkpoints (any format convert reads) into DST, streaming tensor by tensor.

    Either flags (models, method, weights/t, base, normalize) or a mergekit `recipe`
    (linear, slerp or task_arithmetic); everything is validated before a tensor is read.
    """
    from solar_jax.checkpoint.recipe_source import open_recipe, write_recipe
    from solar_jax.recipes import load_recipe

    if recipe is not None:
        given = [f for f, v in (("models", models), ("method", method), ("weights", weights),
                                ("t", t), ("base", base), ("normalize", normalize))
                 if v is not None and v != []]
        if given:
            raise SolarError(f"with a recipe, give {given[0]} in the recipe, not on the "
                             f"command line")
        plan = load_recipe(recipe)
        if plan.merge_method not in METHODS:
            raise SolarError(f"recipe merge_method is {plan.merge_method!r}; merge runs "
                             f"{', '.join(METHODS)} (passthrough recipes: solar-jax upscale)")
    else:
        plan = recipe_from_flags(models or [], method, weights, t, base, normalize)
    source = open_recipe(plan, dtype=dtype, dst=dst, overwrite=overwrite, inputs=[recipe])
    return write_recipe(source, dst, to=to, max_shard_size=max_shard_size, overwrite=overwrite)


def recipe_from_flags(models, method, weights, t, base, normalize):
    """The command line's merge as a recipe in `models:` form (so one code path runs both)."""
    from solar_jax.recipes import InputSlice, OutputSlice, Recipe

    models = [str(m) for m in models]
    if method is None:
        raise SolarError("choose a merge method with --method (linear, slerp, task_arithmetic)")
    if not models:
        raise SolarError("no models to merge")
    if method == "linear" and base is not None:
        raise SolarError("linear merges take no --base (it weights every model)")
    if method == "task_arithmetic" and base is None:
        raise SolarError("task_arithmetic needs --base (the model the task vectors start from)")
    if method == "slerp":
        pair = models if base is None or str(base) in models else [str(base), *models]
        if len(pair) != 2:
            raise SolarError(f"slerp merges exactly two models, got {len(pair)}")
        base = base if base is not None else pair[0]
        models = pair
    n = len(models)
    weights, normalize = check_method_args(method, n, weights, t, normalize)
    sources = tuple(InputSlice(m, None, {"weight": w} if weights else {})
                    for m, w in zip(models, weights or [None] * n))
    params = {"t": float(t)} if method == "slerp" else {"normalize": normalize}
    return Recipe(method, (OutputSlice(sources, {}),), base_model=str(base) if base else None,
                  parameters=params, from_models=True)
