"""`flash_attention`: the backend-neutral wrapper around the GPU and TPU Pallas kernels.

It owns everything the kernels should not: defaults, padding to the tile multiple, layout,
the custom_vjp that pairs each backend's forward with its backward, and one corner of the
reference semantics. That corner: a query row that sees no key at all (only possible when
keys are not the queries' own, e.g. a KV cache) gets, in the XLA reference, a softmax over
all-equal masked scores, i.e. the mean of V. The kernels skip masked tiles, so they return 0
for such rows and flag them with lse = +inf; the wrapper substitutes mean(V) there, which
also gives the reference's gradient (do / kv_len into dV) by ordinary autodiff. For
self-attention every query sees itself, so the substitution is skipped at trace time.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from solar_jax.errors import SolarError
from solar_jax.kernels.blocks import BlockSizes, TPU_LANES, default_block_sizes
from solar_jax.kernels.masking import MaskInputs
from solar_jax.platform import target

BACKENDS = ("gpu", "tpu")


@dataclasses.dataclass(frozen=True)
class FlashConfig:
    """Everything static about one call; hashable, so it is a custom_vjp nondiff arg."""

    backend: str
    causal: bool
    window: int | None
    scale: float
    segmented: bool
    q_len: int  # real (unpadded) lengths
    kv_len: int
    kv_len_if_padded: int | None  # set when padded keys must be masked in partial tiles
    blocks: BlockSizes
    interpret: bool


def _backend_module(backend: str):
    # Imported on use: the Triton/Mosaic modules only load where they are needed.
    if backend == "gpu":
        from solar_jax.kernels import gpu
        return gpu
    from solar_jax.kernels import tpu
    return tpu


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(cfg: FlashConfig, q, k, v, meta: MaskInputs):
    return _backend_module(cfg.backend).forward(q, k, v, meta, cfg)


def _flash_fwd(cfg, q, k, v, meta):
    o, lse = _backend_module(cfg.backend).forward(q, k, v, meta, cfg)
    return (o, lse), (q, k, v, meta, o, lse)


def _flash_bwd(cfg, residuals, cotangents):
    q, k, v, meta, o, lse = residuals
    # lse is an output only so the wrapper can find rows that see no key; it is used under
    # stop_gradient, so its cotangent is zero and ignored.
    do, _ = cotangents
    dq, dk, dv = _backend_module(cfg.backend).backward(q, k, v, meta, o, lse, do, cfg)
    return dq, dk, dv, jax.tree.map(lambda _: None, meta)


_flash.defvjp(_flash_fwd, _flash_bwd)


def resolve_backend(backend: str | None, interpret: bool | None) -> tuple[str, bool]:
    """Default: the kernels for the target platform (the mesh in context's, else the
    default device's: solar_jax.platform); on CPU the GPU kernels, interpreted (the TPU
    interpreter simulates DMAs and semaphores and is much slower)."""
    platform = target().platform
    if backend is None:
        backend = "tpu" if platform == "tpu" else "gpu"
    if backend not in BACKENDS:
        raise SolarError(f"unknown Pallas attention backend {backend!r}; use 'gpu' or 'tpu'")
    if interpret is None:
        interpret = platform != backend
    return backend, interpret


def _tpu_interpreter_forced() -> bool:
    """Inside `pltpu.force_tpu_interpret_mode()`, interpret=False kernels are interpreted
    too, so hardware tile constraints need not apply. (Private config; absent -> False.)"""
    from jax._src import config as jax_config
    flag = getattr(jax_config, "pallas_tpu_interpret_mode_context_manager", None)
    return bool(flag is not None and flag.value)


def _pad_axis(x, axis: int, multiple: int):
    if x is None:
        return None
    extra = -x.shape[axis] % multiple
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


def flash_attention(q, k, v, *, q_segment_ids=None, kv_segment_ids=None, q_positions=None,
                    kv_positions=None, causal: bool = True, sliding_window: int | None = None,
                    scale: float | None = None, backend: str | None = None,
                    block_sizes: BlockSizes | None = None, interpret: bool | None = None):
    """Fused attention with the mask of `solar_jax.model.attention.attention_mask`.

    q: [batch, q_len, heads, head_dim]; k, v: [batch, kv_len, kv_heads, head_dim] with
    heads % kv_heads == 0 (GQA/MQA; K/V are never repeated). Positions default to
    0..len-1. Differentiable in q, k, v (custom_vjp with fused backward kernels).
    backend: "gpu" (Triton) or "tpu" (Mosaic); interpret: run the kernels through the
    Pallas interpreter (default: when the platform does not match the backend).
    """
    backend, interpret = resolve_backend(backend, interpret)
    b, q_len, heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    if heads % kv_heads or k.shape != v.shape or k.shape[0] != b or k.shape[3] != head_dim:
        raise SolarError(f"flash_attention: bad shapes q {q.shape}, k {k.shape}, v {v.shape}")
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise SolarError("flash_attention: pass segment ids for both queries and keys, or "
                         "for neither")
    self_attention = (q_len == kv_len and kv_positions is q_positions
                      and kv_segment_ids is q_segment_ids)
    if q_positions is None:
        q_positions = jnp.broadcast_to(jnp.arange(q_len, dtype=jnp.int32), (b, q_len))
    if kv_positions is None:
        kv_positions = jnp.broadcast_to(jnp.arange(kv_len, dtype=jnp.int32), (b, kv_len))

    interpreted = interpret or (backend == "tpu" and _tpu_interpreter_forced())
    if block_sizes is None:
        block_sizes = default_block_sizes(backend, interpret=interpreted)
    if backend == "gpu":
        blocks = block_sizes.fit(q_len, kv_len, q_align=16, kv_align=16, pow2=True)
    else:
        align = 8 if interpreted else TPU_LANES
        blocks = block_sizes.fit(q_len, kv_len, q_align=align, kv_align=align, pow2=False)
    blocks.check(backend, interpret=interpreted)
    q_mult, kv_mult = blocks.q_multiple, blocks.kv_multiple
    cfg = FlashConfig(
        backend=backend, causal=bool(causal), window=sliding_window,
        scale=float(scale) if scale is not None else head_dim ** -0.5,
        segmented=q_segment_ids is not None, q_len=q_len, kv_len=kv_len,
        kv_len_if_padded=kv_len if kv_len % kv_mult else None, blocks=blocks,
        interpret=bool(interpret))

    meta = MaskInputs(
        q_pos=_pad_axis(q_positions.astype(jnp.int32), 1, q_mult),
        kv_pos=_pad_axis(kv_positions.astype(jnp.int32), 1, kv_mult),
        q_seg=_pad_axis(None if q_segment_ids is None else q_segment_ids.astype(jnp.int32),
                        1, q_mult),
        kv_seg=_pad_axis(None if kv_segment_ids is None
                         else kv_segment_ids.astype(jnp.int32), 1, kv_mult))
    # Triton tiles are powers of two: zero-pad head_dim (zeros change no score, and the
    # extra output columns are sliced off). TPU blocks may span the full head_dim.
    d_pad = (1 << max(head_dim - 1, 15).bit_length()) - head_dim if backend == "gpu" else 0
    qp, kp, vp = (_pad_axis(_pad_axis(x, 3, head_dim + d_pad), 1, m)
                  for x, m in ((q, q_mult), (k, kv_mult), (v, kv_mult)))
    if backend == "tpu":  # Mosaic tiles the two minor dims: [b, h, s, d] keeps (s, d) there
        qp, kp, vp = (x.transpose(0, 2, 1, 3) for x in (qp, kp, vp))

    o, lse = _flash(cfg, qp, kp, vp, meta)

    if backend == "tpu":
        o = o.transpose(0, 2, 1, 3)
    o = o[:, :q_len, :, :head_dim]
    window_empty = sliding_window is not None and sliding_window <= 0
    if not self_attention or window_empty:
        dead = jnp.isinf(jax.lax.stop_gradient(lse.reshape(b, heads, -1)[:, :, :q_len]))
        mean_v = jnp.mean(v.astype(jnp.float32), axis=1)  # [b, kv_heads, d]
        mean_v = jnp.repeat(mean_v, heads // kv_heads, axis=1)  # [b, heads, d]: tiny
        o = jnp.where(dead.transpose(0, 2, 1)[..., None], mean_v[:, None].astype(o.dtype), o)
    return o
