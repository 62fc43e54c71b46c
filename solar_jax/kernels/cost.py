"""Cost estimates (FLOPs, exps, HBM bytes) of the flash attention kernels, for XLA.

A `pallas_call` is opaque to XLA: without an estimate its cost model counts a kernel as
free, so `compiled.cost_analysis()` (and the step time and MFU `solar-jax compile`
derives from it) would leave attention out, and the scheduler could not overlap
collectives with it. The numbers follow the kernels' own loops: work is done per *visible*
tile pair (the tile skipping of masking.py), counted here for the default positions
(0..len-1) and ignoring segment ids, which only skip more. So the figures are exact for
plain causal/sliding-window attention and an upper bound for packed documents. K/V tiles
are re-read from HBM by every query tile and query head that sees them (Q and dO by every
key tile in dK/dV), which is what makes the bytes depend on the tile sizes.
"""

from __future__ import annotations

import numpy as np
from jax.experimental import pallas as pl


def visible_tile_pairs(cfg, block_q: int, block_kv: int) -> int:
    """Tile pairs (query tile, key tile) that the kernels compute, default positions."""
    nq, nk = -(-cfg.q_len // block_q), -(-cfg.kv_len // block_kv)
    q_lo = np.arange(nq)[:, None] * block_q
    q_hi = np.minimum(q_lo + block_q, cfg.q_len) - 1
    k_lo = np.arange(nk)[None, :] * block_kv
    k_hi = np.minimum(k_lo + block_kv, cfg.kv_len) - 1
    visible = np.ones((nq, nk), bool)
    if cfg.causal:
        visible &= k_lo <= q_hi
    if cfg.window is not None:
        visible &= q_lo - k_hi < cfg.window
    return int(visible.sum())


def estimate(kernel: str, cfg, *, batch: int, heads: int, kv_heads: int, head_dim: int,
             itemsize: int, block_q: int, block_kv: int) -> pl.CostEstimate:
    """kernel: "fwd", "dq" or "dkv"."""
    pairs = visible_tile_pairs(cfg, block_q, block_kv) * batch * heads
    tile = block_q * block_kv
    matmuls = {"fwd": 2, "dq": 3, "dkv": 4}[kernel]  # [bq, bk, d] products per tile pair
    q_rows = batch * heads * cfg.q_len
    kv_rows = batch * kv_heads * cfg.kv_len
    if kernel == "fwd":  # q in, o out once; k, v per visible pair; lse out
        moved = itemsize * (2 * q_rows * head_dim + pairs * 2 * block_kv * head_dim)
        moved += 4 * q_rows
    elif kernel == "dq":  # q, do in, dq out once; k, v per pair; lse, delta in
        moved = itemsize * (3 * q_rows * head_dim + pairs * 2 * block_kv * head_dim)
        moved += 8 * q_rows
    else:  # k, v in, dk, dv out once; q, do (and lse, delta) per pair
        moved = itemsize * (4 * kv_rows * head_dim + pairs * 2 * block_q * head_dim)
        moved += pairs * 8 * block_q
    return pl.CostEstimate(flops=int(2 * matmuls * tile * head_dim * pairs),
                           transcendentals=int(tile * pairs), bytes_accessed=int(moved))
