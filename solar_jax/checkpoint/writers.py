"""Streaming writers: a ParamSource -> a solar-jax checkpoint, or -> a Hugging Face folder.

Both read one leaf at a time from the source, so peak memory is about one stacked leaf
plus one layer of it. DST is checked by the destination guard (not an input, not holding
or inside one) and written through a staged directory that replaces DST only when
everything is written (solar_jax.destination): a failure or an interrupt leaves the
previous DST, or nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np

from solar_jax.checkpoint import hf_names
from solar_jax.checkpoint.safetensors_io import parse_size, plan_shards, write_safetensors
from solar_jax.checkpoint.solar_format import LeafWriter, write_config
from solar_jax.checkpoint.sources import ParamSource
from solar_jax import interrupts
from solar_jax.config import ModelConfig, canonical_dtype
from solar_jax.destination import check_destination, staged_dir
from solar_jax.errors import SolarError


def guarded_stage(source: ParamSource, dst: str | Path, overwrite: bool):
    """The destination guard against every input of `source`, then a staged directory."""
    check_destination(dst, source.input_paths(), overwrite=overwrite)
    return staged_dir(dst)


def _target_dtype(source: ParamSource, dtype: str | None, path) -> np.dtype:
    if dtype is None:
        return source.leaf_spec(path)[1]
    return numpy_dtype(dtype)


def numpy_dtype(name: str) -> np.dtype:
    return {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
            "bfloat16": np.dtype(ml_dtypes.bfloat16)}[canonical_dtype(name)]


def output_config(source: ParamSource, dtype: str | None) -> ModelConfig:
    """The source's config with param_dtype recording the dtype the weights are stored in."""
    stored = _target_dtype(source, dtype, ("embed", "embedding"))
    name = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}.get(stored.name)
    if name is None:
        raise SolarError(f"unsupported weight dtype {stored.name} in {source.location}")
    return source.config.replace(param_dtype=name)


def write_solar(source: ParamSource, dst: str | Path, *, dtype: str | None = None,
                overwrite: bool = False) -> Path:
    config = output_config(source, dtype)
    with guarded_stage(source, dst, overwrite) as stage:
        writer = LeafWriter(stage)
        for path in source.leaf_paths():
            array = source.read_leaf(path)
            interrupts.pause_at("read")
            writer.add(path, array.astype(_target_dtype(source, dtype, path), copy=False))
            del array
            interrupts.pause_at("write")
        writer.finish()
        write_config(stage, config)
        source.copy_extras(stage)
    return Path(dst)


def write_hf(source: ParamSource, dst: str | Path, *, dtype: str | None = None,
             max_shard_size: str | int = "5GB", overwrite: bool = False) -> Path:
    config = output_config(source, dtype)
    max_bytes = parse_size(max_shard_size)
    rules = {r.path: r for r in hf_names.rules_for(config)}
    specs, owner = [], {}
    for path, rule in rules.items():
        shape, _ = source.leaf_spec(path)
        layer_shape = shape[1:] if rule.stacked else shape
        target = _target_dtype(source, dtype, path)
        for layer, name in enumerate(hf_names.hf_names(rule, config)):
            specs.append((name, hf_names.hf_shape(rule, layer_shape), target))
            owner[name] = (path, layer)

    current: dict = {}

    def fetch(name: str) -> np.ndarray:
        path, layer = owner[name]
        if current.get("path") != path:
            current.clear()  # drop the previous leaf before reading the next
            current["path"] = path
            current["array"] = source.read_leaf(path).astype(
                _target_dtype(source, dtype, path), copy=False)
            interrupts.pause_at("read")
        array = current["array"]
        return hf_names.to_hf(rules[path], array[layer] if rules[path].stacked else array)

    shards = plan_shards(specs, max_bytes)
    with guarded_stage(source, dst, overwrite) as stage:
        weight_map, total = {}, 0
        for k, shard in enumerate(shards):
            fname = ("model.safetensors" if len(shards) == 1
                     else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors")
            write_safetensors(stage / fname, shard, fetch)
            interrupts.pause_at("write")
            for name, shape, dt in shard:
                weight_map[name] = fname
                total += int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
        if len(shards) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (stage / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        torch_dtype = config.param_dtype
        (stage / "config.json").write_text(json.dumps(config.to_hf(torch_dtype), indent=2) + "\n")
        source.copy_extras(stage)
        if not (stage / "generation_config.json").is_file():
            gen = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
                   "pad_token_id": config.pad_token_id}
            (stage / "generation_config.json").write_text(
                json.dumps({k: v for k, v in gen.items() if v is not None}, indent=2) + "\n")
    return Path(dst)
