"""Parameter sources: anything that can hand out our params one leaf at a time.

`solar_jax.checkpoint.opener.open_source(path)` recognises a solar-jax checkpoint, a
Hugging Face folder, or a .gguf file. Every source exposes the model config, the shape/dtype of each leaf (from headers,
before any tensor data is read), and `read_leaf(path, layers=None)` that assembles one
(stacked) leaf in memory. Converters, DUS and merge only ever hold a leaf or two.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from solar_jax.checkpoint import hf_names
from solar_jax.checkpoint.safetensors_io import SafetensorsFile, StoredTensor
from solar_jax.config import ModelConfig
from solar_jax.errors import SolarError

LeafPath = tuple[str, ...]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class ParamSource:
    """Base: subclasses set `config` and implement `leaf_spec`, `read_leaf`."""

    config: ModelConfig
    location: Path
    # True where read_leaf(path, layers=[i]) reads one layer's data, so a writer may stream
    # a stacked leaf layer by layer; False where it reads the whole leaf anyway.
    layer_reads = False

    def leaf_paths(self) -> list[LeafPath]:
        return [r.path for r in hf_names.rules_for(self.config)]

    def leaf_spec(self, path: LeafPath) -> tuple[tuple[int, ...], np.dtype]:
        raise NotImplementedError

    def read_leaf(self, path: LeafPath, layers: list[int] | None = None) -> np.ndarray:
        raise NotImplementedError

    def stored_tensor(self, path: LeafPath, index: int, dtype: np.dtype) -> StoredTensor | None:
        """Where the bytes of HF tensor `index` of leaf `path` (the layer; 0 for an unstacked
        leaf) already lie in a safetensors file exactly as an HF output in `dtype` stores
        them, or None: the HF writer then copies them instead of decoding."""
        return None

    def copy_extras(self, dst: Path) -> None:
        """Copy tokenizer and generation config files next to exported weights."""

    def input_paths(self) -> list[Path]:
        """The files/folders this source reads: what a destination must not overlap."""
        return [self.location]

    def source_dtype(self) -> np.dtype:
        return self.leaf_spec(("embed", "embedding"))[1]


class NamedTensorSource(ParamSource):
    """A source whose tensors are addressed by Hugging Face names (HF folders, GGUF)."""

    layer_reads = True

    def tensor_names(self) -> set[str]:
        raise NotImplementedError

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def tensor_dtype(self, name: str) -> np.dtype:
        raise NotImplementedError

    def read_tensor(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def validate(self) -> None:
        """Every tensor the config needs is present with the right shape (headers only)."""
        expected = _expected_layer_shapes(self.config)
        names = self.tensor_names()
        for rule in hf_names.rules_for(self.config):
            want = hf_names.hf_shape(rule, expected[rule.path])
            for name in hf_names.hf_names(rule, self.config):
                if name not in names:
                    raise SolarError(f"{self.location}: tensor {name} is missing")
                got = tuple(self.tensor_shape(name))
                if got != want:
                    raise SolarError(f"{self.location}: tensor {name} has shape {list(got)}, "
                                     f"expected {list(want)}")

    def leaf_spec(self, path):
        rule = _rule(self.config, path)
        shape = _expected_layer_shapes(self.config)[path]
        first = hf_names.hf_names(rule, self.config)[0]
        if rule.stacked:
            shape = (self.config.num_layers, *shape)
        return shape, self.tensor_dtype(first)

    def read_leaf(self, path, layers=None):
        rule = _rule(self.config, path)
        layer_shape = _expected_layer_shapes(self.config)[path]
        names = hf_names.hf_names(rule, self.config)
        if not rule.stacked:
            return np.ascontiguousarray(hf_names.from_hf(rule, self.read_tensor(names[0]), layer_shape))
        layers = list(range(self.config.num_layers)) if layers is None else list(layers)
        out = None
        for slot, layer in enumerate(layers):
            tensor = self.read_tensor(names[layer])
            if out is None:
                out = np.empty((len(layers), *layer_shape), tensor.dtype)
            out[slot] = hf_names.from_hf(rule, tensor, layer_shape)
            del tensor
        return out


class HFSource(NamedTensorSource):
    """A Hugging Face folder: config.json + model.safetensors or a sharded index."""

    def __init__(self, path: Path):
        self.location = path
        if not (path / "config.json").is_file():
            raise SolarError(f"{path} has no config.json (not a Hugging Face model folder)")
        self.config = ModelConfig.from_hf(path / "config.json")
        self._files: dict[str, SafetensorsFile] = {}
        self._where: dict[str, str] = {}
        index = path / "model.safetensors.index.json"
        single = path / "model.safetensors"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError):
                raise SolarError(f"{index} is not a valid safetensors index") from None
            for shard in sorted(set(weight_map.values())):
                if not (path / shard).is_file():
                    raise SolarError(f"{index} names shard {shard}, which does not exist")
                self._files[shard] = SafetensorsFile(path / shard)
            for name, shard in weight_map.items():
                if name not in self._files[shard].entries:
                    raise SolarError(f"{index} maps {name} to {shard}, which lacks it")
                self._where[name] = shard
        elif single.is_file():
            self._files["model.safetensors"] = SafetensorsFile(single)
            self._where = {n: "model.safetensors" for n in self._files["model.safetensors"].names()}
        else:
            pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles:
                raise SolarError(pickle_message(path / pickles[0]))
            raise SolarError(f"{path} has no model.safetensors or model.safetensors.index.json")
        self.validate()

    def tensor_names(self):
        return set(self._where)

    def tensor_shape(self, name):
        return self._files[self._where[name]].shape(name)

    def tensor_dtype(self, name):
        return self._files[self._where[name]].dtype(name)

    def read_tensor(self, name):
        return self._files[self._where[name]].read(name)

    def stored_tensor(self, path, index, dtype):
        # validate() checked every shape against the config, so the bytes are the HF tensor
        name = hf_names.hf_names(_rule(self.config, path), self.config)[index]
        if self.tensor_dtype(name) != np.dtype(dtype):
            return None
        return self._files[self._where[name]].stored(name)

    def copy_extras(self, dst: Path) -> None:
        for name in (*TOKENIZER_FILES, "generation_config.json"):
            if (self.location / name).is_file():
                shutil.copy2(self.location / name, dst / name)


def pickle_message(path: Path) -> str:
    return (f"refusing to load pickle checkpoint {path}: it can run arbitrary code. Convert it "
            f"to safetensors where you trust it, e.g. `python -c \"from transformers import "
            f"AutoModelForCausalLM as M; M.from_pretrained('DIR').save_pretrained('OUT', "
            f"safe_serialization=True)\"`")


def _rule(config: ModelConfig, path: LeafPath) -> hf_names.Rule:
    for rule in hf_names.rules_for(config):
        if rule.path == tuple(path):
            return rule
    raise SolarError(f"unknown parameter {'/'.join(path)} for {config.model_type}")


def _expected_layer_shapes(config: ModelConfig) -> dict[LeafPath, tuple[int, ...]]:
    """Our per-layer shape of every leaf (the stacked ones without the layer axis), from
    the family's parameter table."""
    return {rule.path: rule.shape(config) for rule in hf_names.rules_for(config)}
