"""Topology-aware meshes and the one logical-axis rules object.

Parameters carry logical axis names (solar_jax.model.transformer.logical_axes), and so do
batches ("batch") and the activations the Pallas kernels split by hand ("batch", "heads").
One `Rules` object maps every name to mesh axes; the run config's `logical_axis_rules`
override it. Defaults: FSDP shards the embed axis, tensor parallelism shards heads, kv_heads
and mlp (and vocab), layers stay whole (scan slices them), batch goes over dcn, data and
fsdp. The rules in effect while a step is traced are the ones `use_rules` (entered by
`MeshJit`) put in context, so code deep in the model (kernels/sharded.py) reads the run's
rules, not a module constant.

The mesh has four axes, ("dcn", "data", "fsdp", "tensor"): `dcn` is data parallelism across
TPU slices (MaxText's dcn_data_parallelism: only gradients cross the slower data-centre
network), the other three live within a slice on its ICI. Meshes come from
jax.experimental.mesh_utils (`create_device_mesh` within a slice, `create_hybrid_device_mesh`
across slices), so devices adjacent on the mesh are neighbours on the torus.

Meshes are built with AxisType.Auto: jit in/out shardings fix the layout of params and
batches and XLA's propagation places the intermediates, the MaxText/GSPMD model. (jax 0.10
`jax.make_mesh` defaults to Explicit axes, which would make every op's sharding part of its
type; we choose Auto on purpose.)
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Mapping

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from solar_jax.errors import SolarError
from solar_jax.platform import target

MESH_AXES = ("dcn", "data", "fsdp", "tensor")
ICI_AXES = MESH_AXES[1:]

DEFAULT_RULES: dict[str, tuple[str, ...] | str | None] = {
    "batch": ("dcn", "data", "fsdp"),
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    "head_dim": None,
    "layers": None,
    "seq": None,
}


def _targets(rule) -> tuple[str, ...]:
    return (rule,) if isinstance(rule, str) else tuple(rule or ())


@dataclasses.dataclass(frozen=True)
class Rules:
    """Logical axis name -> mesh axes, for params, batches and activations alike.

    Frozen and hashable, so it can sit in a jit cache key or a static argument."""
    table: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def create(cls, overrides: Mapping[str, object] | None = None,
               base: Mapping[str, object] | None = None) -> "Rules":
        """DEFAULT_RULES (or `base`) with `overrides` (name -> mesh axis, list or null)."""
        merged = dict(DEFAULT_RULES if base is None else base)
        for name, axes in (overrides or {}).items():
            merged[name] = axes
        for name, axes in merged.items():
            bad = [a for a in _targets(axes) if a not in MESH_AXES]
            if bad:
                raise SolarError(f"logical_axis_rules: {name!r} names unknown mesh axis "
                                 f"{', '.join(map(repr, bad))}; use {', '.join(MESH_AXES)}")
        return cls(tuple((name, _targets(axes)) for name, axes in merged.items()))

    def as_dict(self) -> dict[str, tuple[str, ...]]:
        return dict(self.table)

    def mesh_axes(self, name: str) -> tuple[str, ...]:
        for key, axes in self.table:
            if key == name:
                return axes
        raise SolarError(f"no sharding rule for logical axis {name!r}")

    def spec(self, axes: tuple[str, ...], mesh: Mesh | None = None,
             shape: tuple[int, ...] | None = None) -> PartitionSpec:
        """PartitionSpec for a tensor with these logical axes. A mesh axis is used once
        per tensor, and dropped where it does not divide the dimension (3 KV heads over 2)."""
        used: set[str] = set()
        spec = []
        for i, name in enumerate(axes):
            chosen: list[str] = []
            for axis in self.mesh_axes(name):
                if axis in used:
                    continue
                if mesh is not None and shape is not None:
                    if axis not in mesh.shape:
                        continue
                    if shape[i] % math.prod(mesh.shape[a] for a in (*chosen, axis)):
                        continue
                chosen.append(axis)
            used.update(chosen)
            spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
        return PartitionSpec(*spec)

    def batch_sharding(self, mesh: Mesh) -> NamedSharding:
        """How the rows of a global batch are split (every batch array has rows first)."""
        return NamedSharding(mesh, PartitionSpec(self.mesh_axes("batch") or None))


_ACTIVE: contextvars.ContextVar[Rules | None] = contextvars.ContextVar("solar_rules", default=None)


def current_rules() -> Rules:
    """The rules put in context by `use_rules` (a run's, with its overrides), else defaults."""
    return _ACTIVE.get() or Rules.create()


@contextlib.contextmanager
def use_rules(rules: Rules | None):
    token = _ACTIVE.set(rules)
    try:
        yield rules
    finally:
        _ACTIVE.reset(token)


def as_rules(rules) -> Rules:
    """Rules from a Rules object, a plain {name: axes} dict, or None (those in context)."""
    if rules is None:
        return current_rules()
    if isinstance(rules, Rules):
        return rules
    return Rules.create(base=rules)


def _slices(devices) -> list[list]:
    groups: dict[int, list] = {}
    for d in devices:
        groups.setdefault(int(getattr(d, "slice_index", 0) or 0), []).append(d)
    return [groups[k] for k in sorted(groups)]


def resolve_mesh_shape(shape: Mapping[str, int] | None, num_devices: int,
                       num_slices: int = 1) -> dict[str, int]:
    """Axis sizes for `num_devices` in `num_slices` slices. `dcn` defaults to the number of
    slices; one of data/fsdp/tensor may be -1 (= the rest of a slice's devices)."""
    shape = dict(shape or {"data": -1})
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise SolarError(f"unknown mesh axis {', '.join(unknown)}; use {', '.join(MESH_AXES)}")
    dcn = int(shape.get("dcn", -1))
    dcn = num_slices if dcn == -1 else dcn
    if dcn <= 0:
        raise SolarError(f"mesh sizes must be positive or -1, got {shape}")
    if num_slices > 1 and dcn != num_slices:
        raise SolarError(f"mesh axis dcn is data parallelism across slices: it must be "
                         f"{num_slices} (the number of slices), got {dcn}")
    sizes = [int(shape.get(a, 1)) for a in ICI_AXES]
    if sizes.count(-1) > 1:
        raise SolarError("at most one mesh axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise SolarError(f"mesh sizes must be positive or -1, got {shape}")
    if num_devices % dcn:
        raise SolarError(f"mesh dcn={dcn} does not divide {num_devices} devices")
    per_group = num_devices // dcn
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if per_group % known:
            raise SolarError(f"mesh {shape} does not divide {num_devices} devices")
        sizes[sizes.index(-1)] = per_group // known
    full = dict(zip(MESH_AXES, [dcn, *sizes]))
    if math.prod(full.values()) != num_devices:
        raise SolarError(f"mesh {full} needs {math.prod(full.values())} devices, but "
                         f"{num_devices} are available")
    return full


def _device_grid(ici: tuple[int, ...], dcn: tuple[int, ...], devices, num_slices: int):
    full = tuple(a * b for a, b in zip(ici, dcn))
    for split in (False, True):  # keep physical axes whole where the shape allows it
        try:
            if num_slices > 1:
                return mesh_utils.create_hybrid_device_mesh(
                    ici, dcn, devices, allow_split_physical_axes=split)
            return mesh_utils.create_device_mesh(full, devices,
                                                 allow_split_physical_axes=split)
        except (ValueError, NotImplementedError, AssertionError, KeyError):
            continue
    # A shape mesh_utils cannot map onto the torus: slice-major order still keeps each
    # slice's devices together, so only the dcn axis crosses slices.
    ordered = [d for group in _slices(devices) for d in group]
    return np.asarray(ordered).reshape(full)


def make_mesh(shape: Mapping[str, int] | None = None, devices=None) -> Mesh:
    """A (dcn, data, fsdp, tensor) mesh over `devices` (default: all of jax.devices()).

    `shape` gives axis sizes; one of data/fsdp/tensor may be -1 (the rest), dcn defaults to
    the number of TPU slices the devices span (their `slice_index`). On one slice a dcn > 1
    simply splits the devices into groups (useful to test multi-slice code on CPUs)."""
    devices = list(devices if devices is not None else jax.devices())
    num_slices = len(_slices(devices))
    sizes = resolve_mesh_shape(shape, len(devices), num_slices)
    dcn = (sizes["dcn"], 1, 1, 1)
    ici = (1, *(sizes[a] for a in ICI_AXES))
    grid = _device_grid(ici, dcn, devices, num_slices)
    return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(axes: tuple[str, ...], rules=None, mesh: Mesh | None = None,
                    shape: tuple[int, ...] | None = None) -> PartitionSpec:
    """PartitionSpec for a tensor with these logical axes (see Rules.spec)."""
    return as_rules(rules).spec(axes, mesh, shape)


def param_shardings(params_or_abstract, logical_axes_tree, mesh: Mesh, rules=None):
    """NamedSharding for every leaf of the params tree."""
    rules = as_rules(rules)
    return jax.tree.map(
        lambda leaf, axes: NamedSharding(mesh, rules.spec(axes, mesh, tuple(leaf.shape))),
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


def target_platform() -> str:
    """The platform the code being traced will run on ("cpu", "gpu", "tpu"): that of the
    mesh in context, else the default device's (solar_jax.platform.target)."""
    return target().platform


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules: Rules | None = None):
    """The mesh and the rules in context together (what tracing a sharded step needs)."""
    with mesh_context(mesh), use_rules(rules or current_rules()):
        yield


class MeshJit:
    """A jitted function that is traced, lowered and called with its mesh and rules in
    context.

    The mesh in context is part of jit's trace-cache key, so every call enters it, not only
    the first; `lower` does too, for ahead-of-time compilation."""

    def __init__(self, jitted, mesh: Mesh, rules: Rules | None = None):
        self.jitted, self.mesh, self.rules = jitted, mesh, rules

    def __call__(self, *args, **kwargs):
        with sharding_context(self.mesh, self.rules):
            return self.jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with sharding_context(self.mesh, self.rules):
            return self.jitted.lower(*args, **kwargs)

    def __getattr__(self, name):  # the rest of jit's API (trace, eval_shape, ...)
        if name in ("jitted", "mesh", "rules"):  # not yet set (copy, unpickling)
            raise AttributeError(name)
        return getattr(self.jitted, name)
