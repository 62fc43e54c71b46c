"""Flash attention forward and backward for TPUs, as Pallas kernels lowered through Mosaic.

Layout is [batch, heads, seq, head_dim] (the wrapper transposes): Mosaic tiles the two minor
dimensions of every block into (8 sublane x 128 lane) vregs, so (seq, head_dim) must be
the minor pair. GQA: a query head's K/V BlockSpec points at kv head `h // group`; the dK/dV
kernel of a kv head sweeps (query head in its group) x (query tile) in its reduction grid
axis, so dK/dV are summed in VMEM scratch and never materialized per query head.

Tile skipping: every grid axis that walks key tiles (or query tiles, for dK/dV) walks the
*visible range* of the current tile, read from scalar-prefetched SMEM tables. Steps past the
range map to the last visible tile, so the pipeline sees an unchanged block index and issues
no DMA, and the body is skipped with `pl.when`. Per step, a tile pair is classified from its
SMEM summaries (see masking.py): full tiles skip building the mask entirely.

Lane tricks follow JAX's own TPU kernels: per-row softmax statistics live in
[rows, 128]-lane scratch (all lanes equal), per-token mask inputs are pre-broadcast to
[seq, 128] columns or [8, seq] rows so that no in-kernel relayout is needed; lse and the
backward's delta are [b, h, 1, seq] rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from solar_jax.kernels import cost, masking
from solar_jax.kernels.masking import DEAD_ROW_THRESHOLD, MASK_VALUE, NUM_STATS

LANES = 128
SUBLANES = 8
NT = (((1,), (1,)), ((), ()))  # a @ b.T


def _dot(a, b, dims=(((1,), (0,)), ((), ()))):
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def _lanes(x, n: int):
    """[rows, 128] with equal lanes -> [rows, n]."""
    if n == LANES:
        return x
    if n % LANES == 0:
        return jnp.tile(x, (1, n // LANES))
    if n < LANES:
        return x[:, :n]
    return jnp.broadcast_to(x[:, :1], (x.shape[0], n))  # interpret-mode tile sizes only


def _columns(x):
    return None if x is None else lax.broadcast_in_dim(x, (*x.shape, LANES), (0, 1))


def _rows(x):
    if x is None:
        return None
    return lax.broadcast_in_dim(x, (x.shape[0], SUBLANES, x.shape[1]), (0, 2))


def _stats(ref, index):
    return [ref[index * NUM_STATS + c] for c in range(NUM_STATS)]


def _run_classified(cfg, q_stats, k_stats, step):
    """step(masked) for a visible tile pair; the mask is built only for partial pairs."""
    visible, full = masking.classify(q_stats, k_stats, causal=cfg.causal, window=cfg.window,
                                     segmented=cfg.segmented)
    pl.when(full)(lambda: step(False))
    pl.when(visible & jnp.logical_not(full))(lambda: step(True))


def _visible_tile(ranges_ref, tile, step):
    """The step-th visible tile of the range; past the end, the last one (no new DMA)."""
    lo, hi = ranges_ref[2 * tile], ranges_ref[2 * tile + 1]
    return jnp.minimum(lo + step, jnp.maximum(hi - 1, lo))


def _query_major_specs(bq, bk, d, group, nq):
    """BlockSpecs for the forward and dQ grids, (batch, head, q tile, step over kv tiles):
    q-like [b, h, s, d], kv [b, kv_h, s, d], per-query rows [b, h, 1, s], query columns
    [b, s, 128] and key rows [b, 8, s]. Scalar-prefetch refs come last in index maps."""
    def kv_tile(b, i, j, ranges):
        return _visible_tile(ranges, b * nq + i, j)

    return (
        pl.BlockSpec((None, None, bq, d), lambda b, h, i, j, *_: (b, h, i, 0)),
        pl.BlockSpec((None, None, bk, d), lambda b, h, i, j, _q, _k, ranges: (
            b, lax.div(h, group), kv_tile(b, i, j, ranges), 0)),
        pl.BlockSpec((None, None, 1, bq), lambda b, h, i, j, *_: (b, h, 0, i)),
        pl.BlockSpec((None, bq, LANES), lambda b, h, i, j, *_: (b, i, 0)),
        pl.BlockSpec((None, SUBLANES, bk), lambda b, h, i, j, _q, _k, ranges: (
            b, 0, kv_tile(b, i, j, ranges))),
    )


def _call(kernel, cfg, grid, in_specs, out_specs, out_shape, scratch, name, cost):
    return pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=3, grid=grid, in_specs=in_specs, out_specs=out_specs,
            scratch_shapes=scratch),
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=pltpu.InterpretParams() if cfg.interpret else False,
        name=name,
        cost_estimate=cost,
    )


def _cost(kernel, cfg, q, k, bq, bk):
    b, h, _, d = q.shape
    return cost.estimate(kernel, cfg, batch=b, heads=h, kv_heads=k.shape[1], head_dim=d,
                         itemsize=q.dtype.itemsize, block_q=bq, block_kv=bk)


def _split(refs, segmented, n_out):
    """(q_seg_ref, k_seg_ref) or Nones, the n_out output refs, then the scratch refs."""
    seg, refs = (tuple(refs[:2]), refs[2:]) if segmented else ((None, None), refs)
    return seg, refs[:n_out], refs[n_out:]


# --------------------------------------------------------------------------- forward

def _fwd_kernel(q_stats_ref, k_stats_ref, ranges_ref, q_ref, k_ref, v_ref, q_pos_ref,
                k_pos_ref, *refs, cfg, nq, nk):
    (q_seg_ref, k_seg_ref), (o_ref, lse_ref), (m_ref, l_ref, acc_ref) = _split(
        refs, cfg.segmented, 2)
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    tile = b * nq + i
    kv = ranges_ref[2 * tile] + j
    bq, bk = q_ref.shape[0], k_ref.shape[0]
    d = q_ref.shape[1]

    @pl.when(j == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
        l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    def step(masked: bool):
        s = _dot(q_ref[...], k_ref[...], NT) * cfg.scale  # [bq, bk]
        if masked:
            mask = masking.tile_mask(
                _lanes(q_pos_ref[...], bk), k_pos_ref[:1, :],
                None if q_seg_ref is None else _lanes(q_seg_ref[...], bk),
                None if k_seg_ref is None else k_seg_ref[:1, :],
                kv * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1),
                causal=cfg.causal, window=cfg.window, kv_len=cfg.kv_len_if_padded)
            s = jnp.where(mask, s, MASK_VALUE)
        m_prev = m_ref[...]
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))  # [bq, 128]
        p = jnp.exp(s - _lanes(m_next, bk))
        alpha = jnp.exp(m_prev - m_next)
        l_ref[...] = alpha * l_ref[...] + jnp.sum(p, axis=1, keepdims=True)
        m_ref[...] = m_next
        v = v_ref[...]
        acc_ref[...] = acc_ref[...] * _lanes(alpha, d) + _dot(p.astype(v.dtype), v)

    @pl.when(kv < ranges_ref[2 * tile + 1])
    def _run():
        _run_classified(cfg, _stats(q_stats_ref, tile), _stats(k_stats_ref, b * nk + kv), step)

    @pl.when(j == nk - 1)
    def _finish():
        m = m_ref[...]
        seen = m > DEAD_ROW_THRESHOLD  # [bq, 128]; widen floats, not booleans, to [bq, d]
        l = jnp.where(seen, l_ref[...], 1.0)
        o = jnp.where(_lanes(m, d) > DEAD_ROW_THRESHOLD, acc_ref[...] / _lanes(l, d), 0.0)
        o_ref[...] = o.astype(o_ref.dtype)
        lse = jnp.where(seen, m + jnp.log(l), jnp.inf)  # all lanes equal
        lse_ref[...] = lse.T[:1, :]  # one row, queries on lanes: [1, bq]


def forward(q, k, v, meta, cfg):
    """o [b, h, s, d] and natural-log lse [b, h, 1, s] (+inf for rows that see no key)."""
    b, h, sq, d = q.shape
    kvh, skv = k.shape[1], k.shape[2]
    group = h // kvh
    bq, bk = cfg.blocks.block_q, cfg.blocks.block_kv
    nq, nk = sq // bq, skv // bk

    q_spec, kv_spec, q_vec, q_col, k_row = _query_major_specs(bq, bk, d, group, nq)
    seg_specs, seg_args = [], []
    if cfg.segmented:
        seg_specs, seg_args = [q_col, k_row], [_columns(meta.q_seg), _rows(meta.kv_seg)]
    call = _call(
        functools.partial(_fwd_kernel, cfg=cfg, nq=nq, nk=nk), cfg, (b, h, nq, nk),
        [q_spec, kv_spec, kv_spec, q_col, k_row, *seg_specs], [q_spec, q_vec],
        [jax.ShapeDtypeStruct(q.shape, q.dtype),
         jax.ShapeDtypeStruct((b, h, 1, sq), jnp.float32)],
        [pltpu.VMEM((bq, LANES), jnp.float32), pltpu.VMEM((bq, LANES), jnp.float32),
         pltpu.VMEM((bq, d), jnp.float32)],
        "solar_flash_fwd", _cost("fwd", cfg, q, k, bq, bk))
    return call(*meta.tiles(cfg, bq, bk, over="kv"), q, k, v, _columns(meta.q_pos),
                _rows(meta.kv_pos), *seg_args)


# --------------------------------------------------------------------------- backward

def _dq_kernel(q_stats_ref, k_stats_ref, ranges_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
               delta_ref, q_pos_ref, k_pos_ref, *refs, cfg, nq, nk):
    (q_seg_ref, k_seg_ref), (dq_ref,), (acc_ref,) = _split(refs, cfg.segmented, 1)
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    tile = b * nq + i
    kv = ranges_ref[2 * tile] + j
    bq, bk = q_ref.shape[0], k_ref.shape[0]

    @pl.when(j == 0)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    def step(masked: bool):
        k = k_ref[...]
        s = _dot(q_ref[...], k, NT) * cfg.scale
        if masked:
            mask = masking.tile_mask(
                _lanes(q_pos_ref[...], bk), k_pos_ref[:1, :],
                None if q_seg_ref is None else _lanes(q_seg_ref[...], bk),
                None if k_seg_ref is None else k_seg_ref[:1, :],
                kv * bk + lax.broadcasted_iota(jnp.int32, (bq, bk), 1),
                causal=cfg.causal, window=cfg.window, kv_len=cfg.kv_len_if_padded)
            s = jnp.where(mask, s, MASK_VALUE)
        p = jnp.exp(s - jnp.expand_dims(lse_ref[0], -1))
        dp = _dot(do_ref[...], v_ref[...], NT)
        ds = p * (dp - jnp.expand_dims(delta_ref[0], -1))
        acc_ref[...] += _dot(ds.astype(k.dtype), k)

    @pl.when(kv < ranges_ref[2 * tile + 1])
    def _run():
        _run_classified(cfg, _stats(q_stats_ref, tile), _stats(k_stats_ref, b * nk + kv), step)

    @pl.when(j == nk - 1)
    def _finish():
        dq_ref[...] = (acc_ref[...] * cfg.scale).astype(dq_ref.dtype)


def _dkv_kernel(q_stats_ref, k_stats_ref, ranges_ref, q_ref, k_ref, v_ref, do_ref, lse_ref,
                delta_ref, q_pos_ref, k_pos_ref, *refs, cfg, nq, nk, group):
    (q_seg_ref, k_seg_ref), (dk_ref, dv_ref), (dk_acc, dv_acc) = _split(
        refs, cfg.segmented, 2)
    b, j, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    tile = b * nk + j
    qi = ranges_ref[2 * tile] + lax.rem(t, nq)
    bk, bq = k_ref.shape[0], q_ref.shape[0]

    @pl.when(t == 0)
    def _init():
        dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
        dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

    def step(masked: bool):
        # Transposed scores [bk, bq]: the query axis is on lanes, so lse/delta rows
        # broadcast down sublanes and dK/dV come out of plain (not transposed) matmuls.
        q, do = q_ref[...], do_ref[...]
        s = _dot(k_ref[...], q, NT) * cfg.scale
        if masked:
            mask = masking.tile_mask(
                q_pos_ref[:1, :], _lanes(k_pos_ref[...], bq),
                None if q_seg_ref is None else q_seg_ref[:1, :],
                None if k_seg_ref is None else _lanes(k_seg_ref[...], bq),
                j * bk + lax.broadcasted_iota(jnp.int32, (bk, bq), 0),
                causal=cfg.causal, window=cfg.window, kv_len=cfg.kv_len_if_padded)
            s = jnp.where(mask, s, MASK_VALUE)
        p = jnp.exp(s - lse_ref[...])
        dv_acc[...] += _dot(p.astype(do.dtype), do)
        ds = p * (_dot(v_ref[...], do, NT) - delta_ref[...])
        dk_acc[...] += _dot(ds.astype(q.dtype), q)

    @pl.when(qi < ranges_ref[2 * tile + 1])
    def _run():
        _run_classified(cfg, _stats(q_stats_ref, b * nq + qi), _stats(k_stats_ref, tile), step)

    @pl.when(t == group * nq - 1)
    def _finish():
        dk_ref[...] = (dk_acc[...] * cfg.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def backward(q, k, v, meta, o, lse, do, cfg):
    b, h, sq, d = q.shape
    kvh, skv = k.shape[1], k.shape[2]
    group = h // kvh
    bs = cfg.blocks
    # delta_i = sum_d o_i * do_i (the softmax-Jacobian term): one fused XLA reduction.
    delta = jnp.einsum("bhsd,bhsd->bhs", o.astype(jnp.float32),
                       do.astype(jnp.float32))[:, :, None, :]
    q_cols, q_rows = _columns(meta.q_pos), _rows(meta.q_pos)
    k_cols, k_rows = _columns(meta.kv_pos), _rows(meta.kv_pos)

    bq, bk = bs.block_q_dq, bs.block_kv_dq
    nq, nk = sq // bq, skv // bk

    q_spec, kv_spec, q_vec, q_col, k_row = _query_major_specs(bq, bk, d, group, nq)
    seg_specs, seg_args = [], []
    if cfg.segmented:
        seg_specs, seg_args = [q_col, k_row], [_columns(meta.q_seg), _rows(meta.kv_seg)]
    dq = _call(
        functools.partial(_dq_kernel, cfg=cfg, nq=nq, nk=nk), cfg, (b, h, nq, nk),
        [q_spec, kv_spec, kv_spec, q_spec, q_vec, q_vec, q_col, k_row, *seg_specs],
        q_spec, jax.ShapeDtypeStruct(q.shape, q.dtype), [pltpu.VMEM((bq, d), jnp.float32)],
        "solar_flash_bwd_dq", _cost("dq", cfg, q, k, bq, bk),
    )(*meta.tiles(cfg, bq, bk, over="kv"), q, k, v, do, lse, delta, q_cols, k_rows, *seg_args)

    bq, bk = bs.block_q_dkv, bs.block_kv_dkv
    nq, nk = sq // bq, skv // bk

    def q_tile(b, j, t, ranges):
        return _visible_tile(ranges, b * nk + j, lax.rem(t, nq))

    q_spec = pl.BlockSpec((None, None, bq, d), lambda b, g, j, t, _q, _k, r: (
        b, g * group + lax.div(t, nq), q_tile(b, j, t, r), 0))
    q_vec = pl.BlockSpec((None, None, 1, bq), lambda b, g, j, t, _q, _k, r: (
        b, g * group + lax.div(t, nq), 0, q_tile(b, j, t, r)))
    kv_spec = pl.BlockSpec((None, None, bk, d), lambda b, g, j, t, *_: (b, g, j, 0))
    q_row = pl.BlockSpec((None, SUBLANES, bq),
                         lambda b, g, j, t, _q, _k, r: (b, 0, q_tile(b, j, t, r)))
    k_col = pl.BlockSpec((None, bk, LANES), lambda b, g, j, t, *_: (b, j, 0))
    seg_specs, seg_args = [], []
    if cfg.segmented:
        seg_specs, seg_args = [q_row, k_col], [_rows(meta.q_seg), _columns(meta.kv_seg)]
    dk, dv = _call(
        functools.partial(_dkv_kernel, cfg=cfg, nq=nq, nk=nk, group=group), cfg,
        (b, kvh, nk, group * nq),
        [q_spec, kv_spec, kv_spec, q_spec, q_vec, q_vec, q_row, k_col, *seg_specs],
        [kv_spec, kv_spec],
        [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        [pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, d), jnp.float32)],
        "solar_flash_bwd_dkv", _cost("dkv", cfg, q, k, bq, bk),
    )(*meta.tiles(cfg, bq, bk, over="q"), q, k, v, do, lse, delta, q_rows, k_cols, *seg_args)
    return dq, dk, dv
