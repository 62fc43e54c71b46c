"""Logits parity with transformers (PyTorch, fp32) on small random models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import solar_jax
from conftest import make_hf_model, torch_logits

RTOL = 1e-4  # max |Δlogit| <= RTOL * max |logit|

CASES = {
    "llama-mha": dict(num_attention_heads=4, num_key_value_heads=4),
    "llama-gqa2": dict(num_attention_heads=4, num_key_value_heads=2),
    "llama-gqa3": dict(num_attention_heads=6, num_key_value_heads=2, hidden_size=48),
    "llama-gqa4": dict(num_attention_heads=8, num_key_value_heads=2),
    "llama-mqa": dict(num_attention_heads=4, num_key_value_heads=1),
    "llama-tied": dict(tie_word_embeddings=True),
    "llama-head-dim": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24),
    "llama3-rope": dict(rope_theta=500000.0, max_position_embeddings=256,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 16}),
    "linear-rope": dict(rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "mistral-window": dict(model_type="mistral", sliding_window=7, num_key_value_heads=1),
}


def _check(a, b):
    err = np.abs(np.asarray(a) - b).max()
    assert err <= RTOL * np.abs(b).max(), f"max |Δ| {err:.3g} vs max |logit| {np.abs(b).max():.3g}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case, tmp_path):
    kwargs = dict(CASES[case])
    torch_model = make_hf_model(tmp_path / "hf", seed=len(case), **kwargs)
    model = solar_jax.load_model(tmp_path / "hf")
    ids = np.random.default_rng(0).integers(0, 128, (2, 24))
    _check(model(ids), torch_logits(torch_model, ids))


def test_sharded_source(tmp_path):
    torch_model = make_hf_model(tmp_path / "hf", max_shard_size="40KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    ids = np.random.default_rng(1).integers(0, 128, (1, 16))
    _check(solar_jax.load_model(tmp_path / "hf")(ids), torch_logits(torch_model, ids))


def test_converted_checkpoint_matches_transformers(tmp_path):
    torch_model = make_hf_model(tmp_path / "hf", model_type="mistral", sliding_window=5)
    solar_jax.convert(tmp_path / "hf", tmp_path / "sj")
    ids = np.random.default_rng(2).integers(0, 128, (2, 20))
    _check(solar_jax.load_model(tmp_path / "sj")(ids), torch_logits(torch_model, ids))


def test_packed_documents_equal_separate_runs():
    config = solar_jax.ModelConfig.from_preset("tiny-mistral")  # window 8 < doc length
    params = solar_jax.init_params(config, seed=3)
    model = solar_jax.Model(config, params)
    rng = np.random.default_rng(0)
    doc_a, doc_b = rng.integers(0, 256, 11), rng.integers(0, 256, 13)
    packed = np.concatenate([doc_a, doc_b, [0, 0]])[None]
    segments = np.array([[1] * 11 + [2] * 13 + [0, 0]])
    positions = np.concatenate([np.arange(11), np.arange(13), [0, 0]])[None]
    out = np.asarray(model(packed, segment_ids=segments, positions=positions))[0]
    alone_a = np.asarray(model(doc_a[None]))[0]
    alone_b = np.asarray(model(doc_b[None]))[0]
    np.testing.assert_allclose(out[:11], alone_a, atol=1e-5)
    np.testing.assert_allclose(out[11:24], alone_b, atol=1e-5)


@pytest.mark.parametrize("policy", ["full", "save_dots", "save_qkv"])
def test_remat_gradients_equal_plain(policy):
    config = solar_jax.ModelConfig.from_preset("tiny-llama")
    params = solar_jax.init_params(config, seed=1)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 16)))

    def loss(p, cfg):
        logits = solar_jax.forward(cfg, p, ids)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]),
                                             ids[:, 1:, None], axis=-1))

    plain = jax.grad(loss)(params, config)
    remat = jax.grad(loss)(params, config.replace(remat=policy))
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bf16_compute_close_to_fp32():
    config = solar_jax.ModelConfig.from_preset("tiny-llama")
    params = solar_jax.init_params(config, seed=2)
    ids = np.random.default_rng(0).integers(0, 256, (1, 16))
    ref = np.asarray(solar_jax.Model(config, params)(ids))
    bf16 = solar_jax.Model(config.replace(compute_dtype="bf16"), params)(ids)
    assert bf16.dtype == jnp.float32
    assert np.abs(np.asarray(bf16) - ref).max() < 0.05 * np.abs(ref).max()
    stored = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    out = solar_jax.Model(config.replace(param_dtype="bf16", compute_dtype="bf16"), stored)(ids)
    assert np.abs(np.asarray(out) - ref).max() < 0.05 * np.abs(ref).max()
