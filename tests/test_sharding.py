"""Sharded params over 8 simulated CPU devices give the unsharded logits.

Runs in a subprocess: the CPU device count must be set before JAX starts, and the test
process has already started it with one device.
"""

import subprocess
import sys
import textwrap

import pytest

from solar_jax.errors import SolarError
from solar_jax.sharding import DEFAULT_RULES, logical_to_spec, make_mesh

SCRIPT = textwrap.dedent("""
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import solar_jax
    from solar_jax.sharding import make_mesh, shard_params
    config = solar_jax.ModelConfig.from_preset("tiny-llama")
    params = solar_jax.init_params(config, seed=0)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 16)))
    ref = solar_jax.forward(config, params, ids)
    for shape in ({"fsdp": 8}, {"data": 2, "fsdp": 2, "tensor": 2}, {"data": -1, "tensor": 2},
                  {"dcn": 2, "fsdp": -1}):
        mesh = make_mesh(shape)
        sharded = shard_params(params, solar_jax.logical_axes(config), mesh)
        q = sharded["layers"]["attn"]["q_proj"]["kernel"]
        assert q.sharding.spec[0] is None, q.sharding.spec  # the layer axis stays whole
        if mesh.shape["tensor"] > 1:
            assert q.sharding.spec[2] == "tensor", q.sharding.spec
        batch = jax.device_put(ids, NamedSharding(mesh, P(("dcn", "data", "fsdp"))))
        out = jax.jit(lambda p, i: solar_jax.forward(config, p, i))(sharded, batch)
        err = float(jnp.abs(out - ref).max())
        assert err < 1e-5, (shape, err)
        print(shape, "ok", err)
""")


def test_sharded_forward_matches_single_device():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("ok") == 4


def test_rules_skip_axes_that_do_not_divide():
    import jax
    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    assert logical_to_spec(("layers", "embed", "kv_heads", "head_dim")) == \
        jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    assert logical_to_spec(("embed",), DEFAULT_RULES, mesh, (7,)) == jax.sharding.PartitionSpec("fsdp")


@pytest.mark.parametrize("shape, message", [({"data": 3}, "needs 3 devices"),
                                            ({"pipe": 1}, "unknown mesh axis"),
                                            ({"data": -1, "fsdp": -1}, "at most one")])
def test_bad_mesh(shape, message):
    with pytest.raises(SolarError, match=message):
        make_mesh(shape)


def test_one_rules_object_with_overrides():
    """The config's overrides reach the batch and the Pallas wrapper's split (read from the
    rules in context when traced, not a module constant)."""
    from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

    from solar_jax.kernels.sharded import partition
    from solar_jax.sharding import Rules, current_rules, use_rules
    rules = Rules.create({"batch": ("data",), "heads": None})
    assert rules.mesh_axes("batch") == ("data",) and rules.mesh_axes("embed") == ("fsdp",)
    mesh = AbstractMesh((1, 2, 2, 2), ("dcn", "data", "fsdp", "tensor"),
                        axis_types=(AxisType.Auto,) * 4)
    assert partition(mesh, 8, 8, 4) == (("data", "fsdp"), "tensor")  # the defaults
    with use_rules(rules):
        assert current_rules() is rules
        assert partition(mesh, 8, 8, 4) == (("data",), None)
    assert current_rules() == Rules.create()
    with pytest.raises(SolarError, match="unknown mesh axis 'pipe'"):
        Rules.create({"batch": ("pipe",)})
    assert logical_to_spec(("batch", "seq"), rules) == P("data", None)


def test_dcn_axis_across_groups():
    import jax
    mesh = make_mesh({"data": -1}, devices=jax.devices()[:1])
    assert dict(mesh.shape) == {"dcn": 1, "data": 1, "fsdp": 1, "tensor": 1}
    with pytest.raises(SolarError, match="does not divide"):
        make_mesh({"dcn": 2}, devices=jax.devices()[:1])
