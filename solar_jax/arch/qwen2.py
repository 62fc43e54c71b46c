"""Qwen2 and Qwen2.5 (same architecture): Llama's decoder with biases on the q, k and v
projections (not on o), a Qwen-style sliding-window spelling, and llama.cpp's `qwen2`
graph, which rotates halves as HF does (no Q/K permutation in GGUF)."""

from solar_jax.arch.base import (Architecture, decoder_params, layer_param,
                                 window_from_layer_types, window_to_layer_types)

BIASES = (
    layer_param("attn/q_proj/bias", "self_attn.q_proj.bias", "attn_q.bias", "split",
                ("heads", "head_dim"), role="bias", rotary="q"),
    layer_param("attn/k_proj/bias", "self_attn.k_proj.bias", "attn_k.bias", "split",
                ("kv_heads", "head_dim"), role="bias", rotary="k"),
    layer_param("attn/v_proj/bias", "self_attn.v_proj.bias", "attn_v.bias", "split",
                ("kv_heads", "head_dim"), role="bias"),
)

ARCHITECTURE = Architecture(
    name="qwen2",
    hf_model_types=("qwen2",),
    hf_class="Qwen2ForCausalLM",
    gguf_arch="qwen2",
    gguf_read_archs=("qwen2",),
    gguf_rotary="half",
    params=decoder_params(*BIASES),
    qkv_bias=True,
    sliding_window=True,
    hf_extra_from=window_from_layer_types,
    hf_extra_to=window_to_layer_types,
)
