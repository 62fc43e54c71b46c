"""The eval and generate programs of a sharded model, from shapes alone.

`solar-jax eval --mesh ...` and `generate --mesh ...` run jitted functions over params
placed by `load_model(path, mesh=...)`. Here the same functions are paired with abstract
arguments (`jax.ShapeDtypeStruct`s carrying the shardings the real run would have), so
they can be lowered and compiled ahead of time for a topology without reading a weight or
owning the devices (`solar-jax compile --program eval|generate`):

    mesh = solar_jax.sharding.make_mesh({"tensor": 8}, devices=<compile-only devices>)
    for program in [eval_program(config, mesh), *generate_programs(config, mesh)]:
        compiled = program.lower().compile()       # traced with the mesh in context
        compiled.memory_analysis()

The shapes are those the commands use: eval scores rows of `width` tokens (the plain path
of solar_jax.eval.scoring, whose packed path runs the same forward), generation prefills
`prompt_len` tokens into a cache of `bucket(prompt_len + max_new_tokens)` slots and decodes
`chunk` tokens per call.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from solar_jax.eval.scoring import _score_rows
from solar_jax.generate.cache_attention import KVCache
from solar_jax.generate.engine import (CACHE_AXES, DecodeState, _decode, _prefill, bucket,
                                       prompt_bucket)
from solar_jax.generate.sampling import Sampler
from solar_jax.model.transformer import abstract_params
from solar_jax.placement import leaf_shardings, mesh_scope
from solar_jax.sharding import logical_to_spec


@dataclasses.dataclass(frozen=True)
class Program:
    name: str
    fn: Callable        # a jitted function
    static: tuple       # its leading static arguments (config, sampler, ...)
    args: tuple         # the others, abstract and sharded
    mesh: Mesh

    def lower(self):
        with mesh_scope(self.mesh):
            return self.fn.lower(*self.static, *self.args)


def _spec(mesh, rules, axes, shape):
    return NamedSharding(mesh, logical_to_spec(axes, rules, mesh, tuple(shape)))


def _abstract(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
    dtype = jnp.dtype(dtype) if isinstance(dtype, str) else dtype  # keep PRNG key dtypes
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def sharded_params(config, mesh: Mesh, rules=None) -> Any:
    """The params tree as sharded ShapeDtypeStructs (the layout load_model(mesh=) gives)."""
    return jax.tree.map(lambda a, s: _abstract(a.shape, config.param_dtype, s),
                        abstract_params(config), leaf_shardings(config, mesh, rules))


def _rows(mesh, rules, shape, dtype=jnp.int32):
    axes = ("batch", *(("seq",) * (len(shape) - 1)))
    return _abstract(shape, dtype, _spec(mesh, rules, axes, shape))


def eval_program(config, mesh: Mesh, *, batch_size: int = 16, width: int | None = None,
                 span: int = 16, rules=None) -> Program:
    """Log-likelihood scoring of batch_size rows of `width` tokens (default: the model's
    context), `span` continuation tokens each."""
    width = width or config.max_position_embeddings
    args = (sharded_params(config, mesh, rules), _rows(mesh, rules, (batch_size, width)),
            _rows(mesh, rules, (batch_size,)), _rows(mesh, rules, (batch_size, span)),
            _rows(mesh, rules, (batch_size,)))
    return Program("eval", _score_rows, (config,), args, mesh)


def generate_programs(config, mesh: Mesh, *, batch_size: int = 1, prompt_len: int = 1024,
                      max_new_tokens: int = 256, chunk: int = 16, sampler=None,
                      rules=None) -> list[Program]:
    """The prefill of prompt_len tokens and one decode call of `chunk` tokens."""
    sampler = sampler or Sampler()
    width = prompt_bucket(prompt_len)
    cache_len = bucket(width + max_new_tokens)
    params = sharded_params(config, mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    key = jax.eval_shape(lambda: jax.random.key(0))
    key = _abstract(key.shape, key.dtype, replicated)
    end_ids = _abstract((1,), jnp.int32, replicated)
    b = batch_size
    prefill = Program("generate/prefill", _prefill, (config, sampler, cache_len, False),
                      (params, _rows(mesh, rules, (b, width)), _rows(mesh, rules, (b,)), key,
                       end_ids), mesh)
    shapes = jax.eval_shape(lambda: KVCache.init(config, b, cache_len))
    cache = KVCache(*(_abstract(s.shape, s.dtype, _spec(mesh, rules, axes, s.shape))
                      for s, axes in zip(shapes, CACHE_AXES)))
    scalar = _abstract((), jnp.int32, replicated)
    state = DecodeState(cache, _rows(mesh, rules, (b,)), _rows(mesh, rules, (b,)), scalar,
                        scalar, _rows(mesh, rules, (b,), jnp.bool_), key)
    decode = Program("generate/decode", _decode, (config, sampler, chunk),
                     (params, None, state, scalar, end_ids, scalar), mesh)
    return [prefill, decode]
