"""The GPU (Triton) flash attention kernels, run by the Pallas interpreter on CPU, against
the XLA reference: outputs and dq/dk/dv, fp32 within 1e-5 and bf16 within 2e-2."""

import jax.numpy as jnp
import pytest

from solar_jax.kernels import BlockSizes
from test_kernels_masking import check_kernel

CASES = {
    # name: heads, kv_heads, q_len, extra
    "mha-causal-d64-aligned": dict(heads=2, kv_heads=2, q_len=48, head_dim=64),
    "gqa3-bidirectional-packed-ragged": dict(
        heads=6, kv_heads=2, q_len=40, causal=False, packed=True,
        # different tiles per kernel: q/kv lengths pad to the lcm (32)
        block_sizes=BlockSizes(16, 32, 32, 16, 16, 32)),
    "gqa4-causal-window-packed-ragged": dict(heads=8, kv_heads=2, q_len=45, window=6,
                                             packed=True, batch=2),
    "mqa8-causal-bf16-d128": dict(heads=8, kv_heads=1, q_len=40, head_dim=128,
                                  dtype=jnp.bfloat16),
    "gqa4-bidirectional-window-bf16-d64": dict(heads=4, kv_heads=1, q_len=33, head_dim=64,
                                               causal=False, window=5, dtype=jnp.bfloat16),
    # keys at positions 20..43: queries 0..19 see no key (reference: mean of V)
    "gqa2-kv-cache-empty-rows": dict(heads=4, kv_heads=2, q_len=40, kv_len=24, kv_shift=20),
    # one decoding step: query at position 0, keys at -20..3 (the last three in its future)
    "gqa2-decode-one-query": dict(heads=4, kv_heads=2, q_len=1, kv_len=24, kv_shift=-20),
}


@pytest.mark.parametrize("case", CASES)
def test_triton_kernels_match_reference(case):
    check_kernel("gpu", **CASES[case])
