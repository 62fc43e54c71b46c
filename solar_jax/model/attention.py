"""The one attention entry point, with implementations chosen by name.

`attention(q, k, v, segment_ids, positions, causal=..., sliding_window=..., impl=...)`:
q is [batch, q_len, heads, head_dim], k and v are [batch, kv_len, kv_heads, head_dim].
Masking is defined once, here, for every implementation:

* a query sees a key only when both carry the same segment id (packed documents never
  attend to each other; id 0 is padding by convention, and padding only sees padding);
* causal: key position <= query position;
* sliding window W (Mistral): query position - key position < W, as transformers does;
* branches (optional, self-attention only): within a segment, branch 0 is a prefix that
  every branch sees, and a query of branch b > 0 sees no key of another branch b' > 0.
  One row then holds a context followed by several continuations of it, each scored as if
  it alone followed the context (multiple-choice scoring; the XLA math computes it).

Positions default to 0..len-1. Keys take `kv_positions`/`kv_segment_ids` when given, else
the query's own, so plain self-attention needs neither. Attention over a KV cache belongs
to generation (solar_jax.generate.cache_attention), which reuses the mask and the XLA
math below.

Kernels register themselves with `register_attention(name, fn)`; "auto" picks the best one
registered for the current backend and falls back to the XLA reference.
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp

from solar_jax.errors import SolarError
from solar_jax.numerics import MASK_VALUE
from solar_jax.platform import target


class AttentionFn(Protocol):
    def __call__(self, q, k, v, *, q_segment_ids, kv_segment_ids, q_positions, kv_positions,
                 causal: bool, sliding_window: int | None, scale: float) -> jax.Array: ...


_IMPLS: dict[str, AttentionFn] = {}
# For "auto": backend platform -> preference order of implementation names.
_AUTO_ORDER: dict[str, list[str]] = {"cpu": ["xla"], "gpu": ["xla"], "tpu": ["xla"]}


def register_attention(name: str, fn: AttentionFn, *, auto_for: tuple[str, ...] = ()) -> None:
    """Add an implementation; `auto_for` lists backends where it should be preferred."""
    _IMPLS[name] = fn
    for platform in auto_for:
        order = _AUTO_ORDER.setdefault(platform, ["xla"])
        if name not in order:
            order.insert(0, name)


def available_attention_impls() -> list[str]:
    return ["auto", *sorted(_IMPLS)]


def resolve_impl(impl: str) -> str:
    if impl == "auto":
        # The platform the program is for (the mesh in context), which differs from the
        # host's when compiling ahead of time for an absent TPU.
        platform = target().platform
        return next(n for n in _AUTO_ORDER.get(platform, ["xla"]) if n in _IMPLS)
    if impl not in _IMPLS:
        raise SolarError(f"unknown attention implementation {impl!r}; "
                         f"available: {', '.join(available_attention_impls())}")
    return impl


def attention(q, k, v, segment_ids=None, positions=None, *, causal: bool = True,
              sliding_window: int | None = None, impl: str = "auto",
              kv_segment_ids=None, kv_positions=None, scale: float | None = None,
              branch_ids=None) -> jax.Array:
    """Multi-head attention with GQA/MQA; returns [batch, q_len, heads, head_dim]."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise SolarError("attention expects q, k, v of shape [batch, seq, heads, head_dim]")
    b, q_len, heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    if heads % kv_heads:
        raise SolarError(f"query heads ({heads}) must be a multiple of kv heads ({kv_heads})")
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != head_dim:
        raise SolarError(f"k {k.shape} and v {v.shape} do not match q {q.shape}")
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(q_len, dtype=jnp.int32), (b, q_len))
    if kv_positions is None:
        kv_positions = positions if kv_len == q_len else jnp.broadcast_to(
            jnp.arange(kv_len, dtype=jnp.int32), (b, kv_len))
    if kv_segment_ids is None and segment_ids is not None and kv_len == q_len:
        kv_segment_ids = segment_ids
    scale = float(scale) if scale is not None else head_dim ** -0.5
    if branch_ids is not None:
        # Fused kernels take segments, not branches: this mask is XLA's alone.
        if kv_len != q_len:
            raise SolarError("attention branch_ids apply to self-attention only")
        mask = attention_mask(segment_ids, kv_segment_ids, positions, kv_positions,
                              causal=causal, sliding_window=sliding_window,
                              q_branch_ids=branch_ids, kv_branch_ids=branch_ids)
        return head_major_attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
                                    mask, scale=scale)
    fn = _IMPLS[resolve_impl(impl)]
    return fn(q, k, v, q_segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
              q_positions=positions, kv_positions=kv_positions, causal=causal,
              sliding_window=sliding_window, scale=scale)


def attention_mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions, *,
                   causal: bool, sliding_window: int | None, q_branch_ids=None,
                   kv_branch_ids=None):
    """Boolean [batch, q_len, kv_len] mask: True where a query may see a key."""
    qp = q_positions[:, :, None]
    kp = kv_positions[:, None, :]
    mask = jnp.ones(jnp.broadcast_shapes(qp.shape, kp.shape), dtype=bool)
    if q_segment_ids is not None:
        mask &= q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    if causal:
        mask &= kp <= qp
    if sliding_window is not None:
        mask &= (qp - kp) < sliding_window
    if q_branch_ids is not None:
        kb = kv_branch_ids[:, None, :]
        mask &= (kb == 0) | (kb == q_branch_ids[:, :, None])
    return mask


def xla_attention(q, k, v, *, q_segment_ids, kv_segment_ids, q_positions, kv_positions,
                  causal, sliding_window, scale):
    """Reference: materializes [q_len, kv_len] scores, softmax in fp32."""
    mask = attention_mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions,
                          causal=causal, sliding_window=sliding_window)
    return head_major_attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask,
                                scale=scale)


def head_major_attention(q, k, v, mask, *, scale):
    """XLA attention with K/V in head-major layout [batch, kv_heads, kv_len, head_dim] and
    a boolean mask [batch, q_len, kv_len]; q is [batch, q_len, heads, head_dim].

    GQA without repeating K/V in memory: the `group` query heads that share a KV head are
    folded into the query axis, so both products are plain batched matmuls over (batch,
    kv_heads). On XLA's CPU backend this runs the layer stack's forward+backward about 12%
    faster than a 5-D einsum with a (kv_heads, group) split."""
    b, q_len, heads, d = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    group = heads // kv_heads
    qt = fold_query_groups(q, kv_heads)
    scores = jnp.einsum("bhqd,bhkd->bhqk", qt, k, preferred_element_type=jnp.float32)
    scores = scores.reshape(b, kv_heads, group, q_len, kv_len) * scale
    scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bhkd->bhqd", probs.reshape(b, kv_heads, group * q_len, kv_len), v,
                     preferred_element_type=jnp.float32)
    return unfold_query_groups(out, q)


def fold_query_groups(q, kv_heads):
    """[batch, q_len, heads, d] -> [batch, kv_heads, group * q_len, d]: the query heads
    sharing a KV head become rows of one matmul against it."""
    b, q_len, heads, d = q.shape
    group = heads // kv_heads
    return (q.reshape(b, q_len, kv_heads, group, d).transpose(0, 2, 3, 1, 4)
            .reshape(b, kv_heads, group * q_len, d))


def unfold_query_groups(out, q):
    """The inverse of fold_query_groups for the attention output, in q's shape and dtype."""
    b, q_len, heads, d = q.shape
    kv_heads = out.shape[1]
    out = out.reshape(b, kv_heads, heads // kv_heads, q_len, d).transpose(0, 3, 1, 2, 4)
    return out.reshape(b, q_len, heads, d).astype(q.dtype)


def cudnn_attention(q, k, v, *, q_segment_ids, kv_segment_ids, q_positions, kv_positions,
                    causal, sliding_window, scale):
    """cuDNN fused attention through jax.nn.dot_product_attention (NVIDIA GPUs only)."""
    if jax.default_backend() != "gpu":
        raise SolarError("attention impl 'cudnn' needs an NVIDIA GPU; use 'xla' here")
    if q_segment_ids is not None:
        raise SolarError("attention impl 'cudnn' does not take segment_ids; use 'xla' or 'pallas'")
    window = (sliding_window - 1, 0) if sliding_window is not None else None
    return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal,
                                        local_window_size=window, implementation="cudnn")


def pallas_attention(q, k, v, **kwargs):
    """Fused flash attention Pallas kernels (solar_jax.kernels): Triton on GPU, Mosaic on TPU,
    interpreted on CPU; per device (shard_map) when a mesh is set with `jax.set_mesh`.
    Imported on first call, so `import solar_jax` never loads Pallas."""
    from solar_jax.kernels import pallas_attention as kernel
    return kernel(q, k, v, **kwargs)


register_attention("xla", xla_attention)
register_attention("cudnn", cudnn_attention)
# "auto" on TPU: the kernels are verified in the Pallas interpreter, compile with Mosaic
# for v5e, v5p and v6e (tests/test_kernels_aot.py) and keep the SOLAR pretrain step in HBM
# where the XLA math does not (issue 16). On GPU "auto" stays "xla" until a GPU run of
# benchmarks/attention.py measures the Triton kernels (docs/attention.md).
register_attention("pallas", pallas_attention, auto_for=("tpu",))
