"""Batched autoregressive decoding over a preallocated KV cache.

Layout: prompts are left-padded to a common (bucketed) length P so every row writes the
same cache slot at each step, which keeps the cache update a single dynamic_update_slice.
Each row keeps its own rotary positions (0 at its first real token) and padding slots carry
segment id 0, which the attention mask never lets a real token see, so a padded row
computes exactly what it would alone.

Two compiled functions do the work:

* `_prefill`: one forward over the padded prompts that fills slots [0, P) and picks each
  row's first new token;
* `_decode`: a `lax.while_loop` of up to `chunk` single-token steps (stopping early once
  every row is done), so the host is involved once per chunk: chunk=1 streams token by
  token, larger chunks amortize dispatch.

Shapes are bucketed (the prompt width finely, since the prefill's cost follows it; the
cache length coarsely, since each cache length compiles a decode loop) so a session
compiles a handful of programs, and the cache is donated between steps so XLA updates it
in place. The random key of step s is fold_in(seed, s), so sampled output does not depend
on the chunk size.

On CPU the decode loop runs the layers unrolled over per-layer views of the stacked
weights (`layer_views`), and the prefill hands it the KV cache as one buffer per layer:
XLA's CPU backend copies a scanned layer's weights out of the stack before every matmul
(and a layer's cache out of the stacked cache before attention), which at batch 1 moves
the weights three times per token instead of once. The unrolled program takes ~3x longer
to compile, which the CLI's persistent compilation cache pays once per shape. Elsewhere
(GPU, TPU, sharded weights) the loop scans the stack, whose slices those backends read in
place.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from solar_jax.config import ModelConfig
from solar_jax.errors import SolarError
from solar_jax.generate.cache_attention import KVCache, hidden_states_cached
from solar_jax.generate.sampling import Sampler
from solar_jax.model.transformer import bind, bind_block
from solar_jax.placement import model_scope
from solar_jax.sharding import logical_to_spec


class DecodeState(NamedTuple):
    cache: KVCache
    tokens: jax.Array     # [B] the last token of each row (the next step's input)
    positions: jax.Array  # [B] rotary position of that token
    index: jax.Array      # [] cache slot it goes into (shared by all rows)
    step: jax.Array       # [] tokens generated so far (keys the random stream)
    done: jax.Array       # [B] row has produced an end token
    key: jax.Array        # the seed's PRNG key


def bucket(n: int, minimum: int = 16) -> int:
    """n rounded up to the next of 16, 24, 32, 48, 64, 96, ... (powers of two and 1.5x):
    at most 50% padding and a logarithmic number of distinct compiled shapes."""
    size = minimum
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


# XLA:CPU aliases a host buffer only at this alignment (it copies otherwise).
_CPU_ALIGNMENT = 64


def prompt_bucket(n: int, minimum: int = 16) -> int:
    """The prefill width for a longest prompt of n tokens: n rounded up to a multiple of
    1/8 of its power of two (8 widths per octave, under 12.5% padding). The prefill's cost
    grows with its width, so `bucket`'s up to 50% padding would cost up to 1.5x (a
    1,091-token prompt filled 1,536 slots); a new width costs one prefill compile."""
    if n <= minimum:
        return minimum
    step = max(1 << (n.bit_length() - 4), 8)
    return -(-n // step) * step


def _is_end(tokens, end_ids):
    return jnp.any(tokens[:, None] == end_ids[None, :], axis=-1)


def layer_views(params) -> tuple[dict, ...] | None:
    """params["layers"] as one dict per layer, aliasing the stacked buffers (no copy), or
    None where that is not possible: weights not on one CPU device, or slices XLA would
    copy. On CPU, device_put of a numpy view of a layer's slice shares the stack's memory,
    so the model is not held twice."""
    stacked = params["layers"]
    leaves = jax.tree.leaves(stacked)
    if not all(isinstance(x, jax.Array) and len(x.devices()) == 1
               and next(iter(x.devices())).platform == "cpu" for x in leaves):
        return None
    if any((x.nbytes // x.shape[0]) % _CPU_ALIGNMENT for x in leaves):
        return None  # a misaligned slice would be copied, not aliased
    # Committed like the stack: jit keys its cache on committedness, and committed views
    # beside uncommitted params made the decode loop's outputs committed, so its second
    # call compiled the whole loop again.
    device = next(iter(leaves[0].devices())) if leaves[0].committed else None
    host = jax.tree.map(np.asarray, stacked)  # zero-copy views of the device buffers
    views = tuple(jax.tree.map(lambda a: jax.device_put(a[layer], device), host)
                  for layer in range(leaves[0].shape[0]))
    for base, last in zip(leaves, jax.tree.leaves(views[-1])):
        offset = last.unsafe_buffer_pointer() - base.unsafe_buffer_pointer()
        if offset != (base.shape[0] - 1) * last.nbytes:  # copied after all: do not keep
            return None
    return views


# Logical axes of the KV cache's leaves, for a sharded model (solar_jax.placement).
CACHE_AXES = KVCache(k=("layers", "batch", "kv_heads", "head_dim", "seq"),
                     v=("layers", "batch", "kv_heads", "seq", "head_dim"),
                     segment_ids=("batch", "seq"), positions=("batch", "seq"))


def _constrain(cache: KVCache) -> KVCache:
    """Under a mesh in context, lay the cache out like the params: kv heads over "tensor",
    rows over the batch axes (each dropped where it does not divide), so a sharded model's
    cache is split from its creation and never gathered."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return cache
    def constrain(x, axes):
        spec = logical_to_spec(axes, None, mesh, x.shape)
        return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))
    return KVCache(*(constrain(x, axes) for x, axes in zip(cache, CACHE_AXES)))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _prefill(config: ModelConfig, sampler: Sampler, cache_len: int, per_layer: bool, params,
             input_ids, lengths, key, end_ids):
    """A fresh cache of cache_len slots, filled with the prompts. per_layer: hand the decode
    loop the cache as one buffer per layer (see layer_views)."""
    batch, width = input_ids.shape
    cache = _constrain(KVCache.init(config, batch, cache_len))
    pad = width - lengths                                   # left padding per row
    slots = jnp.arange(width, dtype=jnp.int32)[None, :]
    segment_ids = (slots >= pad[:, None]).astype(jnp.int32)
    positions = jnp.maximum(slots - pad[:, None], 0)
    model = bind(config, params)
    hidden, cache = hidden_states_cached(model, input_ids, segment_ids, positions, cache, 0)
    logits = model.logits(hidden[:, -1:])[:, 0]
    first = sampler(logits, jax.random.fold_in(key, 0))
    if per_layer:
        cache = cache._replace(k=tuple(cache.k), v=tuple(cache.v))
    state = DecodeState(cache, first, lengths, jnp.int32(width), jnp.int32(1),
                        _is_end(first, end_ids), key)
    return state, first


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(5,))
def _decode(config: ModelConfig, sampler: Sampler, chunk: int, params, layers,
            state: DecodeState, steps, end_ids, pad_id):
    """Up to min(chunk, steps) tokens per row; rows already done emit pad_id. `layers`:
    per-layer weights (layer_views) for an unrolled layer loop, or None to scan."""
    batch = state.tokens.shape[0]
    ones = jnp.ones((batch, 1), jnp.int32)

    def body(carry):
        state, out, i = carry
        model = bind(config, params)  # NNX modules may not cross into the loop's trace
        blocks = None if layers is None else [bind_block(config, p) for p in layers]
        hidden, cache = hidden_states_cached(
            model, state.tokens[:, None], ones, state.positions[:, None], state.cache,
            state.index, blocks=blocks)
        logits = model.logits(hidden)[:, 0]
        token = sampler(logits, jax.random.fold_in(state.key, state.step))
        token = jnp.where(state.done, pad_id, token)
        out = out.at[:, i].set(token)
        state = DecodeState(cache, token, state.positions + 1, state.index + 1,
                            state.step + 1, state.done | _is_end(token, end_ids), state.key)
        return state, out, i + 1

    def cond(carry):
        state, _, i = carry
        return (i < jnp.minimum(chunk, steps)) & ~jnp.all(state.done)

    out = jnp.full((batch, chunk), pad_id, jnp.int32)
    state, out, n = jax.lax.while_loop(cond, body, (state, out, jnp.int32(0)))
    return state, out, n


class Decoder:
    """Runs one batch: `start()` prefills and returns the first tokens [B, 1], then each
    `next()` returns the next chunk [B, n] (n = 0 once every row is done or the budget of
    max_new_tokens is spent)."""

    def __init__(self, model, prompts: list[list[int]], max_new_tokens: int, *,
                 sampler: Sampler, seed: int, end_ids: tuple[int, ...], pad_id: int,
                 chunk: int, unroll_layers: bool | None = None):
        self.model, self.sampler, self.chunk = model, sampler, chunk
        # Held for this batch only: no views outlive the generation that asked for them.
        self._layers = layer_views(model.params) if unroll_layers in (None, True) else None
        if unroll_layers and self._layers is None:
            raise SolarError("unroll_layers needs the model's weights on one CPU device")
        self.max_new_tokens = max_new_tokens
        self.end_ids = jnp.asarray(end_ids or (-1,), jnp.int32)
        self.pad_id = jnp.int32(pad_id)
        lengths = np.array([len(p) for p in prompts], np.int32)
        width = prompt_bucket(int(lengths.max()))
        ids = np.full((len(prompts), width), pad_id, np.int32)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = prompt
        self._ids, self._lengths = ids, lengths
        self._cache_len = bucket(width + max_new_tokens)
        self._key = jax.random.key(seed)
        self.generated = 0
        self.state: DecodeState | None = None
        self._done = np.zeros(len(prompts), bool)

    def start(self) -> np.ndarray:
        with model_scope(self.model):  # a sharded model's programs trace with its mesh
            self.state, first = self._prefill()
        self.generated = 1
        self._done = np.asarray(self.state.done)
        return np.asarray(first)[:, None]

    def _prefill(self):
        return _prefill(self.model.config, self.sampler, self._cache_len,
                        self._layers is not None, self.model.params,
                        jnp.asarray(self._ids), jnp.asarray(self._lengths),
                        self._key, self.end_ids)

    def next(self) -> np.ndarray:
        steps = jnp.int32(self.max_new_tokens - self.generated)
        with model_scope(self.model):
            self.state, out, n = _decode(self.model.config, self.sampler, self.chunk,
                                         self.model.params, self._layers, self.state, steps,
                                         self.end_ids, self.pad_id)
        n = int(n)
        self.generated += n
        self._done = np.asarray(self.state.done)
        return np.asarray(out)[:, :n]

    def stop_rows(self, rows: np.ndarray) -> None:
        """Mark rows finished from the host (a stop string was found in their text)."""
        self._done = self._done | rows
        self.state = self.state._replace(done=jnp.asarray(self._done))
