"""Per-device Pallas attention under a device mesh.

A `pallas_call` is opaque to XLA's SPMD partitioner: inside a sharded `jit` XLA gathers the
kernel's operands onto every device and runs the whole call replicated (correct, but every
device does the global batch's attention and holds its full activations). `per_device`
wraps the kernel in `shard_map`, so each device runs it on its own block: batch split over
the mesh axes of the "batch" rule (dcn, data, fsdp by default), heads over those of the
"heads" rule ("tensor"), as the model's activations already are. The rules are the run's
(solar_jax.sharding.current_rules(), put in context with the mesh by MeshJit), read when
the kernel is traced. The sequence is never split: a query needs all keys.

The mesh is the one in context while tracing (`jax.set_mesh(mesh)`, see
`solar_jax.sharding.mesh_context`); with none, or a one-device mesh, the kernel is called
directly.
"""

from __future__ import annotations

import math

import jax
from jax.sharding import AxisType, PartitionSpec

from solar_jax.sharding import current_rules


def context_mesh():
    """The abstract mesh set by `jax.set_mesh` (visible inside jit while tracing), or None
    when there is none or it has a single device."""
    get = getattr(jax.sharding, "get_abstract_mesh", None)
    mesh = get() if get is not None else None
    if mesh is None or mesh.empty or mesh.size == 1:
        return None
    return mesh


def partition(mesh, batch: int, heads: int, kv_heads: int, rules=None):
    """(batch mesh axes, head mesh axis or None) the kernel's operands are split over.

    Axes of size 1 are left out (nothing to split); a batch axis is dropped when the batch
    is not divisible by the product so far, the head axis when kv_heads (and so heads, a
    multiple of it) is not divisible: those dims then stay whole on every device. Manual
    axes (inside an enclosing shard_map) are already split and are not ours to use."""
    rules = rules or current_rules()
    usable = {name: size for name, size, kind in
              zip(mesh.axis_names, mesh.axis_sizes, mesh.axis_types)
              if size > 1 and kind != AxisType.Manual}
    batch_axes: list[str] = []
    for axis in rules.mesh_axes("batch"):
        if axis in usable and batch % math.prod(usable[a] for a in (*batch_axes, axis)) == 0:
            batch_axes.append(axis)
    head_axis = next((a for a in rules.mesh_axes("heads") if a in usable and a not in batch_axes
                      and kv_heads % usable[a] == 0 and heads % usable[a] == 0), None)
    return tuple(batch_axes), head_axis


def _shard_map(fn, mesh, in_specs, out_specs):
    # check_vma off: pallas_call refuses it unless every kernel output declares how it
    # varies over the manual axes. The cost: for an axis the specs leave out (e.g. "tensor"
    # when kv_heads do not divide), the backward all-reduces dq/dk/dv over it, since it
    # cannot know they are already equal there. Exact; only extra communication.
    if hasattr(jax, "shard_map"):
        return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                             check_vma=False)
    from jax.experimental.shard_map import shard_map  # older jax: no jax.shard_map yet
    return shard_map(fn, mesh, in_specs, out_specs, check_rep=False)


def per_device(kernel, q, k, v, rows: dict):
    """kernel(q, k, v, **rows) on each device's block of a mesh in context, else directly.

    q: [batch, q_len, heads, d]; k, v: [batch, kv_len, kv_heads, d]; rows: per-row arrays
    [batch, len] (segment ids, positions) or None. Returns the kernel's [batch, q_len,
    heads, d] output, laid out like q."""
    mesh = context_mesh()
    if mesh is None:
        return kernel(q, k, v, **rows)
    batch_axes, head_axis = partition(mesh, q.shape[0], q.shape[2], k.shape[2])
    if not batch_axes and head_axis is None:
        return kernel(q, k, v, **rows)
    batch_spec = batch_axes[0] if len(batch_axes) == 1 else (batch_axes or None)
    heads_spec = PartitionSpec(batch_spec, None, head_axis, None)
    # Passed once per distinct array, so keys that share the queries' positions and segment
    # ids still do inside: the kernel checks identity to know it is self-attention.
    distinct: list = []
    for x in rows.values():
        if x is not None and not any(x is y for y in distinct):
            distinct.append(x)
    slot = {name: next((i for i, y in enumerate(distinct) if x is y), None)
            for name, x in rows.items()}

    def local(q, k, v, distinct):
        return kernel(q, k, v, **{name: None if i is None else distinct[i]
                                  for name, i in slot.items()})

    row_specs = [PartitionSpec(batch_spec, None)] * len(distinct)
    return _shard_map(local, mesh, (heads_spec, heads_spec, heads_spec, row_specs),
                      heads_spec)(q, k, v, distinct)
