"""GGUF export (solar-jax convert SRC OUT.gguf --to gguf) of tiny random models in every
encoding, re-imported: the float encodings exact, the quantized ones within the format's
error bound, a tied head, unaligned rows, one tensor at a time."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from conftest import make_hf_model  # noqa: E402
from gguf_helpers import (Q, VOCAB, export, gguf_logits, gguf_name,  # noqa: E402, F401
                          llama_cpp_permute, raw_tensor, tiny, tiny_tensors,
                          write_bpe_tokenizer)
from solar_jax.checkpoint import hf_names  # noqa: E402
from solar_jax.checkpoint.gguf_writer import write_gguf  # noqa: E402
from solar_jax.checkpoint.opener import open_source  # noqa: E402
from solar_jax.cli import main  # noqa: E402
from solar_jax.tree_paths import set_leaf  # noqa: E402


# ---- float encodings: exact ------------------------------------------------------------


@pytest.mark.parametrize("quant,dtype,param", [("f32", np.float32, "fp32"),
                                               ("f16", np.float16, "fp16"),
                                               ("bf16", ml_dtypes.bfloat16, "bf16")])
def test_float_export_is_exact(tmp_path, tiny, tiny_tensors, quant, dtype, param):
    out = export(tiny, tmp_path / f"tiny-{quant}.gguf", "--quant", quant)
    reader = gguf.GGUFReader(out)
    want_type = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16}[quant]
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert set(types) == {gguf_name(n) for n in tiny_tensors}
    for hf, value in tiny_tensors.items():
        assert types[gguf_name(hf)] == (Q.F32 if value.ndim == 1 else want_type), hf
    # llama.cpp's own layout: Q/K rows interleaved per head, as its converter writes them
    for i in range(3):
        q = tiny_tensors[f"model.layers.{i}.self_attn.q_proj.weight"]
        k = tiny_tensors[f"model.layers.{i}.self_attn.k_proj.weight"]
        np.testing.assert_array_equal(raw_tensor(reader, f"blk.{i}.attn_q.weight"),
                                      llama_cpp_permute(q, 4).astype(dtype))
        np.testing.assert_array_equal(raw_tensor(reader, f"blk.{i}.attn_k.weight"),
                                      llama_cpp_permute(k, 2).astype(dtype))
    # re-imported: every tensor is the original in that precision, norms untouched f32
    src = open_source(out)
    for hf, value in tiny_tensors.items():
        got = src.read_tensor(hf)
        if value.ndim == 1:
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, value, err_msg=hf)
        else:
            assert got.dtype == dtype
            np.testing.assert_array_equal(got, value.astype(dtype), err_msg=hf)
    # same parameters in that dtype -> bit-identical logits
    np.testing.assert_array_equal(gguf_logits(out, param), gguf_logits(tiny, param))


def test_round_trip_back_to_a_checkpoint(tmp_path, tiny):
    out = export(tiny, tmp_path / "tiny.gguf", "--quant", "f32")
    assert main(["convert", str(out), str(tmp_path / "back")]) == 0
    np.testing.assert_array_equal(gguf_logits(tmp_path / "back"), gguf_logits(tiny))
    from tokenizers import Tokenizer
    a = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    b = Tokenizer.from_file(str(tmp_path / "back" / "tokenizer.json"))
    text = "ROMEO: But soft, what light through yonder window breaks?\n  2024"
    assert a.encode(text).ids == b.encode(text).ids


# ---- quantized encodings: within the format's error bound --------------------------------


def _check_q8_0(orig: np.ndarray, got: np.ndarray, name: str) -> None:
    """Q8_0 (blocks of 32 along a row): d = amax/127, q = round(x/d) in [-127, 127], d
    stored as fp16. |x - q*fp16(d)| <= d/2 + 127*|d - fp16(d)|, and fp16 rounding of d is
    at most d*2^-11 (2^-25 absolute once d is subnormal): bound d*(1/2 + 127*2^-11) ~ 0.56 d."""
    x = orig.reshape(-1, 32).astype(np.float64)
    d = np.abs(x).max(-1, keepdims=True) / 127
    bound = d / 2 + 127 * np.maximum(d * 2.0**-11, 2.0**-25)
    err = np.abs(got.reshape(-1, 32) - x)
    assert (err <= bound * (1 + 1e-6) + 1e-12).all(), (name, float((err / np.maximum(d, 1e-30)).max()))


def _check_q4_0(orig: np.ndarray, got: np.ndarray, name: str) -> None:
    """Q4_0 (blocks of 32): m = the block's value of largest magnitude, d = -m/8, q =
    clip(floor(x/d + 8.5), 0, 15), x' = (q-8)*fp16(d). x/d lies in [-8, 8]; below 7.5 the
    rounding error is <= |d|/2, from 7.5 up (only values of the opposite sign to m, near
    -m) q clips at 15 and the error is <= |d| = amax/8. fp16 rounding of d adds <= 8*|d|*2^-11."""
    x = orig.reshape(-1, 32).astype(np.float64)
    m = np.take_along_axis(x, np.abs(x).argmax(-1)[:, None], -1)
    d = np.abs(m) / 8
    fp16 = 8 * np.maximum(d * 2.0**-11, 2.0**-25)
    ratio = np.where(m != 0, x / np.where(m != 0, -m / 8, 1), 0)
    bound = np.where(ratio < 7.5, d / 2, d) + fp16
    err = np.abs(got.reshape(-1, 32) - x)
    assert (err <= bound * (1 + 1e-6) + 1e-12).all(), (name, float((err / np.maximum(d, 1e-30)).max()))


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_quantized_export_within_bounds(tmp_path, tiny, tiny_tensors, quant):
    out = export(tiny, tmp_path / f"tiny-{quant}.gguf", "--quant", quant)
    body = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[quant]
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.file_type"].contents() == \
        {"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[quant]
    types = {t.name: t.tensor_type for t in reader.tensors}
    src = open_source(out)
    for hf, value in tiny_tensors.items():
        got = src.read_tensor(hf)
        if value.ndim == 1:
            assert types[gguf_name(hf)] == Q.F32
            np.testing.assert_array_equal(got, value, err_msg=hf)
            continue
        # q4_0 keeps the output head at Q8_0, as llama-quantize keeps it above 4 bits
        want = Q.Q8_0 if hf == "lm_head.weight" else body
        assert types[gguf_name(hf)] == want, hf
        (_check_q8_0 if want == Q.Q8_0 else _check_q4_0)(value, got, hf)
    # logits: relative RMS error of the order of the weights' (q8_0 ~0.6%, q4_0 ~10%)
    ref, ours = gguf_logits(tiny), gguf_logits(out)
    rel = np.sqrt(np.mean((ours - ref) ** 2) / np.mean(ref**2))
    assert rel < {"q8_0": 0.02, "q4_0": 0.3}[quant], rel
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > {"q8_0": 0.9999, "q4_0": 0.95}[quant]


def test_tied_head_and_unaligned_rows(tmp_path):
    """A tied embedding is the head (Q8_0 under q4_0); rows not a multiple of 32 fall back
    to F16, as llama.cpp's converter does."""
    make_hf_model(tmp_path / "hf", tie_word_embeddings=True, vocab_size=VOCAB, intermediate_size=80)
    write_bpe_tokenizer(tmp_path / "hf")
    reader = gguf.GGUFReader(export(tmp_path / "hf", tmp_path / "t.gguf", "--quant", "q4_0"))
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert "output.weight" not in types
    assert types["token_embd.weight"] == Q.Q8_0
    assert types["blk.0.ffn_down.weight"] == Q.F16  # rows of 80
    assert types["blk.0.ffn_up.weight"] == types["blk.0.attn_q.weight"] == Q.Q4_0


def test_streams_one_tensor_at_a_time(tmp_path, tiny):
    """An HF folder is read one tensor at a time, by name; params in memory (like an orbax
    checkpoint, which restores whole leaves) one stacked leaf at a time, each once."""
    from solar_jax.checkpoint.memory_source import MemorySource

    src = open_source(tiny)
    params = {}
    for path in src.leaf_paths():
        set_leaf(params, path, src.read_leaf(path))
    mem = MemorySource(src.config, params, extras_from=tiny)
    rules = hf_names.rules_for(src.config)
    names = [n for r in rules for n in hf_names.hf_names(r, src.config)]
    for source, method, expected in ((src, "read_tensor", [(n,) for n in names]),
                                     (mem, "read_leaf", [(r.path,) for r in rules])):
        calls = []
        original = getattr(source, method)
        setattr(source, method, lambda *a, f=original, c=calls: c.append(a) or f(*a))
        write_gguf(source, tmp_path / f"{method}.gguf", quant="q8_0")
        assert calls == expected
    # both ways give the same file, byte for byte
    assert (tmp_path / "read_tensor.gguf").read_bytes() == (tmp_path / "read_leaf.gguf").read_bytes()
