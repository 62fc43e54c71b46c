"""Config + params -> logits: the params tree's shapes, axes and initial values, and the
forward pass over a plain params pytree. (The loaded-model handle, `Model`, with its
tokenizer and `generate`, is solar_jax.handle.)

The NNX module tree is only a shape: we split it once into a graphdef and rebuild it
inside jit from whatever params pytree is passed, so callers (convert, DUS, merge, train)
work with plain nested dicts of arrays.
"""

from __future__ import annotations

import functools

import jax
from flax import nnx

from solar_jax.config import ModelConfig
from solar_jax.model.llama import CausalLM, DecoderBlock


@functools.lru_cache(maxsize=32)
def _abstract(config: ModelConfig):
    abstract = nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    return graphdef, state


@functools.lru_cache(maxsize=32)
def _abstract_block(config: ModelConfig):
    return nnx.split(nnx.eval_shape(lambda: DecoderBlock(config, rngs=nnx.Rngs(0))))


def abstract_params(config: ModelConfig) -> dict:
    """The params tree as jax.ShapeDtypeStruct leaves (no memory allocated)."""
    _, state = _abstract(config)
    return nnx.to_pure_dict(state)


def logical_axes(config: ModelConfig) -> dict:
    """The params tree with each leaf replaced by its tuple of logical axis names, read
    from the family's parameter table ("layers" first for stacked leaves)."""
    out: dict = {}
    for row in config.arch.params_for(config):
        node = out
        for key in row.path[:-1]:
            node = node.setdefault(key, {})
        node[row.path[-1]] = row.logical_axes()
    return out


def init_params(config: ModelConfig, seed: int = 0) -> dict:
    """Randomly initialized params (normal(initializer_range) kernels, unit norms)."""
    @jax.jit
    def make():
        return nnx.to_pure_dict(nnx.state(CausalLM(config, rngs=nnx.Rngs(seed))))
    return make()


def bind(config: ModelConfig, params: dict) -> CausalLM:
    """The NNX module with `params` as its variables (works on tracers inside jit)."""
    graphdef, state = _abstract(config)
    state = jax.tree.map(lambda x: x, state)  # a fresh State to fill in
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def bind_block(config: ModelConfig, layer_params: dict) -> DecoderBlock:
    """One decoder layer as an NNX module over `layer_params` (one layer's slice of
    params["layers"], without the layer axis)."""
    graphdef, state = _abstract_block(config)
    state = jax.tree.map(lambda x: x, state)
    nnx.replace_by_pure_dict(state, layer_params)
    return nnx.merge(graphdef, state)


def forward(config: ModelConfig, params: dict, input_ids, segment_ids=None, positions=None):
    """Logits [batch, seq, vocab] in fp32."""
    return bind(config, params)(input_ids, segment_ids, positions)

