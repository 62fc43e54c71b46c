"""The Llama-style decoder every family in solar_jax.arch shares: a block, its stack
(params stacked on axis 0, applied with a scan), and the causal LM around it. The block's
optional parts (q/k/v biases, per-head q/k norms, a sliding window) are built as the
family's record (config.arch) declares them; its parameter table is the authority on
names, layouts and logical axes.

Parameter tree (the `params` pytree every part of solar-jax shares):

    embed/embedding            [vocab, embed]
    layers/attn_norm/scale     [L, embed]
    layers/attn/{q,k,v}_proj/kernel   [L, embed, heads|kv_heads, head_dim]
    layers/attn/{q,k,v}_proj/bias     [L, heads|kv_heads, head_dim]   (qkv_bias: Qwen2)
    layers/attn/o_proj/kernel  [L, heads, head_dim, embed]
    layers/attn/{q,k}_norm/scale      [L, head_dim]                  (qk_norm: Qwen3)
    layers/mlp_norm/scale      [L, embed]
    layers/mlp/{gate,up}_proj/kernel  [L, embed, mlp]
    layers/mlp/down_proj/kernel       [L, mlp, embed]
    final_norm/scale           [embed]
    lm_head/kernel             [embed, vocab]   (absent when embeddings are tied)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from solar_jax.config import ModelConfig
from solar_jax.model.attention import (attention, attention_mask, cache_step_attention,
                                       slot_causal_attention)
from solar_jax.model.layers import MLP, Embedding, Projection, RMSNorm
from solar_jax.model.rotary import apply_rotary, rotary_tables


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


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        h, d = config.hidden_size, config.head_dim
        bias = config.arch.qkv_bias
        self.config = config
        self.q_proj = Projection((h,), (config.num_heads, d), config, bias=bias, rngs=rngs)
        self.k_proj = Projection((h,), (config.num_kv_heads, d), config, bias=bias, rngs=rngs)
        self.v_proj = Projection((h,), (config.num_kv_heads, d), config, bias=bias, rngs=rngs)
        self.o_proj = Projection((config.num_heads, d), (h,), config, rngs=rngs)
        if config.arch.qk_norm:  # Qwen3: RMSNorm over each head's head_dim, before RoPE
            self.q_norm = RMSNorm(config, d, rngs=rngs)
            self.k_norm = RMSNorm(config, d, rngs=rngs)

    def __call__(self, x, cos, sin, segment_ids, positions, cache: KVCache | None = None,
                 layer=None, index=None, branch_ids=None):
        q, k = self.q_proj(x), self.k_proj(x)
        if self.config.arch.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        v = self.v_proj(x)
        q, k, v = (checkpoint_name(t, "qkv") for t in (q, k, v))
        if cache is None:
            out = attention(q, k, v, segment_ids, positions, causal=True,
                            sliding_window=self.config.sliding_window,
                            impl=self.config.attention_impl, branch_ids=branch_ids)
            return self.o_proj(out)
        # Attend over the whole preallocated cache plus this step's keys, then write them at
        # slots [index, index + seq) of this layer. Empty slots carry segment 0 and the
        # mask (defined on positions) hides them, so one compiled shape serves every step.
        # Always the XLA math: a prefill or decode step is a few query rows against a long
        # cache, which fused training kernels do not target (and cuDNN takes no segments).
        window = self.config.sliding_window
        if isinstance(index, int) and index == 0:
            # A prefill into an empty cache: every slot past the new tokens is empty, so
            # attending over the new tokens alone gives the same numbers without scoring
            # [S, max_len] (the cache is usually 1.5x longer than the prompt); prompts are
            # left-padded, so no token sees a later slot and later key blocks are skipped.
            out = slot_causal_attention(q, k, v, segment_ids, positions,
                                        sliding_window=window)
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
                                       new_mask, scale=self.config.head_dim ** -0.5)
            # Make the write below depend on the read above, so XLA may write in place:
            # unordered, XLA:CPU copied the layer's whole cache on every step (twice at
            # batch 1), and lax.optimization_barrier does not survive its pipeline. x * 0
            # is not folded for floats (NaN semantics), so the dependency stays; it changes
            # nothing unless the output is already NaN.
            tie = (out[:, :1, :1, :1] * 0).astype(k.dtype)
            k, v = k + tie, v + tie
        cache = cache._replace(
            k=_write_layer(cache.k, k.transpose(0, 2, 3, 1), layer, index, slot_axis=3),
            v=_write_layer(cache.v, v.transpose(0, 2, 1, 3), layer, index, slot_axis=2))
        return self.o_proj(out), cache


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


class DecoderBlock(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(config, rngs=rngs)
        self.attn = Attention(config, rngs=rngs)
        self.mlp_norm = RMSNorm(config, rngs=rngs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, cos, sin, segment_ids, positions, cache: KVCache | None = None,
                 layer=None, index=None, branch_ids=None):
        if cache is None:
            x = x + self.attn(self.attn_norm(x), cos, sin, segment_ids, positions,
                              branch_ids=branch_ids)
            return x + self.mlp(self.mlp_norm(x))
        out, cache = self.attn(self.attn_norm(x), cos, sin, segment_ids, positions,
                               cache=cache, layer=layer, index=index)
        x = x + out
        return x + self.mlp(self.mlp_norm(x)), cache


REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "save_qkv": jax.checkpoint_policies.save_only_these_names("qkv"),
}


class CausalLM(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed = Embedding(config, rngs=rngs)

        @nnx.split_rngs(splits=config.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_stack(rngs: nnx.Rngs):
            return DecoderBlock(config, rngs=rngs)

        self.layers = make_stack(rngs)
        self.final_norm = RMSNorm(config, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = Projection((config.hidden_size,), (config.vocab_size,), config,
                                      rngs=rngs)

    def hidden_states(self, input_ids, segment_ids=None, positions=None, *,
                      collect: bool = False, branch_ids=None):
        """Final normed hidden states [B, S, H]; with collect=True also the input of every
        layer plus the last layer's output, [L + 1, B, S, H] (for layer diagnostics).
        branch_ids [B, S]: prefix-shared branches within each segment (see attention)."""
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32),
                                         input_ids.shape)
        cos, sin = rotary_tables(positions, self.config)
        x = self.embed(input_ids)

        def step(block: DecoderBlock, h):
            out = block(h, cos, sin, segment_ids, positions, branch_ids=branch_ids)
            return out, (h if collect else None)

        if self.config.remat != "none":
            step = nnx.remat(step, policy=REMAT_POLICIES[self.config.remat],
                             prevent_cse=False)
        scan = nnx.scan(step, in_axes=(0, nnx.Carry), out_axes=(nnx.Carry, 0))
        x, inputs = scan(self.layers, x)
        normed = self.final_norm(x)
        if collect:
            return normed, jnp.concatenate([inputs, x[None]], axis=0)
        return normed

    def hidden_states_cached(self, input_ids, segment_ids, positions, cache: KVCache, index,
                             blocks=None):
        """A prefill or decode step over a KV cache: the new tokens [B, S] (with their
        segment ids, 0 for padding, and rotary positions) are written at cache slots
        [index, index + S) and attend to every non-empty slot allowed by the causal/window
        mask. Returns the final normed hidden states [B, S, H] and the updated cache.
        `index` given as the Python int 0 declares the cache empty (a fresh, left-padded
        prefill): the new tokens then attend among themselves only.

        blocks: the layers as separate modules (one per layer, over per-layer weights),
        applied in an unrolled loop instead of scanning self.layers; see
        solar_jax.generate.engine.layer_views for why decoding on CPU wants that."""
        segment_ids = segment_ids.astype(jnp.int32)
        positions = positions.astype(jnp.int32)
        cache = cache._replace(
            segment_ids=jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids, (0, index)),
            positions=jax.lax.dynamic_update_slice(cache.positions, positions, (0, index)))
        cos, sin = rotary_tables(positions, self.config)
        x = self.embed(input_ids)

        def step(block: DecoderBlock, carry):
            h, cache, layer = carry
            h, cache = block(h, cos, sin, segment_ids, positions, cache=cache, layer=layer,
                             index=index)
            return h, cache, layer + 1

        if blocks is not None:
            for layer, block in enumerate(blocks):
                x, cache, _ = step(block, (x, cache, layer))
            return self.final_norm(x), cache
        scan = nnx.scan(step, in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
        x, cache, _ = scan(self.layers, (x, cache, jnp.int32(0)))
        return self.final_norm(x), cache

    def logits(self, hidden):
        if self.config.tie_word_embeddings:
            return self.embed.attend(hidden)
        kernel = self.lm_head.kernel[...].astype(hidden.dtype)
        return jnp.einsum("bsh,hv->bsv", hidden, kernel, preferred_element_type=jnp.float32)

    def __call__(self, input_ids, segment_ids=None, positions=None):
        return self.logits(self.hidden_states(input_ids, segment_ids, positions))
