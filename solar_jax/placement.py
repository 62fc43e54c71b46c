"""A model's params on a device mesh, for inference (eval, generate, chat).

`load_model(path, mesh=...)` places every weight on the mesh by the logical-axis rules as
it is read (solar_jax.sharding): with the defaults, tensor parallelism splits attention
heads, kv heads, the MLP and the vocabulary over the "tensor" axis and FSDP splits the
embedding axis over "fsdp", so no device ever holds the whole model: SOLAR-10.7B in bf16 is
21.4 GB, 2.7 GB per chip at `tensor=8`. Batches are split over ("data", "fsdp"). XLA's
partitioner places everything else (activations, the KV cache, logits) from the params'
layout; the jitted programs are traced with the mesh in context (`Model.mesh`,
`mesh_scope`), which the Pallas attention kernels need to run per device.

The mesh is written like the train config's `mesh:` key, as `axis=size` pairs:
`tensor=8`, `fsdp=2,tensor=4`, `data=2,tensor=-1`. Unnamed axes are 1, one axis may be -1
(the devices left over), and the sizes must use every device.
"""

from __future__ import annotations

import contextlib

import jax
from jax.sharding import Mesh, NamedSharding

from solar_jax.errors import SolarError
from solar_jax.model.transformer import abstract_params, logical_axes
from solar_jax.sharding import MESH_AXES, make_mesh, mesh_context, param_shardings


def parse_mesh(spec: str) -> dict[str, int]:
    """"fsdp=2,tensor=4" -> {"fsdp": 2, "tensor": 4} (sizes checked by make_mesh)."""
    shape: dict[str, int] = {}
    for part in spec.replace(" ", "").split(","):
        name, sep, size = part.partition("=")
        if not sep or not name:
            raise SolarError(f"bad mesh {spec!r}: write axis=size pairs, e.g. tensor=8 or "
                             f"fsdp=2,tensor=4 (axes: {', '.join(MESH_AXES)})")
        if name in shape:
            raise SolarError(f"bad mesh {spec!r}: axis {name} given twice")
        try:
            shape[name] = int(size)
        except ValueError:
            raise SolarError(f"bad mesh {spec!r}: size of {name} must be an integer, "
                             f"got {size!r}") from None
    return shape


def as_mesh(mesh: Mesh | dict | str | None, devices=None) -> Mesh | None:
    """A Mesh from a Mesh, a shape dict ({"tensor": 8}) or a spec string ("tensor=8")."""
    if mesh is None or isinstance(mesh, Mesh):
        return mesh
    shape = parse_mesh(mesh) if isinstance(mesh, str) else dict(mesh)
    return make_mesh(shape, devices)


def leaf_shardings(config, mesh: Mesh, rules=None) -> dict:
    """NamedSharding per params leaf, from the shapes alone (nothing is allocated)."""
    return param_shardings(abstract_params(config), logical_axes(config), mesh, rules)


def place(array, sharding: NamedSharding) -> jax.Array:
    """A host array onto the mesh: each device receives only its own shard."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def mesh_scope(mesh: Mesh | None):
    """The mesh in context while a program is traced and run (a no-op without one)."""
    if mesh is None:
        return contextlib.nullcontext()
    return mesh_context(mesh)


def model_scope(model):
    """mesh_scope of the mesh a model was placed on (Model.mesh), if any."""
    return mesh_scope(getattr(model, "mesh", None))
