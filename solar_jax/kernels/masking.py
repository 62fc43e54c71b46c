"""The attention mask, tile by tile: which tiles to skip, which to mask, and the mask itself.

The mask is the one in `solar_jax.model.attention.attention_mask`, defined on positions and
segment ids (not on array indices), so packed documents, left padding and KV caches all
work. Positions are arbitrary, so tile skipping cannot assume "tile j > tile i means
masked". Instead each tile gets a summary, `[pos_min, pos_max, seg_min, seg_max, padded]`
over its real rows, and a pair of tiles is classified from the two summaries:

* skipped: no (query, key) pair in the tiles can be visible (exact: a skipped tile would
  have contributed exactly zero);
* full: every pair is visible, so the kernel need not build the mask;
* partial: everything else; the kernel builds the per-element mask.

For ordinary causal/sliding-window self-attention this is exactly the classic diagonal
skipping; for packed sequences it also skips across documents. Each query tile's visible
key tiles are covered by one contiguous range [lo, hi), which the kernels loop over
(GPU) or map their grid onto (TPU); tiles inside the range are still classified.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from solar_jax.numerics import MASK_VALUE

INT_MAX = jnp.iinfo(jnp.int32).max
INT_MIN = jnp.iinfo(jnp.int32).min
NUM_STATS = 5  # pos_min, pos_max, seg_min, seg_max, padded
# A row whose running max never rose above this saw only masked scores.
DEAD_ROW_THRESHOLD = 0.5 * MASK_VALUE


def tile_stats(positions, segment_ids, length: int, block: int) -> jax.Array:
    """int32 [batch, n_tiles, NUM_STATS] over the real (unpadded) rows of each tile."""
    b, padded_len = positions.shape
    n = padded_len // block
    real = (jnp.arange(padded_len) < length).reshape(1, n, block)

    def min_max(x):
        x = x.astype(jnp.int32).reshape(b, n, block)
        return (jnp.min(jnp.where(real, x, INT_MAX), axis=-1),
                jnp.max(jnp.where(real, x, INT_MIN), axis=-1))

    pos_min, pos_max = min_max(positions)
    if segment_ids is None:
        seg_min = seg_max = jnp.zeros_like(pos_min)
    else:
        seg_min, seg_max = min_max(segment_ids)
    padded = jnp.broadcast_to(~jnp.all(real, axis=-1), pos_min.shape).astype(jnp.int32)
    return jnp.stack([pos_min, pos_max, seg_min, seg_max, padded], axis=-1)


def classify(q, k, *, causal: bool, window: int | None, segmented: bool):
    """(visible, full) for query tile stats `q` against key tile stats `k`.

    `q` and `k` are sequences of NUM_STATS entries: scalars read inside a kernel, or
    broadcastable arrays in the wrapper. Only the key side's padding matters: padded query
    rows are computed and thrown away, and their zero cotangent keeps them out of dK/dV.
    """
    q_pmin, q_pmax, q_smin, q_smax = q[0], q[1], q[2], q[3]
    k_pmin, k_pmax, k_smin, k_smax, k_padded = k[0], k[1], k[2], k[3], k[4]
    visible = k_padded >= 0  # all-true of the right shape/kind
    full = k_padded == 0
    if segmented:
        visible &= (q_smin <= k_smax) & (k_smin <= q_smax)
        full &= (q_smin == q_smax) & (k_smin == k_smax) & (q_smin == k_smin)
    if causal:  # visible iff k_pos <= q_pos
        visible &= k_pmin <= q_pmax
        full &= k_pmax <= q_pmin
    if window is not None:  # visible iff q_pos - k_pos < window
        visible &= q_pmin - k_pmax < window
        full &= q_pmax - k_pmin < window
    return visible, full & visible


def tile_ranges(q_stats, k_stats, *, causal, window, segmented, over: str) -> jax.Array:
    """int32 [batch, n, 2]: for each query tile (over="kv": the key tiles it may see) or each
    key tile (over="q": the query tiles that may see it), a range [lo, hi) covering all
    visible tiles; lo == hi when there are none. [n_q, n_kv] booleans per batch row: tiny
    next to the tensors (64 x 64 for 8K tokens in 128-tiles) and fused into the reductions."""
    qs = [q_stats[:, :, None, c] for c in range(NUM_STATS)]
    ks = [k_stats[:, None, :, c] for c in range(NUM_STATS)]
    visible, _ = classify(qs, ks, causal=causal, window=window, segmented=segmented)
    visible = jnp.broadcast_to(visible, (*q_stats.shape[:2], k_stats.shape[1]))
    if over == "q":
        visible = jnp.swapaxes(visible, 1, 2)
    n = visible.shape[-1]
    idx = jnp.arange(n, dtype=jnp.int32)
    lo = jnp.min(jnp.where(visible, idx, n), axis=-1)
    hi = jnp.max(jnp.where(visible, idx + 1, 0), axis=-1)
    lo = jnp.minimum(lo, hi)  # no visible tile: lo == hi == 0
    return jnp.stack([lo, hi], axis=-1).astype(jnp.int32)


def tile_mask(q_pos, k_pos, q_seg, k_seg, k_index, *, causal: bool, window: int | None,
              kv_len: int | None):
    """Boolean mask of one score tile from broadcastable per-row/per-column pieces.

    `k_index` is the key's index in the padded sequence; `kv_len` (None when the key
    sequence needed no padding) masks the padded keys.
    """
    mask = None

    def both(a, b):
        return b if a is None else a & b

    if q_seg is not None:
        mask = both(mask, q_seg == k_seg)
    if causal:
        mask = both(mask, k_pos <= q_pos)
    if window is not None:
        mask = both(mask, q_pos - k_pos < window)
    if kv_len is not None:
        mask = both(mask, k_index < kv_len)
    if mask is None:  # a partial tile always has a reason; keep shapes honest anyway
        mask = k_index >= 0
    return mask


class MaskInputs(NamedTuple):
    """Per-token mask inputs, padded to the tile multiple: int32 [batch, padded_len]."""

    q_pos: jax.Array
    kv_pos: jax.Array
    q_seg: jax.Array | None
    kv_seg: jax.Array | None

    def tiles(self, cfg, block_q: int, block_kv: int, *, over: str):
        """Flat int32 (q_stats, kv_stats, ranges) for one kernel's tiling (flat so that
        both backends read them as scalars: TPU SMEM is 1-D friendly, Triton indexes)."""
        q_stats = tile_stats(self.q_pos, self.q_seg, cfg.q_len, block_q)
        k_stats = tile_stats(self.kv_pos, self.kv_seg, cfg.kv_len, block_kv)
        ranges = tile_ranges(q_stats, k_stats, causal=cfg.causal, window=cfg.window,
                             segmented=cfg.segmented, over=over)
        return q_stats.reshape(-1), k_stats.reshape(-1), ranges.reshape(-1)
