"""Attention over a KV cache: how a prefill or decode step runs the decoder.

The decoder's modules (solar_jax.model.llama) define the weights and the training/forward
path; generation runs the same modules with a preallocated cache instead: each layer
projects the new tokens (`Attention.project`), attends over the cache plus its own keys and
writes them at slots [index, index + S). Always the XLA math: a prefill or decode step is
a few query rows against a long cache, which the fused training kernels do not target
(and cuDNN takes no segments).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from solar_jax.config import ModelConfig
from solar_jax.model.attention import (attention_mask, fold_query_groups, head_major_attention,
                                       unfold_query_groups)
from solar_jax.model.llama import Attention, CausalLM, DecoderBlock
from solar_jax.model.rotary import rotary_tables
from solar_jax.numerics import MASK_VALUE


class KVCache(NamedTuple):
    """Preallocated keys and values for incremental decoding.

    k: [layers, batch, kv_heads, head_dim, max_len]; v: [layers, batch, kv_heads, max_len,
    head_dim]. Stacked on the layer axis like the params, so the layer scan carries the
    whole cache and each layer updates its own slice in place. Laid out so a decode step's
    two products are plain (non-transposed) batched matmuls, q @ K and p @ V: the
    [.., max_len, kv_heads, ..] layout made XLA transpose the layer's whole cache on every
    step (28% slower at batch 8 with 1,000-token prompts), and keys stored [max_len,
    head_dim] made XLA:CPU's q @ K^T take twice as long as p @ V (benchmarks/RESULTS.md).
    The unrolled CPU decode holds k and v as tuples of per-layer arrays instead
    (solar_jax.generate.engine).
    segment_ids and positions ([batch, max_len], shared by all layers) describe each slot
    for the attention mask: segment 0 marks an empty or padding slot, which is never
    attended, and positions are the rotary positions the keys were written with.
    """
    k: jax.Array
    v: jax.Array
    segment_ids: jax.Array
    positions: jax.Array

    @classmethod
    def init(cls, config: ModelConfig, batch: int, max_len: int) -> "KVCache":
        values = (config.num_layers, batch, config.num_kv_heads, max_len, config.head_dim)
        keys = values[:3] + (config.head_dim, max_len)
        dtype = jnp.dtype(config.compute_dtype)
        return cls(jnp.zeros(keys, dtype), jnp.zeros(values, dtype),
                   jnp.zeros((batch, max_len), jnp.int32), jnp.zeros((batch, max_len), jnp.int32))


def hidden_states_cached(model: CausalLM, input_ids, segment_ids, positions, cache: KVCache,
                         index, blocks=None):
    """A prefill or decode step over a KV cache: the new tokens [B, S] (with their segment
    ids, 0 for padding, and rotary positions) are written at cache slots [index, index + S)
    and attend to every non-empty slot allowed by the causal/window mask. Returns the final
    normed hidden states [B, S, H] and the updated cache. `index` given as the Python int 0
    declares the cache empty (a fresh, left-padded prefill): the new tokens then attend
    among themselves only.

    blocks: the layers as separate modules (one per layer, over per-layer weights), applied
    in an unrolled loop instead of scanning model.layers; see
    solar_jax.generate.engine.layer_views for why decoding on CPU wants that."""
    segment_ids = segment_ids.astype(jnp.int32)
    positions = positions.astype(jnp.int32)
    cache = cache._replace(
        segment_ids=jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids, (0, index)),
        positions=jax.lax.dynamic_update_slice(cache.positions, positions, (0, index)))
    cos, sin = rotary_tables(positions, model.config)
    x = model.embed(input_ids)

    def step(block: DecoderBlock, carry):
        h, cache, layer = carry
        out, cache = cached_attention(block.attn, block.attn_norm(h), cos, sin, segment_ids,
                                      positions, cache, layer, index)
        return block.mlp_residual(h + out), cache, layer + 1

    if blocks is not None:
        for layer, block in enumerate(blocks):
            x, cache, _ = step(block, (x, cache, layer))
        return model.final_norm(x), cache
    scan = nnx.scan(step, in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    x, cache, _ = scan(model.layers, (x, cache, jnp.int32(0)))
    return model.final_norm(x), cache


def cached_attention(attn: Attention, x, cos, sin, segment_ids, positions, cache: KVCache,
                     layer, index):
    """One layer's attention for new tokens x [B, S, H] over the cache, and the cache with
    their keys and values written at slots [index, index + S) of layer `layer`.

    Attends over the whole preallocated cache plus this step's keys: empty slots carry
    segment 0 and the mask (defined on positions) hides them, so one compiled shape serves
    every step."""
    q, k, v = attn.project(x, cos, sin)
    config = attn.config
    window = config.sliding_window
    if isinstance(index, int) and index == 0:
        # A prefill into an empty cache: every slot past the new tokens is empty, so
        # attending over the new tokens alone gives the same numbers without scoring
        # [S, max_len] (the cache is usually 1.5x longer than the prompt); prompts are
        # left-padded, so no token sees a later slot and later key blocks are skipped.
        out = slot_causal_attention(q, k, v, segment_ids, positions, sliding_window=window)
    else:
        # The cache as it was before this step (its slots [index, index + seq) hidden)
        # plus this step's own keys; see cache_step_attention.
        slots = jnp.arange(cache.segment_ids.shape[1])
        stale = (slots >= index) & (slots < index + x.shape[1])
        cache_mask = attention_mask(segment_ids, cache.segment_ids, positions,
                                    cache.positions, causal=True,
                                    sliding_window=window) & ~stale[None, None, :]
        new_mask = attention_mask(segment_ids, segment_ids, positions, positions,
                                  causal=True, sliding_window=window)
        out = cache_step_attention(q, cache.k[layer].astype(q.dtype),
                                   cache.v[layer].astype(q.dtype), cache_mask, k, v,
                                   new_mask, scale=config.head_dim ** -0.5)
        # Make the write below depend on the read above, so XLA may write in place:
        # unordered, XLA:CPU copied the layer's whole cache on every step (twice at batch
        # 1), and lax.optimization_barrier does not survive its pipeline. x * 0 is not
        # folded for floats (NaN semantics), so the dependency stays; it changes nothing
        # unless the output is already NaN.
        tie = (out[:, :1, :1, :1] * 0).astype(k.dtype)
        k, v = k + tie, v + tie
    cache = cache._replace(
        k=_write_layer(cache.k, k.transpose(0, 2, 3, 1), layer, index, slot_axis=3),
        v=_write_layer(cache.v, v.transpose(0, 2, 1, 3), layer, index, slot_axis=2))
    return attn.o_proj(out), cache


def _write_layer(buffers, new, layer, index, *, slot_axis: int):
    """Writes this step's keys [B, kv_heads, D, S] or values [B, kv_heads, S, D] at slots
    [index, index + S) (along `slot_axis` of a layer's buffer) of layer `layer`, and
    returns the updated buffers: the stacked [L, ...] array, or a tuple of per-layer arrays
    (the unrolled CPU decode, where reading a layer out of the stack would copy it on every
    step) indexed by a Python int."""
    start = tuple(index if axis == slot_axis else 0 for axis in range(new.ndim))
    if isinstance(buffers, tuple):
        if not isinstance(layer, int):
            raise TypeError("a per-layer KV cache needs the layer index as a Python int")
        mine = jax.lax.dynamic_update_slice(buffers[layer], new.astype(buffers[layer].dtype),
                                            start)
        return buffers[:layer] + (mine,) + buffers[layer + 1:]
    return jax.lax.dynamic_update_slice(buffers, new[None].astype(buffers.dtype),
                                        (layer, *start))


def slot_causal_attention(q, k, v, segment_ids, positions, *, sliding_window, scale=None,
                          block: int = 256):
    """Causal self-attention (XLA math) that skips the key blocks after each query block.

    Valid only where no query may see a key at a later slot, i.e. positions increase with
    the slot inside each segment (left-padded prompts, packed documents). Padding queries
    (segment 0) then see fewer padding keys than `attention` would let them, which changes
    only their own, unused outputs. Queries go in blocks of `block`; block i scores keys
    [0, (i + 1) * block), about half the [S, S] scores and softmax work for long S."""
    b, s, heads, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    outs = []
    for start in range(0, s, block):
        end = min(start + block, s)
        mask = attention_mask(segment_ids[:, start:end], segment_ids[:, :end],
                              positions[:, start:end], positions[:, :end], causal=True,
                              sliding_window=sliding_window)
        outs.append(head_major_attention(q[:, start:end], k[:, :end].transpose(0, 2, 1, 3),
                                         v[:, :end].transpose(0, 2, 1, 3), mask, scale=scale))
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


def cache_step_attention(q, k_cache, v_cache, cache_mask, k_new, v_new, new_mask, *, scale):
    """Attention of new tokens over a KV cache *as it was before this step* plus their own
    keys: one softmax over both parts, so it equals head_major_attention over the updated
    cache. k_cache [batch, kv_heads, head_dim, max_len] (keys transposed: q @ K is then a
    plain matmul, twice as fast as q @ K^T on XLA:CPU), v_cache [batch, kv_heads, max_len,
    head_dim], cache_mask [batch, q_len, max_len] (slots the step is about to write must be
    False); k_new/v_new [batch, q_len, kv_heads, head_dim] with new_mask [batch, q_len,
    q_len]. A cache without the batch axis ([kv_heads, head_dim, max_len] and [kv_heads,
    max_len, head_dim]) is one prefix every row shares (solar_jax.eval.shared_prefix).

    Why not write first and attend over the written cache: then the cache update has two
    readers (the attention and the next step), and XLA:CPU fused a second copy of the
    update into the attention's read, copying the layer's whole cache every step (19 ms of
    a 60 ms step at batch 1 with a 1,536-slot cache). Reading the old cache leaves the
    update a single in-place write."""
    b, q_len, heads, d = q.shape
    kv_heads = k_cache.shape[-3]
    group = heads // kv_heads
    qt = fold_query_groups(q, kv_heads)
    k_new, v_new = k_new.transpose(0, 2, 1, 3), v_new.transpose(0, 2, 1, 3)

    def scores(keys_t, mask):
        spec = "bhqd,hdk->bhqk" if keys_t.ndim == 3 else "bhqd,bhdk->bhqk"
        out = jnp.einsum(spec, qt, keys_t, preferred_element_type=jnp.float32)
        out = out.reshape(b, kv_heads, group, q_len, keys_t.shape[-1]) * scale
        return jnp.where(mask[:, None, None, :, :], out, MASK_VALUE)

    old, new = scores(k_cache, cache_mask), scores(k_new.swapaxes(2, 3), new_mask)
    top = jnp.maximum(old.max(-1, keepdims=True), new.max(-1, keepdims=True))
    old, new = jnp.exp(old - top), jnp.exp(new - top)
    total = old.sum(-1, keepdims=True) + new.sum(-1, keepdims=True)

    def mix(weights, values):
        weights = weights.reshape(b, kv_heads, group * q_len, -1).astype(values.dtype)
        spec = "bhqk,hkd->bhqd" if values.ndim == 3 else "bhqk,bhkd->bhqd"
        return jnp.einsum(spec, weights, values, preferred_element_type=jnp.float32)

    out = (mix(old, v_cache) + mix(new, v_new)).reshape(b, kv_heads, group, q_len, d) / total
    return unfold_query_groups(out.reshape(b, kv_heads, group * q_len, d), q)
