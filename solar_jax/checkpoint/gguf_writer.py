"""Export to GGUF for llama.cpp: a ParamSource -> one .gguf file of the family's llama.cpp
architecture (`llama` for Llama and Mistral, `qwen2`, `qwen3`, ...; see solar_jax/arch/).

The inverse of gguf_source.py. Tensors get llama.cpp's names (from the family's parameter
table) and layouts: shapes are the HF [out, in] ones (GGUF stores them innermost-first),
and where llama.cpp's graph pairs rotary rows 2i and 2i+1 (its llama architecture; HF's
rotate-half pairs i and i+d/2) the rows of Q and K are interleaved per head the way its
converter does it; its qwen2/qwen3 graphs rotate halves, so those stay as they are.
Norms, biases and other 1-D tensors stay
F32; 2-D weights become f32/f16/bf16 or are quantized with gguf-py's own routines
(gguf.quants.quantize), bit-identical to llama.cpp's reference quantizers.

Streaming: every tensor's name, type and byte size is known from the source's headers, so
the GGUF header and tensor index are written first and the data follows, one tensor at a
time, in the order of our leaves (all layers of one leaf, then the next). HF folders and
GGUF files are read one tensor at a time, by name; sources that only hand out whole stacked
leaves (solar-jax checkpoints, params in memory) one leaf at a time. Peak memory is that
plus one layer in f32 and its encoded copy. The file is written beside
DST under a hidden name and renamed into place only when complete: a failure, or bad input
found before writing (unknown quant type, no tokenizer, existing DST), leaves DST as it was.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ml_dtypes
import numpy as np

from solar_jax import interrupts
from solar_jax.checkpoint import hf_names
from solar_jax.checkpoint.gguf_source import GGUFSource
from solar_jax.checkpoint.gguf_vocab import raw_field_value, tokenizer_metadata
from solar_jax.checkpoint.sources import NamedTensorSource, ParamSource
from solar_jax.config import ModelConfig
from solar_jax.destination import check_destination, staged_file
from solar_jax.errors import SolarError

QUANT_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
DEFAULT_QUANT = "f16"
F16_MAX = float(np.finfo(np.float16).max)


def check_quant(quant: str | None) -> str:
    name = DEFAULT_QUANT if quant is None else str(quant).lower()
    if name not in QUANT_TYPES:
        raise SolarError(f"unknown GGUF quant type {quant!r}; use one of {', '.join(QUANT_TYPES)}")
    return name


def _ggml_types(quant: str):
    """(type of ordinary 2-D weights, type of the output head, llama.cpp file type)."""
    import gguf

    Q, F = gguf.GGMLQuantizationType, gguf.LlamaFileType
    return {"f32": (Q.F32, Q.F32, F.ALL_F32), "f16": (Q.F16, Q.F16, F.MOSTLY_F16),
            "bf16": (Q.BF16, Q.BF16, F.MOSTLY_BF16), "q8_0": (Q.Q8_0, Q.Q8_0, F.MOSTLY_Q8_0),
            # llama-quantize keeps the output head (or the tied embedding that serves as it)
            # above 4 bits; its Q6_K has no gguf-py quantizer, so the head is Q8_0 here.
            "q4_0": (Q.Q4_0, Q.Q8_0, F.MOSTLY_Q4_0)}[quant]


@dataclasses.dataclass(frozen=True)
class _Tensor:
    name: str                    # llama.cpp name, e.g. blk.3.attn_q.weight
    hf_name: str                 # the same tensor's HF name
    rule: hf_names.Rule
    layer: int | None            # index into the stacked leaf, None for global leaves
    shape: tuple[int, ...]       # HF/numpy shape [out, in]; GGUF records it reversed
    qtype: object                # gguf.GGMLQuantizationType
    rotary_heads: int | None     # Q/K: heads to interleave for llama.cpp's rotary layout

    @property
    def nbytes(self) -> int:
        import gguf

        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        return int(np.prod(self.shape, dtype=np.int64)) // block * size


def plan_tensors(source: ParamSource, config: ModelConfig, quant: str) -> list[_Tensor]:
    """Every tensor of the output, in file order, with its GGML type (headers only)."""
    import gguf

    body, head, _ = _ggml_types(quant)
    permutes = config.arch.gguf_rotary == "interleaved"
    plan = []
    for rule in hf_names.rules_for(config):
        shape, _ = source.leaf_spec(rule.path)
        layer_shape = tuple(shape[1:] if rule.stacked else shape)
        hf_shape = hf_names.hf_shape(rule, layer_shape)
        for layer, hf in enumerate(hf_names.hf_names(rule, config)):
            name = rule.gguf_name.format(i=layer)
            is_head = rule.path[0] == "lm_head" or (rule.path[0] == "embed"
                                                    and config.tie_word_embeddings)
            qtype = gguf.GGMLQuantizationType.F32 if len(hf_shape) == 1 else (head if is_head else body)
            block = gguf.GGML_QUANT_SIZES[qtype][0]
            if hf_shape[-1] % block:  # as convert_hf_to_gguf.py: rows that don't fill blocks
                qtype = gguf.GGMLQuantizationType.F16
            heads = rule.rotary_heads(config) if permutes else None
            plan.append(_Tensor(name, hf, rule, layer if rule.stacked else None, tuple(hf_shape),
                                qtype, heads))
    return plan


def permute_rotary_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's `permute`: per head, halves -> interleaved pairs."""
    half = weight.shape[0] // heads // 2
    return np.ascontiguousarray(
        weight.reshape(heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape))


def encode(tensor: _Tensor, hf: np.ndarray) -> np.ndarray:
    """One HF-layout tensor -> the bytes (as an array) GGUF stores for `tensor.qtype`."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if not np.isfinite(hf).all():
        raise SolarError(f"tensor {tensor.name} holds NaN or infinite values; refusing to export")
    if tensor.qtype == Q.F32:
        return np.ascontiguousarray(hf, np.float32)
    if tensor.qtype == Q.F16:
        peak = float(np.abs(hf).max(initial=0.0))
        if peak > F16_MAX:
            raise SolarError(f"tensor {tensor.name} has values up to {peak:.4g}, beyond float16's "
                             f"range ({F16_MAX:.0f}); use --quant bf16 or f32")
        return np.ascontiguousarray(hf, np.float16)
    if tensor.qtype == Q.BF16 and hf.dtype == ml_dtypes.bfloat16:
        return np.ascontiguousarray(hf).view(np.uint8)  # already bf16: the bits as they are
    return gguf.quants.quantize(np.ascontiguousarray(hf, np.float32), tensor.qtype)


def write_gguf(source: ParamSource, dst: str | Path, *, quant: str | None = None,
               tokenizer: bool = True, overwrite: bool = False, name: str | None = None) -> Path:
    """Write `source` to the single file `dst` (a .gguf path) for llama.cpp."""
    import gguf

    quant = check_quant(quant)
    dst = Path(dst)
    if dst.suffix != ".gguf":
        raise SolarError(f"GGUF output {dst} must be a file name ending in .gguf")
    if dst.is_dir():
        raise SolarError(f"destination {dst} is a directory; give a .gguf file path")
    check_destination(dst, source.input_paths(), overwrite=overwrite)
    config = source.config
    _check_architecture(config, source.location)
    vocab = tokenizer_metadata(source, config) if tokenizer else None
    plan = plan_tensors(source, config, quant)

    with staged_file(dst) as stage:
        writer = gguf.GGUFWriter(stage, config.arch.gguf_arch)
        try:
            _add_model_metadata(writer, source, config, quant, name or _default_name(source, dst))
            if vocab is None:
                writer.add_tokenizer_model("none")  # llama.cpp's marker for "no vocabulary"
            else:
                for key, value in vocab.items():
                    writer.add_key_value(key, value.value, value.type, value.sub_type)
            for t in plan:
                writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes,
                                       raw_dtype=t.qtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            _write_data(writer, source, plan)
        finally:
            writer.close()
    return dst


def _write_data(writer, source: ParamSource, plan: list[_Tensor]) -> None:
    # HF folders and GGUF files hand out single tensors by HF name, already in HF layout;
    # other sources (orbax checkpoints, params in memory) whole stacked leaves in our layout.
    by_name = isinstance(source, NamedTensorSource)
    current_path, array = None, None
    for t in plan:
        if by_name:
            hf = source.read_tensor(t.hf_name)
        else:
            if t.rule.path != current_path:
                array = None  # drop the previous leaf before reading the next
                current_path, array = t.rule.path, source.read_leaf(t.rule.path)
            hf = hf_names.to_hf(t.rule, array[t.layer] if t.layer is not None else array)
        if tuple(hf.shape) != t.shape:
            raise SolarError(f"{source.location}: tensor {t.hf_name} has shape "
                             f"{list(hf.shape)}, expected {list(t.shape)}")
        if t.rotary_heads:
            hf = permute_rotary_rows(hf, t.rotary_heads)
        interrupts.pause_at("read")
        data = encode(t, hf)
        del hf
        writer.write_tensor_data(data)
        del data
        interrupts.pause_at("write")


def _check_architecture(config: ModelConfig, where) -> None:
    rope = config.rope_scaling or {}
    kind = rope.get("rope_type")
    if kind not in (None, "linear"):
        raise SolarError(f"{where} uses {kind!r} rope scaling; GGUF export supports none or "
                         f"linear (llama.cpp encodes {kind!r} as a rope_freqs tensor, which "
                         f"solar-jax does not write)")


def _default_name(source: ParamSource, dst: Path) -> str:
    location = Path(str(source.location))
    if location.name and not location.name.startswith("<"):
        return location.name.removesuffix(".gguf")
    return dst.name.removesuffix(".gguf")


def _add_model_metadata(w, source, config: ModelConfig, quant: str, name: str) -> None:
    """The keys llama.cpp's llama-like architectures (llama, qwen2, qwen3) read, as
    convert_hf_to_gguf.py writes them."""
    import gguf

    w.add_type("model")
    copied = set()
    if isinstance(source, GGUFSource):  # same model, new encoding: keep its provenance keys
        for key, field in source._reader.fields.items():
            if key.startswith("general.") and key not in (
                    "general.architecture", "general.type", "general.file_type",
                    "general.quantization_version", "general.alignment"):
                sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
                w.add_key_value(key, raw_field_value(field), field.types[0], sub)
                copied.add(key)
    if "general.name" not in copied:
        w.add_name(name)
    w.add_block_count(config.num_layers)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_heads)
    w.add_head_count_kv(config.num_kv_heads)
    w.add_rope_freq_base(float(config.rope_theta))
    w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    w.add_file_type(_ggml_types(quant)[2])
    w.add_vocab_size(config.vocab_size)
    w.add_rope_dimension_count(config.head_dim)
    if config.head_dim != config.hidden_size // config.num_heads:
        w.add_key_length(config.head_dim)
        w.add_value_length(config.head_dim)
    if config.rope_scaling:  # linear (checked above)
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(config.rope_scaling["factor"]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
