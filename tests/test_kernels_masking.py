"""Tile classification for the Pallas attention kernels, plus the kernel-vs-reference checker
the per-backend kernel tests share (test_kernels_gpu.py, test_kernels_tpu.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from solar_jax.errors import SolarError
from solar_jax.kernels import BlockSizes, flash_attention
from solar_jax.kernels import masking
from solar_jax.model.attention import attention_mask, xla_attention

TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def packed_ids(b: int, length: int, docs: int, rng):
    """Segment ids 1..docs in contiguous runs of uneven length, positions restarting per run."""
    cuts = np.sort(rng.choice(np.arange(1, length), size=docs - 1, replace=False))
    seg = np.zeros(length, np.int32)
    pos = np.zeros(length, np.int32)
    for i, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, length])):
        seg[lo:hi] = i + 1
        pos[lo:hi] = np.arange(hi - lo)
    return jnp.broadcast_to(seg, (b, length)), jnp.broadcast_to(pos, (b, length))


def check_kernel(backend, *, heads, kv_heads, q_len, kv_len=None, head_dim=16, batch=1,
                 dtype=jnp.float32, causal=True, window=None, packed=False, kv_shift=0,
                 block_sizes=BlockSizes(16, 16, 16, 16, 16, 16), interpret=True, seed=0):
    """Output and dq/dk/dv of the kernels against `xla_attention` on the same inputs.

    packed: three documents per row (segment ids + restarting positions). kv_len/kv_shift:
    keys that are not the queries (KV-cache style) at positions kv_shift + 0..kv_len-1, so
    with causal masking the first kv_shift queries see no key at all."""
    rng = np.random.default_rng(seed)
    kv_len = kv_len or q_len

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32).astype(dtype)

    q = normal(batch, q_len, heads, head_dim)
    k = normal(batch, kv_len, kv_heads, head_dim)
    v = normal(batch, kv_len, kv_heads, head_dim)
    cotangent = normal(batch, q_len, heads, head_dim)
    q_pos = jnp.broadcast_to(jnp.arange(q_len, dtype=jnp.int32), (batch, q_len))
    q_seg = None
    if packed:
        q_seg, q_pos = packed_ids(batch, q_len, 3, rng)
    kv_pos, kv_seg = q_pos, q_seg  # the same objects: self-attention
    if kv_len != q_len or kv_shift:
        kv_pos = jnp.broadcast_to(jnp.arange(kv_len, dtype=jnp.int32) + kv_shift,
                                  (batch, kv_len))
        assert not packed
    mask_args = dict(q_segment_ids=q_seg, kv_segment_ids=kv_seg, q_positions=q_pos,
                     kv_positions=kv_pos, causal=causal, sliding_window=window)

    def kernel(q, k, v):
        return flash_attention(q, k, v, **mask_args, backend=backend, interpret=interpret,
                               block_sizes=block_sizes)

    def reference(q, k, v):
        return xla_attention(q, k, v, **mask_args, scale=head_dim ** -0.5)

    @jax.jit
    def both(q, k, v, cotangent):
        results = []
        for fn in (kernel, reference):
            out, vjp = jax.vjp(fn, q, k, v)
            results.append((out, *vjp(cotangent)))
        return results

    got, want = both(q, k, v, cotangent)
    tol = TOLERANCE[dtype]
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        assert a.dtype == b.dtype == dtype, name
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   atol=tol, rtol=tol, err_msg=name)


# ----------------------------------------------------------------- tile classification

def _tile_truth(q_pos, kv_pos, q_seg, kv_seg, bq, bk, causal, window):
    mask = np.asarray(attention_mask(q_seg, kv_seg, q_pos, kv_pos, causal=causal,
                                     sliding_window=window))
    b, sq, sk = mask.shape
    tiles = mask.reshape(b, sq // bq, bq, sk // bk, bk)
    return tiles.any(axis=(2, 4)), tiles.all(axis=(2, 4))


@pytest.mark.parametrize("causal, window, packed", [(True, None, False), (False, None, True),
                                                    (True, 5, True), (False, 3, False)])
def test_tile_classes_are_sound_and_ranges_cover_visible_tiles(causal, window, packed):
    rng = np.random.default_rng(1)
    b, s, bq, bk = 2, 64, 8, 16
    seg, pos = packed_ids(b, s, 4, rng) if packed else (None, None)
    if pos is None:  # arbitrary (here: shuffled) positions, not just 0..s-1
        pos = jnp.asarray(np.stack([rng.permutation(s) for _ in range(b)]), jnp.int32)
    any_visible, all_visible = _tile_truth(pos, pos, seg, seg, bq, bk, causal, window)
    q_stats = masking.tile_stats(pos, seg, s, bq)
    k_stats = masking.tile_stats(pos, seg, s, bk)
    visible, full = masking.classify([q_stats[:, :, None, c] for c in range(5)],
                                     [k_stats[:, None, :, c] for c in range(5)],
                                     causal=causal, window=window, segmented=packed)
    visible = np.broadcast_to(visible, any_visible.shape)
    assert not np.any(any_visible & ~visible), "a tile with visible pairs would be skipped"
    assert not np.any(np.asarray(full) & ~all_visible), "a partly masked tile left unmasked"
    ranges = np.asarray(masking.tile_ranges(q_stats, k_stats, causal=causal, window=window,
                                            segmented=packed, over="kv"))
    for bi in range(b):
        for i in range(s // bq):
            (cols,) = np.nonzero(any_visible[bi, i])
            lo, hi = ranges[bi, i]
            assert lo <= cols.min() and cols.max() < hi


def test_causal_and_packed_tiles_are_skipped():
    """The point of the kernels: causal skips the upper triangle, documents skip each other."""
    s, block = 64, 16
    pos = jnp.arange(s, dtype=jnp.int32)[None]
    stats = masking.tile_stats(pos, None, s, block)
    ranges = masking.tile_ranges(stats, stats, causal=True, window=None, segmented=False,
                                 over="kv")
    assert np.asarray(ranges[0]).tolist() == [[0, 1], [0, 2], [0, 3], [0, 4]]
    ranges = masking.tile_ranges(stats, stats, causal=True, window=16, segmented=False,
                                 over="q")
    assert np.asarray(ranges[0]).tolist() == [[0, 2], [1, 3], [2, 4], [3, 4]]
    seg = jnp.asarray([[1] * 32 + [2] * 32])
    pos = jnp.asarray([list(range(32)) * 2])
    stats = masking.tile_stats(pos, seg, s, block)
    ranges = masking.tile_ranges(stats, stats, causal=True, window=None, segmented=True,
                                 over="kv")
    assert np.asarray(ranges[0]).tolist() == [[0, 1], [0, 2], [2, 3], [2, 4]]


def test_padding_is_excluded_from_stats():
    pos = jnp.asarray([[5, 6, 7, 0, 0, 0, 0, 0]], jnp.int32)
    stats = np.asarray(masking.tile_stats(pos, None, 3, 4))
    assert stats[0].tolist() == [[5, 7, 0, 0, 1], [masking.INT_MAX, masking.INT_MIN, 0, 0, 1]]


def test_bad_arguments_are_named():
    q = jnp.ones((1, 64, 2, 16))
    with pytest.raises(SolarError, match="segment ids"):
        flash_attention(q, q, q, q_segment_ids=jnp.ones((1, 64), jnp.int32))
    with pytest.raises(SolarError, match="powers of two"):
        flash_attention(q, q, q, backend="gpu", block_sizes=BlockSizes(24, 16, 16, 16, 16, 16))
    with pytest.raises(SolarError, match="multiple of 128"):
        flash_attention(q, q, q, backend="tpu", interpret=False,
                        block_sizes=BlockSizes(64, 64, 64, 64, 64, 64))
    with pytest.raises(SolarError, match="backend"):
        flash_attention(q, q, q, backend="cuda")
