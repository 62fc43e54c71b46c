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

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from solar_jax.config import REMAT_POLICIES, ModelConfig
from solar_jax.model.attention import attention
from solar_jax.model.layers import MLP, Embedding, Projection, RMSNorm
from solar_jax.model.rotary import apply_rotary, rotary_tables


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

    def project(self, x, cos, sin):
        """Queries, keys and values [B, S, heads|kv_heads, head_dim] of x, rotated (and
        normed per head first where the family has q/k norms); generation's KV-cache
        attention (solar_jax.generate.cache_attention) starts from these too."""
        q, k = self.q_proj(x), self.k_proj(x)
        if self.config.arch.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        v = self.v_proj(x)
        return tuple(checkpoint_name(t, "qkv") for t in (q, k, v))

    def __call__(self, x, cos, sin, segment_ids, positions, branch_ids=None):
        q, k, v = self.project(x, cos, sin)
        out = attention(q, k, v, segment_ids, positions, causal=True,
                        sliding_window=self.config.sliding_window,
                        impl=self.config.attention_impl, branch_ids=branch_ids)
        return self.o_proj(out)


class DecoderBlock(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(config, rngs=rngs)
        self.attn = Attention(config, rngs=rngs)
        self.mlp_norm = RMSNorm(config, rngs=rngs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, cos, sin, segment_ids, positions, branch_ids=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, segment_ids, positions,
                          branch_ids=branch_ids)
        return self.mlp_residual(x)

    def mlp_residual(self, x):
        """The block's second half, x + MLP(norm(x)) (shared with the KV-cache path)."""
        return x + self.mlp(self.mlp_norm(x))


def remat_policy(name: str):
    """The jax.checkpoint_policies policy that solar_jax.config.REMAT_POLICIES names."""
    member, *args = REMAT_POLICIES[name]
    policy = getattr(jax.checkpoint_policies, member)
    return policy(*args) if args else policy


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
            step = nnx.remat(step, policy=remat_policy(self.config.remat),
                             prevent_cse=False)
        scan = nnx.scan(step, in_axes=(0, nnx.Carry), out_axes=(nnx.Carry, 0))
        x, inputs = scan(self.layers, x)
        normed = self.final_norm(x)
        if collect:
            return normed, jnp.concatenate([inputs, x[None]], axis=0)
        return normed

    def head_weight(self):
        """The output projection [hidden, vocab]: the embedding table, transposed, when the
        embeddings are tied. The one place that choice is made (the losses take it from
        here and build the logits chunk by chunk)."""
        if self.config.tie_word_embeddings:
            return self.embed.embedding[...].T
        return self.lm_head.kernel[...]

    def logits(self, hidden):
        """Logits [B, S, vocab] in fp32."""
        head = self.head_weight().astype(hidden.dtype)
        return jnp.einsum("bsh,hv->bsv", hidden, head, preferred_element_type=jnp.float32)

    def __call__(self, input_ids, segment_ids=None, positions=None):
        return self.logits(self.hidden_states(input_ids, segment_ids, positions))
