"""GGUFSource: a llama.cpp .gguf file read as if it were a Hugging Face checkpoint.

The file is memory-mapped and each tensor is dequantized only when asked for, so converting
a quantized model holds one tensor at a time. `general.architecture` picks the family
(solar_jax.arch.for_gguf) whose parameter table names every tensor. Tensors are presented
under Hugging Face names and layouts: GGUF stores shapes innermost-first (we reverse them),
and for architectures whose llama.cpp graph pairs rows 2i, 2i+1 (llama) the converter
interleaves the rows of Q and K, which we undo, since our rotary keeps HF's rotate-half
layout. Nothing here imports torch, including the tokenizer export.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import ml_dtypes
import numpy as np

from solar_jax import arch
from solar_jax.arch.base import Param
from solar_jax.checkpoint.sources import NamedTensorSource
from solar_jax.config import ModelConfig
from solar_jax.errors import SolarError

LAYER_RE = re.compile(r"blk\.(\d+)\.(.+)")
_REQUIRED = object()


class GGUFSource(NamedTensorSource):
    """A .gguf file of a model of a family in solar_jax.arch, any dtype or quantization
    gguf-py can decode."""

    def __init__(self, path: Path):
        import gguf  # deferred: only GGUF users pay for the import

        self._gguf = gguf
        self.location = path = Path(path)
        try:
            self._reader = gguf.GGUFReader(path, "r")
        except Exception as e:  # gguf-py raises assorted errors on bad bytes; all mean "not a GGUF"
            raise SolarError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e})") from None
        end = max((int(t.data_offset) + int(t.n_bytes) for t in self._reader.tensors), default=0)
        if end > path.stat().st_size:
            raise SolarError(f"GGUF file {path} is truncated: tensor data runs to byte {end}, "
                             f"the file has {path.stat().st_size}")
        self._meta = self._reader.fields
        self._arch = self._value("general.architecture", None)
        self.family = arch.for_gguf(self._arch, path)
        names = self.family.by_gguf_name()
        self._tensors = {}
        self._rows: dict[str, Param] = {}
        for tensor in self._reader.tensors:
            hf_name, row = _hf_name(tensor.name, names)
            if tensor.name == "rope_freqs.weight":
                raise SolarError(f"GGUF file {path} stores per-frequency rope factors "
                                 f"(rope_freqs.weight, Llama 3.1 style); these are not supported")
            if hf_name is None:
                # Biases, MoE experts, ... would otherwise be silently dropped.
                raise SolarError(f"GGUF file {path} has tensor {tensor.name!r}, which "
                                 f"solar-jax's {self.family.name} parameter table does not have")
            if not _decodable(gguf, tensor.tensor_type):
                raise SolarError(f"GGUF file {path}: tensor {tensor.name} has type "
                                 f"{tensor.tensor_type.name}, which gguf-py cannot dequantize")
            self._tensors[hf_name] = tensor
            self._rows[hf_name] = row
        self.config = self._config()
        self.validate()

    # ---- metadata -------------------------------------------------------------------

    def _value(self, key: str, default=_REQUIRED):
        field = self._meta.get(key)
        if field is None:
            if default is _REQUIRED:
                raise SolarError(f"GGUF file {self.location} lacks metadata key {key!r}")
            return default
        return field.contents()

    def _config(self) -> ModelConfig:
        a = self._arch
        if "model.embed_tokens.weight" not in self._tensors:
            raise SolarError(f"GGUF file {self.location} has no token_embd.weight tensor")
        heads = int(self._value(f"{a}.attention.head_count"))
        kv_heads = self._value(f"{a}.attention.head_count_kv", heads)
        if isinstance(kv_heads, list):  # per-layer counts; we only support them all equal
            if len(set(kv_heads)) != 1:
                raise SolarError(f"GGUF file {self.location} has per-layer KV head counts "
                                 f"{sorted(set(kv_heads))}; only a uniform count is supported")
            kv_heads = kv_heads[0]
        hidden = int(self._value(f"{a}.embedding_length"))
        rope_dim = self._value(f"{a}.rope.dimension_count", None)
        head_dim = int(self._value(f"{a}.attention.key_length", None) or rope_dim or hidden // heads)
        if rope_dim is not None and int(rope_dim) != head_dim:
            raise SolarError(f"GGUF file {self.location} rotates {rope_dim} of {head_dim} head "
                             f"dimensions; partial rotary embeddings are not supported")
        value_dim = self._value(f"{a}.attention.value_length", None)
        if value_dim is not None and int(value_dim) != head_dim:
            raise SolarError(f"GGUF file {self.location} has value head size {value_dim} != "
                             f"key head size {head_dim}")
        return ModelConfig(
            vocab_size=self.tensor_shape("model.embed_tokens.weight")[0],
            hidden_size=hidden,
            intermediate_size=int(self._value(f"{a}.feed_forward_length")),
            num_layers=int(self._value(f"{a}.block_count")),
            num_heads=heads,
            num_kv_heads=int(kv_heads),
            head_dim=head_dim,
            max_position_embeddings=int(self._value(f"{a}.context_length", 4096)),
            rms_norm_eps=float(self._value(f"{a}.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(self._value(f"{a}.rope.freq_base", 10000.0)),
            rope_scaling=self._rope_scaling(),
            # llama.cpp writes `output.weight` only when the head is not the embedding.
            tie_word_embeddings="lm_head.weight" not in self._tensors,
            sliding_window=None,  # llama.cpp's graphs of these families attend to all of it
            model_type=self.family.name,
            bos_token_id=self._value("tokenizer.ggml.bos_token_id", None),
            eos_token_id=self._value("tokenizer.ggml.eos_token_id", None),
            pad_token_id=self._value("tokenizer.ggml.padding_token_id", None),
        )

    def _rope_scaling(self) -> dict | None:
        a = self._arch
        kind = self._value(f"{a}.rope.scaling.type", None)
        factor = self._value(f"{a}.rope.scaling.factor", None)
        if kind is None:  # older files spell linear scaling as one key
            factor = self._value(f"{a}.rope.scale_linear", None)
            kind = "linear" if factor is not None else "none"
        if kind == "none" or (kind == "linear" and float(factor or 1.0) == 1.0):
            return None
        if kind != "linear":
            raise SolarError(f"GGUF file {self.location} uses rope scaling {kind!r}; only "
                             f"linear is supported")
        return {"rope_type": "linear", "factor": float(factor)}

    # ---- tensors --------------------------------------------------------------------

    def tensor_names(self):
        return set(self._tensors)

    def tensor_shape(self, name):
        return tuple(int(n) for n in reversed(self._tensors[name].shape.tolist()))

    def tensor_dtype(self, name):
        kind = self._gguf.GGMLQuantizationType
        return np.dtype({kind.F32: np.float32, kind.F16: np.float16,
                         kind.BF16: ml_dtypes.bfloat16}.get(self._tensors[name].tensor_type,
                                                             np.float32))

    def read_tensor(self, name):
        tensor = self._tensors[name]
        kind = self._gguf.GGMLQuantizationType
        shape = self.tensor_shape(name)
        if tensor.tensor_type in (kind.F32, kind.F16, kind.BF16):
            # Copy out of the memory map in the stored dtype: no widening, file can close.
            data = np.array(tensor.data).view(self.tensor_dtype(name)).reshape(shape)
        else:
            # A plain ndarray view: gguf-py slices per block, and memmap slices are slow.
            try:
                data = self._gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
            except NotImplementedError:
                raise SolarError(f"GGUF file {self.location}: gguf-py cannot dequantize "
                                 f"{tensor.tensor_type.name} (tensor {tensor.name})") from None
            data = np.asarray(data, np.float32).reshape(shape)
        heads = self._rows[name].rotary_heads(self.config)
        if heads and self.family.gguf_rotary == "interleaved":
            data = _unpermute_rotary_rows(data, heads)
        return data

    # ---- tokenizer and generation config ----------------------------------------------

    def copy_extras(self, dst: Path) -> None:
        dst = Path(dst)
        dst.mkdir(parents=True, exist_ok=True)
        ids = {k: getattr(self.config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        (dst / "generation_config.json").write_text(
            json.dumps({k: v for k, v in ids.items() if v is not None}, indent=2) + "\n")
        self._export_tokenizer(dst)

    def _export_tokenizer(self, dst: Path) -> None:
        # AutoTokenizer(gguf_file=...) goes through transformers' GGUF reader, which imports
        # torch (and in 4.x refuses to run without it); its converters themselves don't.
        try:
            from transformers.integrations.gguf.gguf_tokenizer_mapping import (
                GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer)
        except ImportError:  # transformers 4.x
            from transformers.integrations.ggml import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer
        from transformers import PreTrainedTokenizerFast

        if "tokenizer.ggml.tokens" not in self._meta:
            raise SolarError(f"GGUF file {self.location} has no tokenizer to export")
        groups = {group: {name: self._value(f"tokenizer.{key}") for key, name in renames.items()
                          if f"tokenizer.{key}" in self._meta}
                  for group, renames in GGUF_TOKENIZER_MAPPING.items()}
        tokenizer_dict, init_kwargs = groups["tokenizer"], groups["tokenizer_config"]
        if tokenizer_dict.get("tokenizer_type") == "llama":
            init_kwargs.setdefault("add_bos_token", True)  # llama.cpp's default for sentencepiece
        try:
            backend, extra = convert_gguf_tokenizer(self._arch, tokenizer_dict)
        except (ValueError, KeyError, NotImplementedError) as e:
            raise SolarError(f"cannot export the tokenizer of GGUF file {self.location}: {e}") from None
        init_kwargs.update(extra)
        tokens = tokenizer_dict["tokens"]
        for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"),
                          ("unk", "unknown_token_id"), ("pad", "padding_token_id")):
            token_id = self._value(f"tokenizer.ggml.{key}", None)
            if token_id is not None and 0 <= token_id < len(tokens):
                init_kwargs.setdefault(f"{role}_token", tokens[token_id])
        PreTrainedTokenizerFast(tokenizer_object=backend, **init_kwargs).save_pretrained(str(dst))


def _hf_name(gguf_name: str, names: dict[str, Param]) -> tuple[str | None, Param | None]:
    """The HF name of a llama.cpp tensor and its row of the parameter table."""
    if gguf_name in names:
        row = names[gguf_name]
        return row.hf_name, row
    match = LAYER_RE.fullmatch(gguf_name)
    if match and f"blk.{{i}}.{match.group(2)}" in names:
        row = names[f"blk.{{i}}.{match.group(2)}"]
        return row.hf_name.format(i=int(match.group(1))), row
    return None, None


def _decodable(gguf, tensor_type) -> bool:
    kind = gguf.GGMLQuantizationType
    traits = getattr(gguf.quants, "_type_traits", None)
    return (tensor_type in (kind.F32, kind.F16, kind.BF16)
            or traits is None or tensor_type in traits)  # unknown gguf-py layout: try at read time


def _unpermute_rotary_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp's `permute`: per head, rows [x0, x1, ...] pairs back to halves."""
    half = weight.shape[0] // heads // 2
    return np.ascontiguousarray(
        weight.reshape(heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape))
