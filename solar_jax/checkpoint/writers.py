"""Streaming writers: a ParamSource -> a solar-jax checkpoint, or -> a Hugging Face folder.

Both read one leaf at a time from the source, so peak memory is about one stacked leaf
plus one layer of it. Output goes to a hidden staging directory beside DST that is renamed
into place only when everything is written: a failure leaves nothing at DST.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import ml_dtypes
import numpy as np

from solar_jax.checkpoint import hf_names
from solar_jax.checkpoint.safetensors_io import parse_size, plan_shards, write_safetensors
from solar_jax.checkpoint.solar_format import LeafWriter, write_config
from solar_jax.checkpoint.sources import ParamSource
from solar_jax.config import ModelConfig, canonical_dtype
from solar_jax.errors import SolarError


def check_destination(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not overwrite:
        if dst.is_file() or any(dst.iterdir()):
            raise SolarError(f"destination {dst} exists and is not empty; pass --overwrite to replace it")


@contextlib.contextmanager
def staged_output(dst: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh staging dir; on success it replaces `dst`, on failure it vanishes."""
    dst = Path(dst).absolute()
    check_destination(dst, overwrite)
    dst.parent.mkdir(parents=True, exist_ok=True)
    stage = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if dst.is_dir():
        shutil.rmtree(dst)
    elif dst.exists():
        dst.unlink()
    os.replace(stage, dst)


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
    with staged_output(dst, overwrite) as stage:
        writer = LeafWriter(stage)
        for path in source.leaf_paths():
            array = source.read_leaf(path)
            writer.add(path, array.astype(_target_dtype(source, dtype, path), copy=False))
            del array
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
        array = current["array"]
        return hf_names.to_hf(rules[path], array[layer] if rules[path].stacked else array)

    shards = plan_shards(specs, max_bytes)
    with staged_output(dst, overwrite) as stage:
        weight_map, total = {}, 0
        for k, shard in enumerate(shards):
            fname = ("model.safetensors" if len(shards) == 1
                     else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors")
            write_safetensors(stage / fname, shard, fetch)
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
