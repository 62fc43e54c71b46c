"""Pallas fused attention kernels (flash attention, forward and backward) for GPU and TPU.

Importing this package loads Pallas; `solar_jax` itself only imports it the first time
`attention(..., impl="pallas")` runs. See docs/attention.md for which implementation runs
where.

    flash_attention(q, k, v, *, q_segment_ids, kv_segment_ids, q_positions, kv_positions,
                    causal, sliding_window, scale, backend="gpu"|"tpu", block_sizes,
                    interpret)
    pallas_attention(...)   the `attention(..., impl="pallas")` implementation; per device
                            under a mesh set with `jax.set_mesh` (kernels/sharded.py)
"""

import functools

from solar_jax.kernels import flash, sharded
from solar_jax.kernels.blocks import BlockSizes, default_block_sizes
from solar_jax.kernels.flash import flash_attention, resolve_backend
from solar_jax.platform import target


def pallas_attention(q, k, v, *, q_segment_ids, kv_segment_ids, q_positions, kv_positions,
                     causal, sliding_window, scale):
    """The registered "pallas" implementation: this platform's kernels (interpreted on
    CPU) with default tiles, run on each device's block when a mesh is in context."""
    # The target's kernels, not the host's: compiled ahead for a TPU from a CPU host
    # (solar_jax.aot), the mesh in context says "tpu" where jax.default_backend() says "cpu".
    platform = target().platform
    backend = "tpu" if platform == "tpu" else "gpu"
    # Looked up at call time (not the name imported above), so a test can wrap it.
    kernel = functools.partial(flash.flash_attention, causal=causal,
                               sliding_window=sliding_window, scale=scale, backend=backend,
                               interpret=platform != backend)
    rows = {"q_segment_ids": q_segment_ids, "kv_segment_ids": kv_segment_ids,
            "q_positions": q_positions, "kv_positions": kv_positions}
    return sharded.per_device(kernel, q, k, v, rows)


__all__ = ["BlockSizes", "default_block_sizes", "flash_attention", "pallas_attention",
           "resolve_backend"]
