"""Meshes and the logical-axis rule table.

Parameters carry logical axis names (solar_jax.model.transformer.logical_axes); a rule
table maps each name to mesh axes. Defaults: FSDP shards the embed axis, tensor
parallelism shards heads, kv_heads and mlp (and vocab), layers stay whole (scan slices
them), batch goes over data and fsdp.

Meshes are built with AxisType.Auto: jit in/out shardings fix the layout of params and
batches and XLA's propagation places the intermediates, the MaxText/GSPMD model. (jax 0.10
`jax.make_mesh` defaults to Explicit axes, which would make every op's sharding part of its
type; we choose Auto on purpose.)
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from solar_jax.errors import SolarError

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES: dict[str, tuple[str, ...] | str | None] = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    "head_dim": None,
    "layers": None,
    "seq": None,
}


def make_mesh(shape: dict[str, int] | None = None, devices=None) -> Mesh:
    """A mesh over (data, fsdp, tensor); one axis may be -1 (= the remaining devices)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = dict(shape or {"data": -1, "fsdp": 1, "tensor": 1})
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise SolarError(f"unknown mesh axis {', '.join(unknown)}; use {', '.join(MESH_AXES)}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise SolarError("at most one mesh axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise SolarError(f"mesh sizes must be positive or -1, got {shape}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise SolarError(f"mesh {shape} does not divide {len(devices)} devices")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise SolarError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                         f"but {len(devices)} are available")
    grid = np.asarray(devices).reshape(sizes)
    return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(axes: tuple[str, ...], rules=None, mesh: Mesh | None = None,
                    shape: tuple[int, ...] | None = None) -> PartitionSpec:
    """PartitionSpec for a tensor with these logical axes. A mesh axis is used once per
    tensor, and dropped where it does not divide the dimension (e.g. 3 KV heads over 2)."""
    rules = DEFAULT_RULES if rules is None else rules
    used: set[str] = set()
    spec = []
    for i, name in enumerate(axes):
        if name not in rules:
            raise SolarError(f"no sharding rule for logical axis {name!r}")
        target = rules[name]
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        chosen = []
        for axis in targets:
            if axis in used:
                continue
            if mesh is not None and shape is not None:
                if shape[i] % math.prod(mesh.shape[a] for a in (*chosen, axis)):
                    continue
            chosen.append(axis)
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


def param_shardings(params_or_abstract, logical_axes_tree, mesh: Mesh, rules=None):
    """NamedSharding for every leaf of the params tree."""
    return jax.tree.map(
        lambda leaf, axes: NamedSharding(mesh, logical_to_spec(axes, rules, mesh, tuple(leaf.shape))),
        params_or_abstract, logical_axes_tree)


def shard_params(params, logical_axes_tree, mesh: Mesh, rules=None):
    """Place params on the mesh according to the rules."""
    shardings = param_shardings(params, logical_axes_tree, mesh, rules)
    return jax.tree.map(jax.device_put, params, shardings)


def mesh_context(mesh: Mesh):
    """Context manager that makes `mesh` the one in context, also while `jit` traces.

    Needed around the tracing of sharded steps: code that must partition by hand reads the
    mesh from there (the Pallas attention kernels wrap themselves in shard_map with it);
    XLA's automatic partitioning is unaffected (the axes are Auto)."""
    setter = getattr(jax, "set_mesh", None) or getattr(jax.sharding, "use_mesh", None)
    if setter is None:
        raise SolarError(f"jax {jax.__version__} has neither jax.set_mesh nor "
                         "jax.sharding.use_mesh")
    return setter(mesh)


class MeshJit:
    """A jitted function that is traced, lowered and called with its mesh in context.

    The mesh in context is part of jit's trace-cache key, so every call enters it, not only
    the first; `lower` does too, for ahead-of-time compilation."""

    def __init__(self, jitted, mesh: Mesh):
        self.jitted, self.mesh = jitted, mesh

    def __call__(self, *args, **kwargs):
        with mesh_context(self.mesh):
            return self.jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with mesh_context(self.mesh):
            return self.jitted.lower(*args, **kwargs)

    def __getattr__(self, name):  # the rest of jit's API (trace, eval_shape, ...)
        if name in ("jitted", "mesh"):  # not yet set (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.jitted, name)
