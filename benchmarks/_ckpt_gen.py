"""Synthetic Hugging Face checkpoints for the conversion and up-scaling benchmarks.

`mistral_shape(size)` is Mistral-7B's ratios scaled to about SIZE bytes of weights;
`MISTRAL_7B` is the real shape (14.5 GB in bf16). `write_random_checkpoint` writes random
weights tensor by tensor into sharded safetensors files, never holding the model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import _machine

GIB = 2**30
NUM_LAYERS = 32
NUM_HEADS = 32
NUM_KV_HEADS = 8
VOCAB = 32000
MLP_RATIO = 3.5
DTYPES = {"bf16": ("bfloat16", 2), "fp32": ("float32", 4)}

def mistral_shape(size_bytes: float, itemsize: int) -> dict:
    """Mistral-7B's ratios (32 layers, intermediate 3.5 x hidden, 32 heads / 8 kv heads,
    head_dim = hidden / 32, vocab 32000, untied head) with hidden chosen so that
    params x itemsize is about size_bytes. hidden is a multiple of 64 (even head_dim)."""
    # per layer: q, o: h^2; k, v: h^2/4 each; mlp: 3 * 3.5 h^2; 2 norms: 2h
    # plus embed + lm_head: 2 V h, final norm: h
    a = NUM_LAYERS * (2 + 0.5 + 3 * MLP_RATIO)
    b = 2 * VOCAB + 2 * NUM_LAYERS + 1
    target = size_bytes / itemsize
    hidden = (-b + math.sqrt(b * b + 4 * a * target)) / (2 * a)
    hidden = max(64, round(hidden / 64) * 64)
    return {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "vocab_size": VOCAB,
        "hidden_size": hidden,
        "intermediate_size": int(MLP_RATIO * hidden),
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "num_key_value_heads": NUM_KV_HEADS,
        "head_dim": hidden // NUM_HEADS,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "initializer_range": 0.02,
        "use_cache": True,
        "attention_bias": False,
    }


def hf_tensor_specs(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """HF names and shapes in model order, from the family's parameter table."""
    from solar_jax.config import ModelConfig

    config = ModelConfig.from_hf(cfg)
    rows = config.arch.params_for(config)
    specs = [(r.hf_name, r.hf_shape(r.shape(config))) for r in rows if not r.stacked][:1]
    for n in range(config.num_layers):  # HF order: the embedding, each layer, then the rest
        specs += [(r.hf_name.format(i=n), r.hf_shape(r.shape(config))) for r in rows if r.stacked]
    specs += [(r.hf_name, r.hf_shape(r.shape(config))) for r in rows if not r.stacked][1:]
    return specs


def largest_stacked_param(cfg: dict, itemsize: int) -> tuple[str, int]:
    """Biggest leaf of the solar-jax pytree (a kernel stacked over layers, or the
    embedding), from the family's parameter table."""
    from solar_jax.config import ModelConfig

    config = ModelConfig.from_hf(cfg)
    sizes = {r.name: math.prod(r.shape(config)) * (config.num_layers if r.stacked else 1)
             for r in config.arch.params_for(config)}
    name = max(sizes, key=sizes.get)
    return name, sizes[name] * itemsize


def _write_shard(path: Path, specs, fetch) -> None:
    """One safetensors file, header from shapes, then each tensor as it is generated."""
    import numpy as np

    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in specs:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        header[name] = {"dtype": {"bfloat16": "BF16", "float32": "F32"}[dtype.name],
                        "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, shape, dtype in specs:
            array = np.ascontiguousarray(fetch(name, shape))
            assert array.dtype == dtype and array.shape == tuple(shape)
            f.write(array.reshape(-1).view(np.uint8).data)  # bf16 has no buffer protocol
            del array


def write_random_checkpoint(dst: Path, cfg: dict, dtype_name: str, shard_bytes: int,
                            seed: int = 0) -> int:
    """Random HF folder, one tensor in memory at a time. Returns the bytes of weights."""
    import ml_dtypes
    import numpy as np

    from solar_jax.checkpoint.safetensors_io import plan_shards

    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype_name == "bfloat16" else np.dtype(np.float32)
    rng = np.random.default_rng(seed)
    specs = [(name, shape, np_dtype) for name, shape in hf_tensor_specs(cfg)]

    def fetch(name: str, shape):
        x = rng.standard_normal(shape, dtype=np.float32)
        if name.endswith("norm.weight"):
            x *= 0.05
            x += 1.0
        else:
            x *= 0.02
        return x.astype(np_dtype, copy=False)

    dst.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(specs, shard_bytes)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        fname = ("model.safetensors" if len(shards) == 1
                 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors")
        _write_shard(dst / fname, shard, fetch)
        for name, shape, dt in shard:
            weight_map[name] = fname
            total += int(np.prod(shape)) * dt.itemsize
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (dst / "config.json").write_text(json.dumps({**cfg, "torch_dtype": dtype_name}, indent=2) + "\n")
    (dst / "generation_config.json").write_text(
        json.dumps({"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}) + "\n")
    return total


def mistral_7b() -> dict:
    """Mistral-7B-v0.1's shape: hidden 4096, 32 layers, 32 / 8 heads, intermediate 14336."""
    cfg = mistral_shape(14.5e9, 2)
    cfg.update(hidden_size=4096, intermediate_size=14336, head_dim=128)
    return cfg


def machine_info() -> dict:
    return _machine.machine_info(("jax", "orbax-checkpoint", "tensorstore", "numpy",
                                  "transformers", "torch", "safetensors"))
