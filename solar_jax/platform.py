"""Which hardware the program being traced is for.

Most code asks `jax.default_backend()`, but that is the *host's* platform: when a program
is compiled ahead of time for TPUs or GPUs that are not attached (`solar-jax compile`,
`jax.experimental.topologies`), the host is a CPU while the program is for a TPU. The mesh
in context (`jax.set_mesh`, `solar_jax.sharding.mesh_context`) knows better: its abstract
mesh carries the kind of device it was built on. So the choices that depend on the
hardware (the attention implementation behind "auto", the Pallas backend and its tile
sizes) read `target()`, which prefers the mesh in context and falls back to the default
device.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

# The device_kind strings jax reports, per TPU generation (the same chip may report either
# spelling, depending on the runtime: libtpu says "TPU v5" for v5p and "TPU v6 lite" for
# v6e, Cloud TPU docs say v5p / v6e). Exact names: "TPU v5" is a prefix of "TPU v5 lite".
TPU_GENERATIONS = {
    "TPU v4": "v4",
    "TPU v4 lite": "v4i",
    "TPU v5 lite": "v5e",
    "TPU v5e": "v5e",
    "TPU v5": "v5p",
    "TPU v5p": "v5p",
    "TPU v6 lite": "v6e",
    "TPU v6e": "v6e",
    "TPU7x": "v7x",
}


class Target(NamedTuple):
    platform: str     # "cpu", "gpu" or "tpu" (jax's names: CUDA and ROCm devices are "gpu")
    device_kind: str  # e.g. "TPU v5 lite", "NVIDIA H100 80GB HBM3", "cpu"

    @property
    def tpu_generation(self) -> str | None:
        """"v4", "v5e", "v5p", "v6e", ... for a TPU, else None."""
        if self.platform != "tpu":
            return None
        return TPU_GENERATIONS.get(self.device_kind)


def _context_device():
    get = getattr(jax.sharding, "get_abstract_mesh", None)
    mesh = get() if get is not None else None
    if mesh is None or getattr(mesh, "empty", True):
        return None
    return getattr(mesh, "abstract_device", None)


def target() -> Target:
    """The platform and device kind of the mesh in context, else of the default device."""
    device = _context_device()
    if device is None:
        device = jax.devices()[0]
    platform = "gpu" if device.platform in ("cuda", "rocm") else device.platform
    return Target(platform, device.device_kind)
