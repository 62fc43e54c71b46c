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

from solar_jax.platforms import default_to_cpu_without_accelerator

default_to_cpu_without_accelerator()  # before any backend starts: see solar_jax/platforms.py

from solar_jax.api import convert, load_model, save_model
from solar_jax.config import ModelConfig
from solar_jax.dus import solar_ranges, upscale, upscale_checkpoint
from solar_jax.merge import merge_checkpoints, merge_params
from solar_jax.errors import SolarError
from solar_jax.model.attention import attention, available_attention_impls, register_attention
from solar_jax.model.transformer import Model, abstract_params, forward, init_params, logical_axes
from solar_jax.tokenizer import load_tokenizer


def __getattr__(name):
    # evaluate imports its modules lazily, so `import solar_jax` stays light.
    if name == "evaluate":
        from solar_jax.eval import evaluate
        return evaluate
    raise AttributeError(f"module 'solar_jax' has no attribute {name!r}")


__all__ = ["convert", "load_model", "save_model", "ModelConfig", "SolarError", "attention",
           "available_attention_impls", "register_attention", "Model", "abstract_params",
           "forward", "init_params", "logical_axes", "load_tokenizer", "upscale",
           "upscale_checkpoint", "solar_ranges", "merge_params", "merge_checkpoints"]
__version__ = "0.1.0"
