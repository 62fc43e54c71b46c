"""The Pallas attention kernels under a device mesh: per-device blocks via shard_map, same
output and gradients as the XLA reference.

The checks run in one subprocess with 8 simulated CPU devices (this file run as a script):
the device count must be set before JAX starts, and the pytest worker has already started
it with one device and shares it with other test files. Shapes are tiny: the kernels run in
the Pallas interpreter.
"""

import json
import subprocess
import sys
import traceback

import numpy as np
import pytest

BATCH, SEQ, HEADS, KV_HEADS, HEAD_DIM = 4, 32, 4, 2, 16
MESH_2X2X2 = {"data": 2, "fsdp": 2, "tensor": 2}
TOL = 1e-5


# ----------------------------------------------------------------- child (8 devices)

def _inputs(heads, kv_heads):
    import jax.numpy as jnp
    rng = np.random.default_rng(0)

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32)

    q = normal(BATCH, SEQ, heads, HEAD_DIM)
    k, v = normal(BATCH, SEQ, kv_heads, HEAD_DIM), normal(BATCH, SEQ, kv_heads, HEAD_DIM)
    cut = [12, 20, 7, 32]  # every row packs two documents, except the last
    seg = np.array([[1] * c + [2] * (SEQ - c) for c in cut], np.int32)
    pos = np.array([list(range(c)) + list(range(SEQ - c)) for c in cut], np.int32)
    return q, k, v, jnp.asarray(seg), jnp.asarray(pos)


def _compare(mesh_shape, heads=HEADS, kv_heads=KV_HEADS, window=None):
    """pallas vs xla (output and dq/dk/dv) in a jit over sharded inputs, the mesh in
    context; returns the q shapes the kernel was traced with."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding

    from solar_jax.model.attention import attention
    from solar_jax.sharding import logical_to_spec, make_mesh, mesh_context

    q, k, v, seg, pos = _inputs(heads, kv_heads)
    args = (q, k, v, seg, pos)
    if mesh_shape is not None:
        devices = jax.devices()[:int(np.prod(list(mesh_shape.values())))]
        mesh = make_mesh(mesh_shape, devices=devices)
        # The model's layout: DEFAULT_RULES, mesh axes dropped where they do not divide.
        q_spec, kv_spec = (logical_to_spec(("batch", "seq", "heads", "head_dim"), mesh=mesh,
                                           shape=x.shape) for x in (q, k))
        row_spec = logical_to_spec(("batch", "seq"), mesh=mesh, shape=seg.shape)
        args = tuple(jax.device_put(x, NamedSharding(mesh, spec)) for x, spec in
                     ((q, q_spec), (k, kv_spec), (v, kv_spec), (seg, row_spec), (pos, row_spec)))

    def run(impl):
        def loss(q, k, v, seg, pos):
            out = attention(q, k, v, seg, pos, sliding_window=window, impl=impl)
            return jnp.sum(out * jnp.cos(out)), out  # a cotangent that is not all ones
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(*args)

    traced = _record_kernel_shapes()
    if mesh_shape is None:
        got = run("pallas")
    else:
        with mesh_context(mesh):
            got = run("pallas")
    (_, out_k), grads_k = got
    (_, out_x), grads_x = run("xla")
    for name, a, b in zip(("out", "dq", "dk", "dv"), (out_k, *grads_k), (out_x, *grads_x)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL, rtol=TOL,
                                   err_msg=name)
    return sorted({tuple(s) for s in traced})


_SHAPES: list = []


def _record_kernel_shapes():
    """Wrap the kernel the "pallas" implementation calls; returns the list it appends the
    traced q shapes to."""
    from solar_jax.kernels import flash
    if not getattr(flash.flash_attention, "recording", False):
        original = flash.flash_attention

        def recording(q, *args, **kwargs):
            _SHAPES.append(q.shape)
            return original(q, *args, **kwargs)

        recording.recording = True
        flash.flash_attention = recording
    _SHAPES.clear()
    return _SHAPES


def _train_step_shapes():
    """compile_train_step (what `solar-jax train` runs) puts the mesh in context: the
    kernels inside the model see per-device blocks, and the loss equals the xla model's."""
    import jax
    import jax.numpy as jnp

    import solar_jax
    from solar_jax.sharding import make_mesh
    from solar_jax.train import state as state_lib
    from solar_jax.train.config import TrainConfig
    from solar_jax.train.optimizer import make_optimizer, make_schedule
    from solar_jax.train.step import BATCH_KEYS, compile_train_step, make_train_step

    cfg = TrainConfig(batch_size=BATCH, steps=1, loss_chunk=16)
    mesh = make_mesh(MESH_2X2X2)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 256, (BATCH, SEQ + 1))
    host = {"input_ids": ids[:, :-1], "targets": ids[:, 1:],
            "loss_weights": np.ones((BATCH, SEQ), np.float32),
            "segment_ids": np.ones((BATCH, SEQ), np.int32),
            "positions": np.broadcast_to(np.arange(SEQ), (BATCH, SEQ)).astype(np.int32)}
    sharding = state_lib.batch_sharding(mesh)
    losses = {}
    traced = _record_kernel_shapes()
    for impl in ("pallas", "xla"):
        config = solar_jax.ModelConfig.from_preset("tiny-llama", attention_impl=impl,
                                                   num_layers=1)
        optimizer = make_optimizer(cfg)
        params = state_lib.create_params(config, None, mesh, state_lib.rules_for(cfg), 0)
        state = state_lib.create_state(params, optimizer, mesh)
        step = compile_train_step(
            make_train_step(config, optimizer, make_schedule(cfg), grad_accum=1, chunk=16,
                            z_loss=0.0), state_lib.state_shardings(state), sharding)
        batch = {k: jax.device_put(jnp.asarray(host[k]), sharding) for k in BATCH_KEYS}
        _, metrics = step(state, batch)
        losses[impl] = float(metrics["loss"])
    np.testing.assert_allclose(losses["pallas"], losses["xla"], rtol=1e-6)
    return sorted({tuple(s) for s in traced})


CHECKS = {
    "mesh_2x2x2": lambda: _compare(MESH_2X2X2),
    "mesh_tensor_1": lambda: _compare({"data": 2, "fsdp": 4, "tensor": 1}),
    "kv_heads_3_over_tensor_2": lambda: _compare(MESH_2X2X2, heads=6, kv_heads=3, window=8),
    "no_mesh": lambda: _compare(None),
    "train_step": _train_step_shapes,
}


def _child_main():
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    for name, check in CHECKS.items():
        try:
            record = {"name": name, "shapes": check()}
        except Exception:  # noqa: BLE001 -- reported per check; the others still run
            record = {"name": name, "error": traceback.format_exc()[-4000:]}
        print("RESULT " + json.dumps(record), flush=True)


# ----------------------------------------------------------------- pytest (parent)

@pytest.fixture(scope="module")
def results():
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True,
                          check=False, timeout=600)
    found = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            record = json.loads(line[len("RESULT "):])
            found[record["name"]] = record
    assert found, f"child failed (rc {proc.returncode}): {proc.stderr[-3000:]}"
    return found


def _shapes(results, name):
    record = results.get(name)
    assert record is not None, f"check {name} did not run"
    assert "error" not in record, record["error"]
    return [tuple(s) for s in record["shapes"]]


def test_2x2x2_mesh_matches_xla_on_per_device_blocks(results):
    # batch over data x fsdp (4 -> 1), heads over tensor (4 -> 2, kv 2 -> 1)
    assert _shapes(results, "mesh_2x2x2") == [(BATCH // 4, SEQ, HEADS // 2, HEAD_DIM)]


def test_tensor_1_mesh_splits_batch_only_where_it_divides(results):
    # data=2 divides the batch of 4, data x fsdp = 8 does not: fsdp is left out.
    assert _shapes(results, "mesh_tensor_1") == [(BATCH // 2, SEQ, HEADS, HEAD_DIM)]


def test_heads_not_divisible_by_tensor_stay_whole(results):
    assert _shapes(results, "kv_heads_3_over_tensor_2") == [(BATCH // 4, SEQ, 6, HEAD_DIM)]


def test_without_mesh_the_kernel_sees_the_full_batch(results):
    assert _shapes(results, "no_mesh") == [(BATCH, SEQ, HEADS, HEAD_DIM)]


def test_train_step_traces_with_the_mesh_in_context(results):
    config_heads, config_head_dim = 4, 16  # tiny-llama
    assert _shapes(results, "train_step") == [
        (BATCH // 4, SEQ, config_heads // 2, config_head_dim)]


if __name__ == "__main__":
    _child_main()
