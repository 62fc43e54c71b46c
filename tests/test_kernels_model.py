"""The Pallas attention kernels in context: the model with attention_impl="pallas", the
entry point, memory that grows with S (not S^2), and lowering for real GPUs and TPUs."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

import solar_jax
from solar_jax.kernels import BlockSizes, default_block_sizes, flash_attention
from solar_jax.kernels.blocks import TPU_DEFAULT
from solar_jax.model.attention import resolve_impl


def test_model_forward_and_backward_match_xla():
    config = solar_jax.ModelConfig.from_preset("tiny-llama", attention_impl="pallas")
    params = solar_jax.init_params(config)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (2, 40)))
    # Row 0 packs two documents, row 1 is one sequence.
    seg = jnp.asarray([[1] * 15 + [2] * 25, [1] * 40])
    pos = jnp.asarray([list(range(15)) + list(range(25)), list(range(40))])

    def loss(params, config):
        logits = solar_jax.forward(config, params, ids, seg, pos)
        return jnp.mean(logits ** 2), logits

    step = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (loss_k, logits_k), grads_k = step(params, config)
    (loss_x, logits_x), grads_x = step(params, config.replace(attention_impl="xla"))
    np.testing.assert_allclose(logits_k, logits_x, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(loss_k, loss_x, rtol=1e-6)
    for path, g_k in jax.tree_util.tree_leaves_with_path(grads_k):
        g_x = dict(jax.tree_util.tree_leaves_with_path(grads_x))[path]
        np.testing.assert_allclose(g_k, g_x, atol=1e-6, rtol=1e-4, err_msg=str(path))


def test_entry_point_runs_pallas_on_cpu_and_auto_stays_xla():
    assert "pallas" in solar_jax.available_attention_impls()
    if jax.default_backend() == "cpu":
        assert resolve_impl("auto") == "xla"
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((1, 20, 4, 16)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 20, 2, 16)), jnp.float32)
    seg = jnp.asarray([[1] * 8 + [2] * 12])
    pos = jnp.asarray([list(range(8)) + list(range(12))])
    out = solar_jax.attention(q, k, k, seg, pos, sliding_window=4, impl="pallas")
    ref = solar_jax.attention(q, k, k, seg, pos, sliding_window=4, impl="xla")
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_import_solar_jax_does_not_load_the_kernels():
    code = ("import sys, solar_jax; "
            "assert 'solar_jax.kernels' not in sys.modules, 'kernels imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _temp_bytes(fn, seq_len):
    q = jax.ShapeDtypeStruct((1, seq_len, 2, 32), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, seq_len, 1, 32), jnp.float32)
    grad = jax.jit(jax.grad(lambda q, k, v: fn(q, k, v).sum(), argnums=(0, 1, 2)))
    return grad.lower(q, kv, kv).compile().memory_analysis().temp_size_in_bytes


def test_working_set_grows_with_seq_len_not_its_square():
    """Forward+backward scratch memory at S and 4S: the kernels' (here the interpreted
    Triton kernels' compiled program) grows ~4x, the reference's [S, S] scores ~16x."""
    def kernel(q, k, v):
        return flash_attention(q, k, v, backend="gpu", interpret=True,
                               block_sizes=BlockSizes(64, 64, 64, 64, 64, 64))

    def reference(q, k, v):
        return solar_jax.attention(q, k, v, impl="xla")

    small, large = 256, 1024
    kernel_growth = _temp_bytes(kernel, large) / _temp_bytes(kernel, small)
    reference_growth = _temp_bytes(reference, large) / _temp_bytes(reference, small)
    assert kernel_growth < 5, kernel_growth  # linear: ~4
    assert reference_growth > 12, reference_growth  # quadratic: ~16
    assert _temp_bytes(kernel, large) * 10 < _temp_bytes(reference, large)


ABSTRACT_DEVICES = {"cuda": ("NVIDIA H100 80GB HBM3", "gpu"), "tpu": ("TPU v5 lite", "tpu")}


@pytest.mark.parametrize("backend, platform", [("gpu", "cuda"), ("tpu", "tpu")])
def test_kernels_lower_for_real_hardware(backend, platform):
    """Lower (not compile) forward+backward with production tiles for a GPU/TPU we do not
    have: catches Triton/Mosaic lowering errors (shapes, unsupported ops) on CPU. The
    backend compilers (ptxas, Mosaic's layout passes) still run only on the device."""
    if not hasattr(jax.sharding, "AbstractDevice"):
        pytest.skip("this jax cannot lower for an abstract device")
    kind, device_platform = ABSTRACT_DEVICES[platform]
    device = jax.sharding.AbstractDevice(device_kind=kind, num_cores=1, platform=device_platform)
    mesh = jax.sharding.AbstractMesh((1,), ("x",), (AxisType.Explicit,), abstract_device=device)
    blocks = default_block_sizes("gpu", interpret=False) if backend == "gpu" else TPU_DEFAULT
    for head_dim, packed, window in [(128, True, None), (64, False, 300)]:
        q = jax.ShapeDtypeStruct((1, 1000, 8, head_dim), jnp.bfloat16)
        kv = jax.ShapeDtypeStruct((1, 1000, 2, head_dim), jnp.bfloat16)
        ids = jax.ShapeDtypeStruct((1, 1000), jnp.int32)

        def loss(q, k, v, seg, pos):
            out = flash_attention(q, k, v, q_segment_ids=seg if packed else None,
                                  kv_segment_ids=seg if packed else None, q_positions=pos,
                                  kv_positions=pos, sliding_window=window, backend=backend,
                                  interpret=False, block_sizes=blocks)
            return out.astype(jnp.float32).sum()

        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        with jax.sharding.use_abstract_mesh(mesh):
            text = grad.trace(q, kv, kv, ids, ids).lower(lowering_platforms=(platform,)).as_text()
        assert text.count("solar_flash_") >= 3, "expected fwd, dq and dkv kernels"
