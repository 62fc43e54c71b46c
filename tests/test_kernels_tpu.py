"""The TPU (Mosaic) flash attention kernels, run by the TPU interpreter on CPU (which
simulates VMEM/SMEM, DMAs and the scalar-prefetch grid), against the XLA reference.

The TPU interpreter costs ~40 ms per grid step, so these cases keep batch 1 and few tiles;
together with test_kernels_gpu.py they cover GQA ratios 1, 3, 4, 8, segment ids, sliding
windows, ragged lengths, empty rows, fp32 and bf16, head_dim 16/64/128."""

import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu

from solar_jax.kernels import BlockSizes
from test_kernels_masking import check_kernel

TILES = BlockSizes(16, 16, 16, 16, 16, 16)


def test_mosaic_kernels_gqa4_causal_window_packed_ragged():
    check_kernel("tpu", heads=4, kv_heads=1, q_len=40, window=9, packed=True,
                 block_sizes=TILES)


def test_mosaic_kernels_gqa3_bidirectional_bf16_d128():
    check_kernel("tpu", heads=3, kv_heads=1, q_len=24, head_dim=128, causal=False,
                 dtype=jnp.bfloat16, block_sizes=BlockSizes(16, 8, 8, 16, 16, 8))


def test_mosaic_kernels_under_force_tpu_interpret_mode_with_empty_rows():
    """interpret=False plus the interpreter context: how a TPU user debugs on CPU."""
    with pltpu.force_tpu_interpret_mode():
        check_kernel("tpu", heads=2, kv_heads=2, q_len=24, kv_len=20, kv_shift=10,
                     interpret=False, block_sizes=TILES)
