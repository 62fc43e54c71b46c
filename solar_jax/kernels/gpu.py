"""Flash attention forward and backward for GPUs, as Pallas kernels lowered through Triton.

Why Triton rather than Mosaic GPU: the Triton lowering runs on every CUDA GPU JAX supports
(A100, L4, H100, ...), accepts the data-dependent loop bounds and per-tile branches that
position-based tile skipping needs, and has a faithful CPU interpret mode, so these exact
kernels are tested in CI without a GPU. Mosaic GPU is Hopper/Blackwell only and makes the
warpgroup/TMA/barrier pipeline explicit, which cannot be validated without the hardware;
JAX's own Mosaic GPU attention still lacks a causal backward and segment ids.
Caveat: jax 0.11 deprecates Pallas-on-Triton (a DeprecationWarning at lowering; it still
works). The backend interface is two functions, `forward` and `backward`, over the same
MaskInputs/FlashConfig, so a Mosaic GPU module can replace this one when that lands or when
H100 benchmarks show Triton short of cuDNN.

Layout is the model's own [batch, seq, heads, head_dim]: Triton loads strided tiles, so no
transposes. GQA never repeats K/V: a query head's program reads kv head `h // group`
through its BlockSpec, and the dK/dV program of a kv head loops over its `group` query heads
itself, so dK/dV are accumulated once, never materialized per query head.

Scores are kept in base 2 (scale * log2(e) folded into one multiply, exp2 is the native
instruction); `lse` is therefore base-2 too and only ever read back by these kernels.
Rows that see no key get lse = +inf: their probabilities come out exactly 0 in the backward.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from solar_jax.kernels import cost, masking
from solar_jax.kernels.masking import DEAD_ROW_THRESHOLD, MASK_VALUE, NUM_STATS

LOG2E = math.log2(math.e)


def _dot(a, b, *, trans_a=False, trans_b=False):
    """fp32-accumulated matmul; fp32 inputs stay fp32 (IEEE, not TF32) to keep 1e-5 parity."""
    a = a.T if trans_a else a
    contract = ((1,), (1,)) if trans_b else ((1,), (0,))
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, (contract, ((), ())), precision=precision,
                           preferred_element_type=jnp.float32)


def _stats(ref, index):
    return [ref[index * NUM_STATS + c] for c in range(NUM_STATS)]


def _masked_scores(s, full, q_meta, k_meta, k_start, cfg):
    """Mask `s` [bq, bk] unless the tile is fully visible; the mask is built only then."""
    def apply(s):
        q_pos, q_seg = q_meta()
        k_pos, k_seg = k_meta()
        k_index = k_start + jnp.arange(s.shape[1], dtype=jnp.int32)
        mask = masking.tile_mask(
            q_pos[:, None], k_pos[None, :],
            None if q_seg is None else q_seg[:, None],
            None if k_seg is None else k_seg[None, :], k_index[None, :],
            causal=cfg.causal, window=cfg.window, kv_len=cfg.kv_len_if_padded)
        return jnp.where(mask, s, MASK_VALUE)
    return lax.cond(full, lambda s: s, apply, s)


def _classify(q_stats, k_stats, cfg):
    return masking.classify(q_stats, k_stats, causal=cfg.causal, window=cfg.window,
                            segmented=cfg.segmented)


def _split_refs(refs, segmented):
    """(q_seg_ref, k_seg_ref) or Nones, then the output refs."""
    if segmented:
        return tuple(refs[:2]), refs[2:]
    return (None, None), refs


# --------------------------------------------------------------------------- forward

def _fwd_kernel(q_stats_ref, k_stats_ref, ranges_ref, q_ref, k_ref, v_ref, q_pos_ref,
                k_pos_ref, *refs, cfg, bq, bk, nq, nk):
    (q_seg_ref, k_seg_ref), (o_ref, lse_ref) = _split_refs(refs, cfg.segmented)
    # Reverse the q-tile order: under causal masking the last tiles do the most work, and
    # launching them first evens out the tail of the grid.
    i = nq - 1 - pl.program_id(0)
    b = pl.program_id(1)
    tile = b * nq + i
    lo, hi = ranges_ref[2 * tile], ranges_ref[2 * tile + 1]
    q_stats = _stats(q_stats_ref, tile)
    q = q_ref[...]
    qk_scale = cfg.scale * LOG2E

    def q_meta():
        return q_pos_ref[...], None if q_seg_ref is None else q_seg_ref[...]

    def body(j, carry):
        acc, m_prev, l_prev = carry
        span = pl.ds(j * bk, bk)
        _, full = _classify(q_stats, _stats(k_stats_ref, b * nk + j), cfg)
        s = _dot(q, k_ref[span, :], trans_b=True) * qk_scale
        s = _masked_scores(s, full, q_meta, lambda: (
            k_pos_ref[span], None if k_seg_ref is None else k_seg_ref[span]), j * bk, cfg)
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1))
        p = jnp.exp2(s - m_next[:, None])
        alpha = jnp.exp2(m_prev - m_next)
        v = v_ref[span, :]
        acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v)
        return acc, m_next, l_prev * alpha + jnp.sum(p, axis=1)

    init = (jnp.zeros(q.shape, jnp.float32), jnp.full((bq,), -jnp.inf, jnp.float32),
            jnp.zeros((bq,), jnp.float32))
    acc, m, l = lax.fori_loop(lo, hi, body, init)
    seen = m > DEAD_ROW_THRESHOLD
    l = jnp.where(seen, l, 1.0)
    o_ref[...] = jnp.where(seen[:, None], acc / l[:, None], 0.0).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(seen, m + jnp.log2(l), jnp.inf)


def forward(q, k, v, meta, cfg):
    """o [b, s, h, d] and base-2 lse [b, h, s] (fp32, +inf for rows that see no key)."""
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    group = h // kvh
    bs = cfg.blocks
    bq, bk = bs.block_q, bs.block_kv
    nq, nk = sq // bq, skv // bk
    q_stats, k_stats, ranges = meta.tiles(cfg, bq, bk, over="kv")
    seg_args, seg_specs = [], []
    if cfg.segmented:
        seg_args = [meta.q_seg, meta.kv_seg]
        seg_specs = [pl.BlockSpec((None, bq), lambda i, b, h: (b, nq - 1 - i)),
                     pl.BlockSpec((None, skv), lambda i, b, h: (b, 0))]
    q_spec = pl.BlockSpec((None, bq, None, d), lambda i, b, h: (b, nq - 1 - i, h, 0))
    kv_spec = pl.BlockSpec((None, skv, None, d), lambda i, b, h: (b, 0, lax.div(h, group), 0))
    kernel = functools.partial(_fwd_kernel, cfg=cfg, bq=bq, bk=bk, nq=nq, nk=nk)
    return pl.pallas_call(
        kernel,
        grid=(nq, b, h),
        in_specs=[pl.no_block_spec] * 3 + [
            q_spec, kv_spec, kv_spec,
            pl.BlockSpec((None, bq), lambda i, b, h: (b, nq - 1 - i)),
            pl.BlockSpec((None, skv), lambda i, b, h: (b, 0)), *seg_specs],
        out_specs=[q_spec, pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, nq - 1 - i))],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((b, h, sq), jnp.float32)],
        compiler_params=_compiler_params(bs, d, bq * bk),
        interpret=cfg.interpret,
        name="solar_flash_fwd",
        cost_estimate=_cost("fwd", cfg, q, k, bq, bk),
    )(q_stats, k_stats, ranges, q, k, v, meta.q_pos, meta.kv_pos, *seg_args)


def _cost(kernel, cfg, q, k, bq, bk):
    b, _, h, d = q.shape
    return cost.estimate(kernel, cfg, batch=b, heads=h, kv_heads=k.shape[2], head_dim=d,
                         itemsize=q.dtype.itemsize, block_q=bq, block_kv=bk)


def _compiler_params(bs, head_dim, tile_elems):
    warps = bs.num_warps or (8 if head_dim > 64 and tile_elems >= 128 * 64 else 4)
    return plgpu.CompilerParams(num_warps=warps, num_stages=bs.num_stages)


# --------------------------------------------------------------------------- backward

def _dq_kernel(q_stats_ref, k_stats_ref, ranges_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
               delta_ref, q_pos_ref, k_pos_ref, *refs, cfg, bk, nq, nk):
    (q_seg_ref, k_seg_ref), (dq_ref,) = _split_refs(refs, cfg.segmented)
    i, b = pl.program_id(0), pl.program_id(1)
    tile = b * nq + i
    lo, hi = ranges_ref[2 * tile], ranges_ref[2 * tile + 1]
    q_stats = _stats(q_stats_ref, tile)
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    qk_scale = cfg.scale * LOG2E

    def q_meta():
        return q_pos_ref[...], None if q_seg_ref is None else q_seg_ref[...]

    def body(j, dq):
        span = pl.ds(j * bk, bk)
        _, full = _classify(q_stats, _stats(k_stats_ref, b * nk + j), cfg)
        k, v = k_ref[span, :], v_ref[span, :]
        s = _dot(q, k, trans_b=True) * qk_scale
        s = _masked_scores(s, full, q_meta, lambda: (
            k_pos_ref[span], None if k_seg_ref is None else k_seg_ref[span]), j * bk, cfg)
        p = jnp.exp2(s - lse[:, None])
        ds = p * (_dot(do, v, trans_b=True) - delta[:, None])
        return dq + _dot(ds.astype(k.dtype), k)

    dq = lax.fori_loop(lo, hi, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * cfg.scale).astype(dq_ref.dtype)


def _dkv_kernel(q_stats_ref, k_stats_ref, ranges_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
                delta_ref, q_pos_ref, k_pos_ref, *refs, cfg, bq, bk, nq, nk, group):
    (q_seg_ref, k_seg_ref), (dk_ref, dv_ref) = _split_refs(refs, cfg.segmented)
    j, b = pl.program_id(0), pl.program_id(1)
    tile = b * nk + j
    lo, hi = ranges_ref[2 * tile], ranges_ref[2 * tile + 1]
    k_stats = _stats(k_stats_ref, tile)
    k, v = k_ref[...], v_ref[...]
    qk_scale = cfg.scale * LOG2E

    def k_meta():
        return k_pos_ref[...], None if k_seg_ref is None else k_seg_ref[...]

    # One loop over (query head of this kv head's group) x (visible query tile), so the
    # group's contributions to dK/dV are summed in registers, never written per head.
    span_len = hi - lo

    def body(t, carry):
        dk, dv = carry
        g, i = lax.div(t, span_len), lo + lax.rem(t, span_len)
        span = pl.ds(i * bq, bq)
        _, full = _classify(_stats(q_stats_ref, b * nq + i), k_stats, cfg)
        q, do = q_ref[span, g, :], do_ref[span, g, :]
        s = _dot(q, k, trans_b=True) * qk_scale
        s = _masked_scores(s, full, lambda: (
            q_pos_ref[span], None if q_seg_ref is None else q_seg_ref[span]), k_meta,
            j * bk, cfg)
        p = jnp.exp2(s - lse_ref[g, span][:, None])
        dv = dv + _dot(p.astype(do.dtype), do, trans_a=True)
        ds = p * (_dot(do, v, trans_b=True) - delta_ref[g, span][:, None])
        return dk + _dot(ds.astype(q.dtype), q, trans_a=True), dv

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(0, group * span_len, body, (zeros, zeros))
    dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def backward(q, k, v, meta, o, lse, do, cfg):
    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    group = h // kvh
    bs = cfg.blocks
    # delta_i = sum_d o_i * do_i: the softmax-Jacobian term, one fused XLA reduction.
    delta = jnp.einsum("bshd,bshd->bhs", o.astype(jnp.float32), do.astype(jnp.float32))
    seg = [meta.q_seg, meta.kv_seg] if cfg.segmented else []

    bq, bk = bs.block_q_dq, bs.block_kv_dq
    nq, nk = sq // bq, skv // bk
    row = pl.BlockSpec((None, bq, None, d), lambda i, b, h: (b, i, h, 0))
    kv_full = pl.BlockSpec((None, skv, None, d), lambda i, b, h: (b, 0, lax.div(h, group), 0))
    q_vec = pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i))
    q_ids = pl.BlockSpec((None, bq), lambda i, b, h: (b, i))
    kv_ids = pl.BlockSpec((None, skv), lambda i, b, h: (b, 0))
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg, bk=bk, nq=nq, nk=nk),
        grid=(nq, b, h),
        in_specs=[pl.no_block_spec] * 3 + [row, kv_full, kv_full, row, q_vec, q_vec,
                                           q_ids, kv_ids] + [q_ids, kv_ids][:len(seg)],
        out_specs=row,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=_compiler_params(bs, d, bq * bk),
        interpret=cfg.interpret,
        name="solar_flash_bwd_dq",
        cost_estimate=_cost("dq", cfg, q, k, bq, bk),
    )(*meta.tiles(cfg, bq, bk, over="kv"), q, k, v, do, lse, delta, meta.q_pos, meta.kv_pos,
      *seg)

    bq, bk = bs.block_q_dkv, bs.block_kv_dkv
    nq, nk = sq // bq, skv // bk
    q_group = pl.BlockSpec((None, sq, group, d), lambda j, b, g: (b, 0, g, 0))
    kv_row = pl.BlockSpec((None, bk, None, d), lambda j, b, g: (b, j, g, 0))
    q_vecs = pl.BlockSpec((None, group, sq), lambda j, b, g: (b, g, 0))
    q_ids = pl.BlockSpec((None, sq), lambda j, b, g: (b, 0))
    kv_ids = pl.BlockSpec((None, bk), lambda j, b, g: (b, j))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, cfg=cfg, bq=bq, bk=bk, nq=nq, nk=nk, group=group),
        grid=(nk, b, kvh),
        in_specs=[pl.no_block_spec] * 3 + [q_group, kv_row, kv_row, q_group, q_vecs, q_vecs,
                                           q_ids, kv_ids] + [q_ids, kv_ids][:len(seg)],
        out_specs=[kv_row, kv_row],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype),
                   jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=_compiler_params(bs, d, bq * bk),
        interpret=cfg.interpret,
        name="solar_flash_bwd_dkv",
        cost_estimate=_cost("dkv", cfg, q, k, bq, bk),
    )(*meta.tiles(cfg, bq, bk, over="q"), q, k, v, do, lse, delta, meta.q_pos, meta.kv_pos,
      *seg)
    return dq, dk, dv
