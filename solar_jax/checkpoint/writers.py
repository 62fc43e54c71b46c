"""Streaming writers: a ParamSource -> a solar-jax checkpoint, or -> a Hugging Face folder.

The solar-jax writer reads one leaf at a time from the source (and, where the current and
the next leaf together fit in PREFETCH_BYTES, the next one on a thread while the current is
written). The HF
writer needs no stacked leaf at all where the source reads single layers (HF, GGUF, recipes
over them): it streams tensor by tensor, and copies a tensor's bytes file to file where the
source already stores exactly the output's bytes (an HF -> HF up-scale or convert); from a
solar-jax checkpoint it holds one stacked leaf plus one layer of it. DST is checked by the destination guard (not an input, not holding
or inside one) and written through a staged directory that replaces DST only when
everything is written (solar_jax.destination): a failure or an interrupt leaves the
previous DST, or nothing.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ml_dtypes
import numpy as np

from solar_jax.checkpoint import hf_names
from solar_jax.checkpoint.safetensors_io import (StoredTensor, parse_size, plan_shards,
                                                 write_safetensors)
from solar_jax.checkpoint.solar_format import LeafWriter, write_config
from solar_jax.checkpoint.sources import ParamSource
from solar_jax import interrupts
from solar_jax.config import ModelConfig, canonical_dtype
from solar_jax.destination import check_destination, staged_dir
from solar_jax.errors import SolarError

# Reading leaf k+1 while tensorstore writes leaf k overlaps the read and transpose with the
# page-cache writes (HF -> solar of the 2 GB benchmark against the old 256 MiB budget:
# median per-pair ratios 0.75x and 0.83x over 7 and 5 alternating pairs,
# benchmarks/convert_ab.py) but holds two leaves, so only pairs within this budget get it:
# there the peak is 0.79-0.93 GiB against issue 2's bound of 1.18 GiB (2 x the largest
# leaf + the import-only constant), and a 7B or 10.7B model's 3.8-5.6 GB leaves are still
# read one at a time.
PREFETCH_BYTES = 1 << 30


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
    paths = source.leaf_paths()

    def read(path):
        return source.read_leaf(path).astype(_target_dtype(source, dtype, path), copy=False)

    with guarded_stage(source, dst, overwrite) as stage, ThreadPoolExecutor(1) as pool:
        writer = LeafWriter(stage)
        pending = pool.submit(read, paths[0]) if paths else None
        for k, path in enumerate(paths):
            array = pending.result()
            pending = None
            interrupts.pause_at("read")
            if k + 1 < len(paths) and (_leaf_bytes(source, path, dtype)
                                       + _leaf_bytes(source, paths[k + 1], dtype)
                                       <= PREFETCH_BYTES):
                pending = pool.submit(read, paths[k + 1])
            writer.add(path, array)
            del array
            if pending is None and k + 1 < len(paths):
                pending = pool.submit(read, paths[k + 1])
            interrupts.pause_at("write")
        writer.finish()
        write_config(stage, config)
        source.copy_extras(stage)
    return Path(dst)


def _leaf_bytes(source: ParamSource, path, dtype: str | None) -> int:
    shape, _ = source.leaf_spec(path)
    return int(np.prod(shape, dtype=np.int64)) * _target_dtype(source, dtype, path).itemsize


class _TensorFetcher:
    """The HF tensor `name` as the writer asks for it: the source's stored bytes where they
    are the output's, else one layer read and laid out (or one stacked leaf, kept while its
    layers are written, from a source that cannot read a single layer)."""

    def __init__(self, source: ParamSource, dtype: str | None, rules: dict, owner: dict):
        self.source, self.dtype, self.rules, self.owner = source, dtype, rules, owner
        self.leaf_path, self.leaf = None, None

    def __call__(self, name: str) -> np.ndarray | StoredTensor:
        path, index = self.owner[name]
        rule, target = self.rules[path], _target_dtype(self.source, self.dtype, path)
        stored = self.source.stored_tensor(path, index, target)
        if stored is not None:
            interrupts.pause_at("read")  # the copy is this tensor's read
            return stored
        if rule.stacked and self.source.layer_reads:
            layer = self.source.read_leaf(path, layers=[index])[0]
            interrupts.pause_at("read")
            return hf_names.to_hf(rule, layer.astype(target, copy=False))
        if self.leaf_path != path:
            self.leaf = None  # drop the previous leaf before reading the next
            self.leaf = self.source.read_leaf(path).astype(target, copy=False)
            self.leaf_path = path
            interrupts.pause_at("read")
        return hf_names.to_hf(rule, self.leaf[index] if rule.stacked else self.leaf)


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
    fetch = _TensorFetcher(source, dtype, rules, owner)

    shards = plan_shards(specs, max_bytes)
    with guarded_stage(source, dst, overwrite) as stage:
        weight_map, total, files = {}, 0, []
        for k, shard in enumerate(shards):
            fname = ("model.safetensors" if len(shards) == 1
                     else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors")
            # fsynced together at the end: the disk writes a shard back while the next is made
            write_safetensors(stage / fname, shard, fetch, sync=False)
            files.append(stage / fname)
            interrupts.pause_at("write")
            for name, shape, dt in shard:
                weight_map[name] = fname
                total += int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
        fetch.leaf = None
        _fsync_all(files)
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


def _fsync_all(files: list[Path]) -> None:
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
