"""Qwen3 (dense): Llama's decoder with a per-head RMSNorm on q and k, applied before the
rotary embedding, an explicit head_dim (often not hidden/heads), no biases, Qwen's
sliding-window spelling, and llama.cpp's `qwen3` graph (rotate-half: no Q/K permutation)."""

from solar_jax.arch.base import (Architecture, decoder_params, layer_param,
                                 window_from_layer_types, window_to_layer_types)

QK_NORMS = (
    layer_param("attn/q_norm/scale", "self_attn.q_norm.weight", "attn_q_norm.weight", "copy",
                ("head_dim",), role="norm"),
    layer_param("attn/k_norm/scale", "self_attn.k_norm.weight", "attn_k_norm.weight", "copy",
                ("head_dim",), role="norm"),
)

ARCHITECTURE = Architecture(
    name="qwen3",
    hf_model_types=("qwen3",),
    hf_class="Qwen3ForCausalLM",
    gguf_arch="qwen3",
    gguf_read_archs=("qwen3",),
    gguf_rotary="half",
    params=decoder_params(*QK_NORMS),
    qk_norm=True,
    sliding_window=True,
    hf_extra_from=window_from_layer_types,
    hf_extra_to=lambda config: {"attention_bias": False, **window_to_layer_types(config)},
    hf_refused=("attention_bias",),  # Qwen3 with biases on q/k/v/o: not in this table
)
