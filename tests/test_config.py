import json

import pytest

from solar_jax.config import ModelConfig, list_presets
from solar_jax.errors import SolarError

HF4 = {"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
       "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
       "rope_theta": 500000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 128,
       "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}


def test_reads_transformers4_spelling():
    c = ModelConfig.from_hf(HF4)
    assert c.rope_theta == 500000.0 and c.rope_scaling["rope_type"] == "llama3"
    assert (c.num_heads, c.num_kv_heads, c.head_dim) == (4, 2, 8)


def test_reads_transformers5_spelling():
    hf5 = {k: v for k, v in HF4.items() if k not in ("rope_theta", "rope_scaling")}
    hf5["rope_parameters"] = {**HF4["rope_scaling"], "rope_theta": 500000.0}
    assert ModelConfig.from_hf(hf5) == ModelConfig.from_hf(HF4)


def test_mistral_fields_and_explicit_head_dim():
    c = ModelConfig.from_hf({**HF4, "model_type": "mistral", "sliding_window": 16,
                             "head_dim": 16, "rope_scaling": None, "tie_word_embeddings": True})
    assert c.sliding_window == 16 and c.head_dim == 16 and c.tie_word_embeddings


@pytest.mark.parametrize("model_type", ["llama", "mistral"])
def test_to_hf_loads_in_transformers(model_type):
    from transformers import AutoConfig
    c = ModelConfig.from_preset("tiny-mistral" if model_type == "mistral" else "tiny-llama")
    hf = AutoConfig.for_model(**c.to_hf())
    assert ModelConfig.from_hf(hf.to_dict()).replace(
        initializer_range=c.initializer_range) == c


def test_llama3_scaling_round_trips_through_transformers(tmp_path):
    from transformers import AutoConfig
    c = ModelConfig.from_hf(HF4)
    (tmp_path / "config.json").write_text(json.dumps(c.to_hf()))
    hf = AutoConfig.from_pretrained(tmp_path)
    assert ModelConfig.from_hf(hf.to_dict()).rope_scaling == c.rope_scaling


@pytest.mark.parametrize("change, message", [
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"model_type": "gpt2"}, "model_type"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope type"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 2.0}}, "needs"),
    ({"num_key_value_heads": 3}, "multiple"),
])
def test_unsupported_options_are_one_line_errors(change, message):
    with pytest.raises(SolarError, match=message) as e:
        ModelConfig.from_hf({**HF4, **change})
    assert "\n" not in str(e.value)


def test_presets():
    assert {"llama2-7b", "mistral-7b", "solar-10.7b", "smollm2-135m", "tiny-llama",
            "tiny-mistral"} <= set(list_presets())
    solar = ModelConfig.from_preset("solar-10.7b")
    assert (solar.num_layers, solar.hidden_size, solar.intermediate_size, solar.num_heads,
            solar.num_kv_heads, solar.vocab_size, solar.max_position_embeddings) == \
        (48, 4096, 14336, 32, 8, 32000, 4096)
    assert not solar.tie_word_embeddings
    assert abs(solar.num_params / 1e9 - 10.7) < 0.05
    assert abs(ModelConfig.from_preset("mistral-7b").num_params / 1e9 - 7.24) < 0.01
    assert abs(ModelConfig.from_preset("smollm2-135m").num_params / 1e6 - 134.5) < 0.5
    with pytest.raises(SolarError, match="unknown preset"):
        ModelConfig.from_preset("gpt-5")
