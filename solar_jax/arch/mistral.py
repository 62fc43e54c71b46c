"""Mistral (7B v0.1, the model SOLAR 10.7B was up-scaled from): Llama's tensors plus one
sliding window for every layer."""

from solar_jax.arch.base import Architecture, decoder_params

ARCHITECTURE = Architecture(
    name="mistral",
    hf_model_types=("mistral",),
    hf_class="MistralForCausalLM",
    # llama.cpp converts Mistral to its llama architecture (the window is not kept there);
    # files that say "mistral" are read as Mistral too.
    gguf_arch="llama",
    gguf_read_archs=("mistral",),
    gguf_rotary="interleaved",
    params=decoder_params(),
    sliding_window=True,
    hf_extra_from=lambda hf: {"sliding_window": hf.get("sliding_window")},
    hf_extra_to=lambda config: {"attention_bias": False, "sliding_window": config.sliding_window},
    hf_refused=("attention_bias", "mlp_bias"),
)
