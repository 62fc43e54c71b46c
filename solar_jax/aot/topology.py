"""Named TPU and GPU topologies, and their compile-only devices (no accelerator needed).

Names follow Cloud TPU accelerator types: `v4-N`, `v5p-N` (N counts TensorCores, 2 per
chip: v5p-128 is 64 chips), `v5e-N` / `v5litepod-N` and `v6e-N` (N counts chips); GPUs are
`h100-N` and `h200-N`, 8 per host. Every per-generation fact lives in GENERATIONS.

TPU devices come from libtpu (`pip install 'solar-jax[tpu]'`), GPU devices from the CUDA
plugin with a GpuTargetConfigProto shipped in solar_jax/resources/gpu_targets
(`solar-jax[cuda]`); `make test` installs the compile-only subset of both.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

from solar_jax.errors import SolarError
from solar_jax.resources import resource_path
from solar_jax.startup_platform import _tpu_chips_present

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Generation:
    name: str
    platform: str                 # "tpu" or "cuda"
    chips_per_host: int
    cores_per_chip: int           # TensorCores (TPU); a megacore chip is one JAX device
    hbm_bytes: int                # per chip
    peak_bf16_flops: float        # dense, per chip (vendor datasheets)
    name_counts: str              # what N in "<gen>-N" counts: "cores" or "chips"
    torus_dims: int = 3           # TPU: 3-D (v4, v5p) or 2-D (v5e, v6e) torus
    chip_config: str = "default"  # libtpu chip config ("megacore": 2 cores as 1 device)
    target_config: str | None = None  # GPU: the GpuTargetConfigProto file
    label: str = ""


# v5p's HBM is the compiler's own "available HBM" (95.74G); the others are the datasheets'.
GENERATIONS: dict[str, Generation] = {g.name: g for g in (
    Generation("v4", "tpu", 4, 2, 32 * GiB, 275e12, "cores", 3, "megacore", label="TPU v4"),
    Generation("v5e", "tpu", 4, 1, 16 * GiB, 197e12, "chips", 2, label="TPU v5e"),
    Generation("v5p", "tpu", 4, 2, int(95.74 * GiB), 459e12, "cores", 3, "megacore",
               label="TPU v5p"),
    Generation("v6e", "tpu", 4, 1, 32 * GiB, 918e12, "chips", 2, label="TPU v6e"),
    Generation("h100", "cuda", 8, 1, 84942979072, 989e12, "chips",
               target_config="h100_sxm.txtpb", label="H100 SXM 80GB"),
    Generation("h200", "cuda", 8, 1, 151397597184, 989e12, "chips",
               target_config="h200.txtpb", label="H200 141GB"),
)}
ALIASES = {"v5litepod": "v5e"}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str               # as given, e.g. "v5p-128"
    generation: Generation
    chips: int              # per slice
    num_slices: int
    shape: tuple[int, ...]  # chips per torus axis (TPU); (hosts, gpus per host) for GPUs

    @property
    def total_chips(self) -> int:
        return self.chips * self.num_slices

    @property
    def hbm_bytes(self) -> int:
        return self.generation.hbm_bytes

    def describe(self) -> dict:
        g = self.generation
        return {"name": self.name, "generation": g.name, "label": g.label,
                "platform": g.platform, "chips_per_slice": self.chips,
                "num_slices": self.num_slices, "total_chips": self.total_chips,
                "shape": "x".join(map(str, self.shape)), "hbm_bytes_per_chip": g.hbm_bytes,
                "peak_bf16_flops_per_chip": g.peak_bf16_flops,
                "cores_per_chip": g.cores_per_chip, "chips_per_host": g.chips_per_host}


def topology_names() -> list[str]:
    return [f"{g}-N" for g in GENERATIONS] + [f"{a}-N" for a in ALIASES]


def _torus(chips: int, dims: int) -> tuple[int, ...]:
    """Cloud TPU's slice shapes: 4 chips are 2x2(x1), and each doubling doubles the smallest
    axis (the last of equals): 8 = 2x2x2, 64 = 4x4x4, 128 = 4x4x8; 2-D 8 = 2x4, 256 = 16x16."""
    if chips == 1:
        return (1,) * dims
    if chips == 2:
        return (1, 2, 1)[:dims] if dims == 3 else (1, 2)
    shape = [2, 2] + [1] * (dims - 2)
    while math.prod(shape) < chips:
        smallest = min(shape)
        i = max(j for j, s in enumerate(shape) if s == smallest)
        shape[i] *= 2
    return tuple(shape)


def parse_topology(name: str, num_slices: int = 1) -> Topology:
    """`v5p-128`, `v5e-256`, `h100-8`, ... -> Topology; a bad name is a SolarError."""
    m = re.fullmatch(r"([a-z0-9]+)-(\d+)", name.strip().lower())
    gen_name = ALIASES.get(m.group(1), m.group(1)) if m else None
    if not m or gen_name not in GENERATIONS:
        raise SolarError(f"unknown topology {name!r}; use one of {', '.join(topology_names())} "
                         f"(Cloud TPU accelerator type names, or 8-GPU hosts)")
    g, n = GENERATIONS[gen_name], int(m.group(2))
    if num_slices < 1:
        raise SolarError(f"--num-slices must be at least 1, got {num_slices}")
    if g.name_counts == "cores":
        if n % g.cores_per_chip:
            raise SolarError(f"topology {name}: {g.name}-N counts TensorCores ({g.cores_per_chip} "
                             f"per chip), so N must be a multiple of {g.cores_per_chip}")
        chips = n // g.cores_per_chip
    else:
        chips = n
    if g.platform == "cuda":
        if num_slices != 1:
            raise SolarError(f"topology {name}: --num-slices is for TPU slices; a GPU cluster "
                             "is one topology (h100-16 = 2 hosts of 8)")
        if chips < 1 or (chips > g.chips_per_host and chips % g.chips_per_host):
            raise SolarError(f"topology {name}: GPUs come {g.chips_per_host} per host; use 1-"
                             f"{g.chips_per_host} or a multiple of {g.chips_per_host}")
        hosts = max(1, chips // g.chips_per_host)
        return Topology(name, g, chips, 1, (hosts, chips // hosts))
    if chips < 1 or chips & (chips - 1) or (g.torus_dims == 3 and chips < 4):
        smallest = 4 * g.cores_per_chip if g.name_counts == "cores" else 1
        raise SolarError(f"topology {name}: slices of {g.name} are powers of two chips "
                         f"(the smallest is {g.name}-{smallest})")
    return Topology(name, g, chips, num_slices, _torus(chips, g.torus_dims))


def missing_packages_message(platform: str) -> str:
    what = "libtpu (solar-jax[tpu])" if platform == "tpu" else \
        "the CUDA plugin (solar-jax[cuda]: jax-cuda12-plugin, jax-cuda12-pjrt, nvidia-cuda-nvcc-cu12)"
    return (f"compiling for {platform.upper()} needs {what}: run `make test` (which installs the "
            f"test extras) or `pip install -e '.[test]'`")


def have_packages(platform: str) -> bool:
    if platform == "tpu":
        return importlib.util.find_spec("libtpu") is not None
    try:
        return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    except ModuleNotFoundError:
        return False


def _quiet_deviceless_libtpu(topology: Topology) -> None:
    """libtpu, started on a machine without TPU chips, warns that it cannot find the
    accelerator type and worker hostnames (Cloud TPU metadata it must not query here), and
    locks /tmp/libtpu_lockfile so a second compiling process (or, on a TPU VM, the training
    process holding the chips) would make it fail. Give it what it asks for; none of it
    affects a compile-only client, which never opens a chip. On a TPU VM the real
    accelerator type and hosts are left to libtpu."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if _tpu_chips_present():
        return
    g = topology.generation
    n = topology.chips * (g.cores_per_chip if g.name_counts == "cores" else 1)
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{g.name}-{n}")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")


def compile_devices(topology: Topology) -> list:
    """The topology's compile-only devices (slice-major; TPU devices carry slice_index)."""
    from jax.experimental import topologies  # on use: only ahead-of-time compiles need it
    g = topology.generation
    if not have_packages(g.platform):
        raise SolarError(missing_packages_message(g.platform))
    try:
        if g.platform == "tpu":
            _quiet_deviceless_libtpu(topology)
            shape = topology.shape + (1,) * (3 - len(topology.shape))
            host = tuple(min(a, b) for a, b in zip((2, 2, 1), shape))
            desc = topologies.get_topology_desc(
                platform="tpu", topology_name=f"{g.name}:{'x'.join(map(str, topology.shape))}",
                chip_config_name=g.chip_config, chips_per_host_bounds=host,
                num_slices=topology.num_slices)
        else:
            text = resource_path("gpu_targets", g.target_config).read_text()
            hosts, per_host = topology.shape
            desc = topologies.get_topology_desc(platform="cuda", target_config=text,
                                                topology=f"1x{hosts}x{per_host}")
    except SolarError:
        raise
    except Exception as e:  # libtpu / the plugin refusing: say which topology
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SolarError(f"cannot create compile-only devices for {topology.name}: {first}")
    devices = list(desc.devices)
    if len(devices) != topology.total_chips:
        raise SolarError(f"topology {topology.name}: expected {topology.total_chips} devices, "
                         f"libtpu gave {len(devices)}")
    return devices
