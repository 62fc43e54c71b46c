"""Tile sizes for the flash attention kernels, per backend and TPU generation.

Block sizes never change results (beyond fp reassociation), only speed and on-chip memory,
so they are plain data: pick a preset, or pass your own `BlockSizes` to `flash_attention`.
The defaults are starting points, not tuned numbers: rerun `benchmarks/attention.py` on the
target chip and override here.
"""

from __future__ import annotations

import dataclasses
import math

from solar_jax.errors import SolarError
from solar_jax.platform import target

# TPU vregs are (8 sublanes x 128 lanes) of 32-bit words. Key tiles sit on the lane axis of
# the forward/dQ score tiles and query tiles on the lane axis of the (transposed) dK/dV
# score tiles, so compiled TPU kernels need every block to be a multiple of 128.
TPU_LANES = 128
# Triton: every tensor dimension is a power of two, and tl.dot wants at least 16.
GPU_MIN_BLOCK = 16


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Query/key tile sizes for the forward, dK/dV and dQ kernels."""

    block_q: int = 128
    block_kv: int = 128
    block_q_dkv: int = 128
    block_kv_dkv: int = 128
    block_q_dq: int = 128
    block_kv_dq: int = 128
    # Triton only (ignored on TPU): warps per program and software pipelining depth.
    num_warps: int | None = None
    num_stages: int = 2

    @property
    def q_multiple(self) -> int:
        """Query length is padded to this, so every kernel's q tiles divide it."""
        return math.lcm(self.block_q, self.block_q_dkv, self.block_q_dq)

    @property
    def kv_multiple(self) -> int:
        return math.lcm(self.block_kv, self.block_kv_dkv, self.block_kv_dq)

    def fit(self, q_len: int, kv_len: int, *, q_align: int, kv_align: int,
            pow2: bool) -> "BlockSizes":
        """Shrink tiles for short sequences so a 40-token call does not pad to 512."""
        def shrink(block, length, align):
            target = max(align, length)
            target = 1 << (target - 1).bit_length() if pow2 else -(-target // align) * align
            return min(block, target)
        q_names = ("block_q", "block_q_dkv", "block_q_dq")
        kv_names = ("block_kv", "block_kv_dkv", "block_kv_dq")
        changes = {n: shrink(getattr(self, n), q_len, q_align) for n in q_names}
        changes |= {n: shrink(getattr(self, n), kv_len, kv_align) for n in kv_names}
        return dataclasses.replace(self, **changes)

    def check(self, backend: str, *, interpret: bool) -> None:
        sizes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name.startswith("block_")}
        for name, value in sizes.items():
            if value <= 0:
                raise SolarError(f"attention {name} must be positive, got {value}")
            if backend == "gpu" and (value & (value - 1) or value < GPU_MIN_BLOCK):
                raise SolarError(f"GPU attention {name}={value}: Triton tiles must be powers "
                                 f"of two >= {GPU_MIN_BLOCK}")
        if backend == "tpu" and not interpret:
            for name, value in sizes.items():
                if value % TPU_LANES:
                    raise SolarError(f"TPU attention {name}={value} must be a multiple of "
                                     f"{TPU_LANES}")


# Per TPU generation (solar_jax.platform.TPU_GENERATIONS), chosen from the compiler alone
# (benchmarks/kernel_blocks.py, benchmarks/RESULTS.md "Flash attention tiles"): at the SOLAR
# shape, 1024 x 1024 has the lowest estimate on v5e, v5p and v6e: XLA's roofline over the
# kernels' cost estimates (which favours small tiles: less causal-diagonal waste) plus the
# per-grid-step overhead of the static LLO profile (which favours large ones), and 26% less
# HBM traffic than 512 x 512. 2048 x 2048 overflows v5e's scoped VMEM. v4 is unmeasured.
TPU_PRESETS: dict[str, BlockSizes] = {
    "v4": BlockSizes(512, 512, 512, 512, 512, 512),
    "v5e": BlockSizes(1024, 1024, 1024, 1024, 1024, 1024),
    "v5p": BlockSizes(1024, 1024, 1024, 1024, 1024, 1024),
    "v6e": BlockSizes(1024, 1024, 1024, 1024, 1024, 1024),
}
TPU_DEFAULT = BlockSizes(512, 512, 512, 512, 512, 512)

# Triton (Ampere/Hopper): the forward tiles of the Triton fused-attention tutorial; the
# backward's dK/dV kernel holds a wide kv tile and streams narrow q tiles (and dQ the
# reverse), which keeps register pressure down while reusing the resident tile.
GPU_DEFAULT = BlockSizes(block_q=128, block_kv=64, block_q_dkv=32, block_kv_dkv=128,
                         block_q_dq=128, block_kv_dq=32, num_stages=2)
# Interpret mode on CPU: tiles only need to exercise tiling, not feed a matrix unit.
INTERPRET_DEFAULT = BlockSizes(32, 32, 32, 32, 32, 32)


def default_block_sizes(backend: str, *, interpret: bool) -> BlockSizes:
    """The preset for the target device (the mesh in context's, else the default one)."""
    if interpret:
        return INTERPRET_DEFAULT
    if backend == "gpu":
        return GPU_DEFAULT
    return TPU_PRESETS.get(target().tpu_generation, TPU_DEFAULT)
