"""The architecture records (solar_jax/arch/): every family's parameter table agrees with the
model it builds, its config mapping round-trips through transformers, and the readers of
the table (decay mask, logical axes, recipe compatibility) follow it."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import solar_jax
from solar_jax import arch
from solar_jax.config import ModelConfig
from solar_jax.errors import SolarError
from solar_jax.model.transformer import abstract_params, logical_axes
from solar_jax.train.optimizer import decay_mask

FAMILIES = arch.names()
SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
             num_kv_heads=2)


def _config(family: str, **overrides) -> ModelConfig:
    return ModelConfig(model_type=family, **{**SMALL, **overrides})


def _flat(tree) -> dict:
    return {tuple(getattr(k, "key", k) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(
                tree, is_leaf=lambda x: isinstance(x, tuple))[0]}


def test_registry_holds_the_families():
    assert {"llama", "mistral", "qwen2"} <= set(FAMILIES)
    assert arch.for_hf("qwen2").name == "qwen2"
    assert arch.for_gguf("qwen2", "x").gguf_rotary == "half"
    assert arch.for_gguf("llama", "x").gguf_rotary == "interleaved"
    with pytest.raises(SolarError, match="supported: .*qwen2"):
        arch.for_hf("gpt_neox")


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_table_is_the_model(family, tied):
    """The model's leaves, their shapes, and the table's rows are one and the same set; the
    logical axes come from the table and have one name per dimension."""
    config = _config(family, tie_word_embeddings=tied, head_dim=24)
    leaves = _flat(abstract_params(config))
    rows = {r.path: r for r in config.arch.params_for(config)}
    assert set(leaves) == set(rows)
    for path, leaf in leaves.items():
        row = rows[path]
        want = (config.num_layers, *row.shape(config)) if row.stacked else row.shape(config)
        assert tuple(leaf.shape) == want, path
    axes = _flat(logical_axes(config))
    assert {p: len(a) for p, a in axes.items()} == {p: len(leaf.shape) for p, leaf in leaves.items()}
    assert config.num_params == sum(int(np.prod(x.shape)) for x in leaves.values())
    # every name is unique: one tensor per row, both in HF and GGUF files
    for attr in ("hf_name", "gguf_name"):
        names = [getattr(r, attr) for r in rows.values()]
        assert len(set(names)) == len(names)


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_transforms_invert(family):
    config = _config(family)
    rng = np.random.default_rng(0)
    for row in config.arch.params_for(config):
        ours = rng.standard_normal(row.shape(config)).astype(np.float32)
        hf = row.to_hf(ours)
        assert hf.shape == row.hf_shape(ours.shape), row.name
        np.testing.assert_array_equal(row.from_hf(hf, ours.shape), ours)


@pytest.mark.parametrize("family", FAMILIES)
def test_decay_mask_reads_the_table(family):
    config = _config(family)
    params = abstract_params(config)
    mask = _flat(decay_mask(params))
    for row in config.arch.params_for(config):
        assert mask[row.path] == (row.role == "weight"), row.name
    assert mask[("layers", "attn_norm", "scale")] is False
    assert mask[("layers", "attn", "q_proj", "kernel")] is True
    if config.arch.qkv_bias:
        assert mask[("layers", "attn", "q_proj", "bias")] is False


@pytest.mark.parametrize("family", FAMILIES)
def test_config_round_trips_through_transformers(family, tmp_path):
    from transformers import AutoConfig

    c = _config(family, head_dim=24, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    hf = c.to_hf()
    assert hf["architectures"] == [c.arch.hf_class]
    loaded = AutoConfig.for_model(**hf)
    assert type(loaded).__name__ == c.arch.hf_class.replace("ForCausalLM", "Config")
    assert ModelConfig.from_hf(loaded.to_dict()) == c
    if "layer_types" in hf:  # transformers 5 checks the list against the layer count
        assert loaded.layer_types == ["full_attention"] * c.num_layers


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.startswith("qwen")])
def test_qwen_windows(family):
    """Qwen spells a window as use_sliding_window + max_window_layers (+ layer_types): one
    window on every layer is read and written back per layer; mixed stacks are refused."""
    base = _config(family).to_hf()
    sliding = {**base, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 0}
    sliding.pop("layer_types")
    c = ModelConfig.from_hf(sliding)
    assert c.sliding_window == 8
    out = c.replace(num_layers=5).to_hf()
    assert out["layer_types"] == ["sliding_attention"] * 5 and out["use_sliding_window"]
    assert ModelConfig.from_hf(out) == c.replace(num_layers=5)
    off = {**base, "use_sliding_window": False, "sliding_window": 8}
    assert ModelConfig.from_hf(off).sliding_window is None
    mixed = {**sliding, "max_window_layers": 1}
    with pytest.raises(SolarError, match="mixes full and sliding") as e:
        ModelConfig.from_hf(mixed)
    assert "\n" not in str(e.value)
    with pytest.raises(SolarError, match="layer_types"):
        ModelConfig.from_hf({**base, "layer_types": ["full_attention"]})


def test_merge_refuses_another_family(tmp_path, capsys):
    """Same shapes, different families: the recipe check reads the table's interchange
    fields and names model_type, before any tensor is read."""
    a = solar_jax.Model(_config("llama"), solar_jax.init_params(_config("llama")))
    b_config = _config("mistral")
    b = solar_jax.Model(b_config, solar_jax.init_params(b_config, seed=1))
    solar_jax.save_model(a, tmp_path / "a")
    solar_jax.save_model(b, tmp_path / "b")
    from solar_jax.cli import main
    assert main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                 str(tmp_path / "m"), "--method", "linear"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model_type is mistral" in err, err
    assert not (tmp_path / "m").exists()


def test_window_needs_a_family_that_has_one():
    with pytest.raises(SolarError, match="llama has no sliding window") as e:
        _config("llama", sliding_window=4)
    assert "\n" not in str(e.value)
    for family in FAMILIES:
        if arch.get(family).sliding_window:
            assert ModelConfig.from_hf(_config(family, sliding_window=4).to_hf()).sliding_window == 4
