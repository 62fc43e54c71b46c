"""solar-jax: SOLAR 10.7B's recipe in JAX/Flax.

Public API:
    load_model(path, dtype=None) -> Model      HF folder, solar-jax checkpoint or .gguf
    save_model(model, path, format="solar"|"hf")
    convert(src, dst, to="solar"|"hf", dtype=None, max_shard_size="5GB", overwrite=False)
    attention(q, k, v, segment_ids=None, positions=None, *, causal, sliding_window, impl)
    upscale(params, config, ranges) -> (params, config)   depth up-scaling, jittable
    upscale_checkpoint / merge_checkpoints               streaming file-to-file versions
    merge_params(params_list, method, ...)               linear / slerp / task_arithmetic
    model.generate(prompts, ...)                         KV-cache decoding, sampling
                                                         (lower level: solar_jax.generate)
    evaluate(model, task, data, ...)                     lm-eval-style benchmarks
    ModelConfig, Model, init_params, abstract_params, logical_axes, load_tokenizer
"""

from solar_jax.startup_platform import default_to_cpu_without_accelerator

default_to_cpu_without_accelerator()  # before any backend starts: see startup_platform.py

import importlib

# Names resolve on first use (PEP 562), so `import solar_jax` (and the CLI, which installs
# its signal handlers before anything heavy loads) does not import jax up front.
_EXPORTS = {
    "convert": "solar_jax.api", "load_model": "solar_jax.api", "save_model": "solar_jax.api",
    "ModelConfig": "solar_jax.config",
    "solar_ranges": "solar_jax.dus", "upscale": "solar_jax.dus",
    "upscale_checkpoint": "solar_jax.dus",
    "merge_checkpoints": "solar_jax.merge", "merge_params": "solar_jax.merge",
    "SolarError": "solar_jax.errors",
    "attention": "solar_jax.model.attention",
    "available_attention_impls": "solar_jax.model.attention",
    "register_attention": "solar_jax.model.attention",
    "Model": "solar_jax.handle", "abstract_params": "solar_jax.model.transformer",
    "forward": "solar_jax.model.transformer", "init_params": "solar_jax.model.transformer",
    "logical_axes": "solar_jax.model.transformer",
    "load_tokenizer": "solar_jax.tokenizer",
    "evaluate": "solar_jax.eval",
}


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'solar_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = ["convert", "load_model", "save_model", "ModelConfig", "SolarError", "attention",
           "available_attention_impls", "register_attention", "Model", "abstract_params",
           "forward", "init_params", "logical_axes", "load_tokenizer", "upscale",
           "upscale_checkpoint", "solar_ranges", "merge_params", "merge_checkpoints"]
__version__ = "0.1.0"
