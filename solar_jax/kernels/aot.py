"""Compile the flash attention kernels for TPUs and GPUs that are not attached.

`jax.experimental.topologies` gives compile-only devices: for TPUs through libtpu (the
`jax[tpu]` wheel), for NVIDIA GPUs from a GpuTargetConfigProto (the CUDA plugin of
`jax[cuda12]` plus absl-py, with JAX_PLATFORMS=cpu so that no CUDA client is created).
`jax.jit(f).lower(<ShapeDtypeStructs on those devices>).compile()` then runs the real
XLA:TPU compiler and Mosaic, or XLA:GPU, Triton and ptxas for sm_90a, and fails where they
refuse the kernels. tests/test_kernels_aot.py and benchmarks/kernel_blocks.py use this.
libtpu takes a machine-wide lock file unless ALLOW_MULTIPLE_LIBTPU_LOAD=1, so two
processes compiling for TPU at once need that variable.

    JAX_PLATFORMS=cpu ALLOW_MULTIPLE_LIBTPU_LOAD=1 python -m solar_jax.kernels.aot TARGET CASES.json
        prints one JSON line per case: compiled or the compiler's error, compile seconds,
        per-chip memory and (TPU) the compiler's cost analysis.

The kernels are traced under `jax.set_mesh` with a one-device mesh of the target, so the
defaults (backend, tile sizes, "auto") are the ones the target gets (solar_jax.platform).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from solar_jax.errors import SolarError
from solar_jax.kernels import flash_attention
from solar_jax.kernels.blocks import BlockSizes
from solar_jax.model.attention import resolve_impl
from solar_jax.platform import target
from solar_jax.resources import resource_path

# The smallest slice of each generation: topology name, chip config, chips per host.
TPU_TARGETS = {
    "v4": ("v4:2x2x1", "megacore", (2, 2, 1)),
    "v5e": ("v5e:2x2", None, (2, 2, 1)),
    "v5p": ("v5p:2x2x1", "megacore", (2, 2, 1)),
    "v6e": ("v6e:2x2", None, (2, 2, 1)),
}
GPU_TARGETS = {"h100": "h100_sxm.txtpb", "h200": "h200.txtpb"}
FIX = "run `make test`, which installs the test extras (jax[tpu], the CUDA plugin, absl-py)"


def devices(target: str) -> list:
    """Compile-only devices of one host of `target` (a key of TPU_TARGETS or GPU_TARGETS)."""
    from jax.experimental import topologies  # on use: only ahead-of-time compiles need it

    if target in TPU_TARGETS:
        try:
            import libtpu  # noqa: F401  (the compiler itself)
        except ImportError as e:
            raise SolarError(f"compiling for TPU {target} needs libtpu: {FIX}") from e
        name, chip_config, host = TPU_TARGETS[target]
        kwargs = {"chip_config_name": chip_config} if chip_config else {}
        return list(topologies.get_topology_desc(
            platform="tpu", topology_name=name, chips_per_host_bounds=host, num_slices=1,
            **kwargs).devices)
    if target in GPU_TARGETS:
        try:
            import jax_plugins.xla_cuda12  # noqa: F401
        except ImportError as e:
            raise SolarError(f"compiling for GPU {target} needs the CUDA plugin: {FIX}") from e
        config = resource_path("gpu_targets", GPU_TARGETS[target]).read_text()
        return list(topologies.get_topology_desc(
            platform="cuda", target_config=config, topology="1x1x8").devices)
    raise SolarError(f"unknown kernel target {target!r}; use one of "
                     f"{', '.join([*TPU_TARGETS, *GPU_TARGETS])}")


@dataclasses.dataclass(frozen=True)
class Case:
    """One flash_attention program: batch x seq tokens, heads / kv_heads of head_dim."""

    name: str
    head_dim: int
    heads: int
    kv_heads: int
    seq: int
    batch: int = 1
    segments: bool = False
    window: int | None = None
    causal: bool = True
    grad: bool = True          # forward+backward (else the forward alone)
    dtype: str = "bfloat16"
    blocks: tuple[int, ...] | None = None  # BlockSizes fields; None: the target's default


def _program(case: Case):
    blocks = BlockSizes(*case.blocks) if case.blocks else None

    def forward(q, k, v, seg):
        seg = seg if case.segments else None
        return flash_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg,
                               causal=case.causal, sliding_window=case.window,
                               block_sizes=blocks, interpret=False)

    if not case.grad:
        return forward

    def forward_backward(q, k, v, seg):
        def loss(q, k, v):
            return jnp.sum(forward(q, k, v, seg).astype(jnp.float32) ** 2)
        return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)
    return forward_backward


KERNEL_CALL = {"tpu": "tpu_custom_call", "gpu": "__gpu$xla.gpu.triton"}


def compile_case(case: Case, target_devices) -> dict:
    """Lower and compile `case` for the first of `target_devices`; the compiler's verdict."""
    mesh = Mesh(np.asarray(target_devices[:1]), ("x",))
    sharding = NamedSharding(mesh, PartitionSpec())
    dtype = jnp.dtype(case.dtype)
    b, s = case.batch, case.seq
    args = (jax.ShapeDtypeStruct((b, s, case.heads, case.head_dim), dtype, sharding=sharding),
            jax.ShapeDtypeStruct((b, s, case.kv_heads, case.head_dim), dtype,
                                 sharding=sharding),
            jax.ShapeDtypeStruct((b, s, case.kv_heads, case.head_dim), dtype,
                                 sharding=sharding),
            jax.ShapeDtypeStruct((b, s), jnp.int32, sharding=sharding))
    out = {"case": dataclasses.asdict(case)}
    start = time.perf_counter()
    try:
        with jax.set_mesh(mesh):
            out["target"] = target()._asdict()
            out["auto"] = resolve_impl("auto")
            compiled = jax.jit(_program(case)).lower(*args).compile()
    except Exception as e:  # the compiler's refusal is the result
        out.update(ok=False, seconds=time.perf_counter() - start,
                   error=f"{type(e).__name__}: {e}"[:4000])
        return out
    out.update(ok=True, seconds=time.perf_counter() - start)
    text = compiled.as_text()
    platform = out["target"]["platform"]
    out["kernel_calls"] = len(re.findall(re.escape(f'custom_call_target="{KERNEL_CALL[platform]}"')
                                         if platform in KERNEL_CALL else "$^", text))
    memory = compiled.memory_analysis()
    out["memory"] = {k: getattr(memory, f"{k}_size_in_bytes")
                     for k in ("argument", "output", "temp", "generated_code")}
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, list):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    out["cost"] = {k: float(cost[k]) for k in ("flops", "bytes accessed", "transcendentals",
                                               "optimal_seconds") if k in cost}
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m solar_jax.kernels.aot TARGET CASES.json", file=sys.stderr)
        return 2
    try:
        target_devices = devices(argv[0])
    except SolarError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        cases = [Case(**{k: tuple(v) if k == "blocks" and v else v for k, v in c.items()})
                 for c in json.load(f)]
    for case in cases:
        print(json.dumps(compile_case(case, target_devices)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
