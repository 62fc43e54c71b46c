"""Llama (Llama 1/2/3, SmolLM2, SOLAR): the plain decoder, no biases, one global attention."""

from solar_jax.arch.base import Architecture, decoder_params

ARCHITECTURE = Architecture(
    name="llama",
    hf_model_types=("llama",),
    hf_class="LlamaForCausalLM",
    gguf_arch="llama",
    gguf_read_archs=("llama",),
    gguf_rotary="interleaved",  # llama.cpp's llama graph: its converter permutes Q/K rows
    params=decoder_params(),
    hf_extra_to=lambda config: {"attention_bias": False, "mlp_bias": False},
    hf_refused=("attention_bias", "mlp_bias"),
)
