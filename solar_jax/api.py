"""The documented Python API; the CLI is a thin shell over these functions."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp

from solar_jax import placement
from solar_jax.checkpoint.gguf_source import GGUFSource
from solar_jax.checkpoint.memory_source import MemorySource
from solar_jax.checkpoint.output import FORMATS, write_source
from solar_jax.checkpoint.output import convert as _convert_streaming
from solar_jax.checkpoint.opener import open_source
from solar_jax.checkpoint.writers import numpy_dtype
from solar_jax.config import canonical_dtype
from solar_jax.handle import Model
from solar_jax.tree_paths import get_leaf, set_leaf


def load_model(path: str | Path, dtype: str | None = None, *, compute_dtype: str | None = None,
               attention_impl: str | None = None, remat: str | None = None,
               mesh=None, rules=None) -> Model:
    """Load an HF folder, a solar-jax checkpoint or a .gguf file into a `Model`.

    dtype: parameter dtype (fp32/bf16/fp16); default keeps the checkpoint's own (GGUF
    quantized tensors come out fp32). compute_dtype defaults to the parameter dtype.
    mesh: a `jax.sharding.Mesh`, a shape ({"tensor": 8}) or a spec ("fsdp=2,tensor=4"):
    each weight is placed on it by the logical-axis `rules` (default
    `solar_jax.sharding.DEFAULT_RULES`: heads, mlp and vocab over "tensor") as it is read,
    so no device holds the whole model; eval and generation then run sharded
    (solar_jax/placement.py).
    """
    mesh = placement.as_mesh(mesh)  # a bad mesh fails before anything is read
    source = open_source(path)
    param_dtype = canonical_dtype(dtype) if dtype else None
    shardings = placement.leaf_shardings(source.config, mesh, rules) if mesh else None
    params: dict = {}
    for leaf in source.leaf_paths():
        array = source.read_leaf(leaf)
        if param_dtype:
            array = array.astype(numpy_dtype(param_dtype), copy=False)
        if shardings is None:
            value = jnp.asarray(array)
        else:
            value = placement.place(array, get_leaf(shardings, leaf))
        set_leaf(params, leaf, value)
        del array
    stored = str(get_leaf(params, ("embed", "embedding")).dtype)
    config = source.config.replace(
        param_dtype=stored, compute_dtype=canonical_dtype(compute_dtype) if compute_dtype else stored,
        **({"attention_impl": attention_impl} if attention_impl else {}),
        **({"remat": remat} if remat else {}))
    model = Model(config, params)
    model.source = Path(path)
    model.mesh = mesh
    return model


def save_model(model: Model, path: str | Path, format: str = "solar", *, dtype: str | None = None,
               max_shard_size: str | int = "5GB", overwrite: bool = False,
               quant: str | None = None, tokenizer: bool = True) -> Path:
    """Write `model` as a solar-jax checkpoint, an HF folder (tokenizer copied along) or a
    .gguf file for llama.cpp (format="gguf"; quant f16 (default)/bf16/f32/q8_0/q4_0)."""
    source_dir = getattr(model, "source", None)
    extras = source_dir if source_dir is not None and Path(source_dir).is_dir() else None
    source = MemorySource(model.config, model.params, extras_from=extras,
                          tokenizer=model.tokenizer)
    if extras is None and source_dir is not None and Path(source_dir).suffix == ".gguf":
        source = _with_gguf_extras(source, Path(source_dir))
    return write_source(source, path, to=format, dtype=dtype, max_shard_size=max_shard_size,
                        overwrite=overwrite, quant=quant, tokenizer=tokenizer)


def convert(src: str | Path, dst: str | Path, *, to: str = "solar", dtype: str | None = None,
            max_shard_size: str | int = "5GB", overwrite: bool = False,
            quant: str | None = None, tokenizer: bool = True) -> Path:
    """Stream SRC (HF folder, solar-jax checkpoint, GGUF) into DST in format `to`.

    to="gguf": DST is a .gguf file for llama.cpp; quant is f16 (default), bf16, f32, q8_0
    or q4_0; tokenizer=False writes the weights without a vocabulary."""
    return _convert_streaming(src, dst, to=to, dtype=dtype, max_shard_size=max_shard_size,
                              overwrite=overwrite, quant=quant, tokenizer=tokenizer)


def _with_gguf_extras(source: MemorySource, gguf_path: Path) -> MemorySource:
    gguf = GGUFSource(gguf_path)
    source.copy_extras = gguf.copy_extras  # tokenizer exported from the GGUF metadata
    return source
