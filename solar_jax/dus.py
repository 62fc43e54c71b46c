"""Depth Up-Scaling (SOLAR, arXiv:2312.15166): a deeper model from slices of a shallower one.

SOLAR takes an n-layer model, keeps layers [0, n-m) of one copy and [m, n) of another and
stacks them: 2(n-m) layers (Mistral 7B, n=32, m=8 -> 48 layers, SOLAR 10.7B). Our params
keep every layer stacked on axis 0, so any recipe of ranges is one concatenation of
slices of that axis per leaf; embeddings, final norm and LM head are shared unchanged.

`upscale` does this on a params tree (host or device arrays, also inside jit: the ranges
are static); `upscale_checkpoint` streams it between files via RecipeSource.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from solar_jax import merge_methods
from solar_jax.checkpoint.output import check_output
from solar_jax.checkpoint.recipe_source import open_recipe, write_recipe
from solar_jax.checkpoint.opener import open_source
from solar_jax.config import ModelConfig
from solar_jax.errors import SolarError
from solar_jax.recipes import InputSlice, OutputSlice, Recipe, load_recipe

Range = tuple[int, int]


def solar_ranges(n: int, m: int) -> list[Range]:
    """SOLAR's recipe: [0, n-m) then [m, n), 2(n-m) layers."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
        raise SolarError(f"m must be a non-negative integer, got {m!r}")
    if m >= n:
        raise SolarError(f"m={m} must be smaller than the model's {n} layers "
                         f"(SOLAR removes m layers from each of two copies)")
    return [(0, n - m), (m, n)]


def check_ranges(ranges: Sequence[Sequence[int]], n: int, what: str = "the model") -> list[Range]:
    """Half-open (start, end) ranges, each inside an n-layer model; at least one."""
    ranges = list(ranges)
    if not ranges:
        raise SolarError("an up-scaling recipe needs at least one slice")
    out = []
    for k, r in enumerate(ranges, 1):
        if (len(r) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in r)):
            raise SolarError(f"slice {k}: layer range must be two integers, got {r!r}")
        a, b = r
        if not 0 <= a < b <= n:
            raise SolarError(f"slice {k}: layer_range [{a}, {b}] is outside {what} with {n} "
                             f"layers (half-open, need 0 <= start < end <= {n})")
        out.append((a, b))
    return out


def upscale(params: dict, config: ModelConfig, ranges: Sequence[Sequence[int]]):
    """(params, config) of the model whose layers are the given ranges of this one's.

    Pure: leaves outside `layers` are passed through, each stacked leaf becomes a
    concatenation of static slices of axis 0, so it works on numpy arrays, sharded device
    arrays and tracers inside jit alike.
    """
    import jax  # on use: the file-to-file upscale below streams numpy and never needs it
    import jax.numpy as jnp

    ranges = check_ranges(ranges, config.num_layers)
    stacked = {x.shape[0] for x in jax.tree.leaves(params["layers"])}
    if stacked != {config.num_layers}:
        raise SolarError(f"params have {sorted(stacked)} stacked layers but config.num_layers "
                         f"is {config.num_layers}")
    total = sum(b - a for a, b in ranges)

    def cut(x):
        if len(ranges) == 1:
            a, b = ranges[0]
            return x[a:b]
        return jnp.concatenate([x[a:b] for a, b in ranges], axis=0)

    out = dict(params)
    out["layers"] = jax.tree.map(cut, params["layers"])
    return out, config.replace(num_layers=total)


def upscale_checkpoint(src: str | Path, dst: str | Path, *, m: int | None = None,
                       recipe: str | Path | None = None, to: str = "solar",
                       dtype: str | None = None, max_shard_size: str | int = "5GB",
                       overwrite: bool = False, quant: str | None = None,
                       tokenizer: bool = True) -> Path:
    """Up-scale SRC into DST (any format convert writes: to="solar" | "hf" | "gguf", GGUF
    encoded by `quant`): SOLAR's recipe with `m`, or a mergekit passthrough `recipe` (SRC
    is the model of slices that name none). Everything is validated from headers before
    any tensor is read; tensors then stream one stacked leaf at a time."""
    if (m is None) == (recipe is None):
        raise SolarError("give either --m (SOLAR's recipe) or --recipe RECIPE.yaml")
    check_output(to, dst, dtype=dtype, quant=quant, tokenizer=tokenizer)
    if recipe is not None:
        plan = load_recipe(recipe, default_model=str(src))
        if not merge_methods.get(plan.merge_method).stacks_layers:
            raise SolarError(f"recipe merge_method is {plan.merge_method!r}; upscale runs "
                             f"passthrough recipes (weight merges: solar-jax merge)")
    else:
        n = open_source(Path(src).absolute()).config.num_layers
        plan = Recipe("passthrough", tuple(OutputSlice((InputSlice(str(src), r, {}),), {})
                                           for r in solar_ranges(n, m)))
    source = open_recipe(plan, dtype=dtype, dst=dst, overwrite=overwrite,
                         inputs=[src, recipe])
    return write_recipe(source, dst, to=to, max_shard_size=max_shard_size, overwrite=overwrite,
                        quant=quant, tokenizer=tokenizer)
