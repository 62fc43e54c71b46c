"""GGUF export (solar-jax convert SRC OUT.gguf --to gguf): tiny random models exported in
every encoding and re-imported, tokenizers in both llama.cpp vocab styles, the real SmolLM2
GGUF exported again and compared key by key, and bad input."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import solar_jax  # noqa: E402
from conftest import DATA, make_hf_model  # noqa: E402
from solar_jax.checkpoint import gguf_vocab, hf_names  # noqa: E402
from solar_jax.checkpoint.gguf_source import GGUFSource  # noqa: E402
from solar_jax.checkpoint.gguf_writer import write_gguf  # noqa: E402
from solar_jax.checkpoint.safetensors_io import SafetensorsFile  # noqa: E402
from solar_jax.checkpoint.sources import open_source  # noqa: E402
from solar_jax.cli import main  # noqa: E402
from solar_jax.demo import smollm2_gguf  # noqa: E402
from solar_jax.errors import SolarError  # noqa: E402
from solar_jax.tree_paths import set_leaf  # noqa: E402

Q = gguf.GGMLQuantizationType
VOCAB = 320
IDS = np.array([[1, 17, 42, 99, 250, 7, 300, 5, 64, 128, 3, 11]])
LAYER_GGUF = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
              "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


# ---- fixtures -------------------------------------------------------------------------


def write_bpe_tokenizer(path: Path, vocab_size: int = VOCAB) -> Path:
    """A byte-level BPE (GPT-2 style) trained on a little Shakespeare, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((DATA / "tinyshakespeare.txt").read_text()[:20000].splitlines(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<|endoftext|>")
    fast.chat_template = "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    fast.save_pretrained(str(path))
    return path


def write_spm_tokenizer(path: Path, vocab_size: int = 400):
    """A SentencePiece BPE model with byte fallback (the Llama 2 / Mistral / SOLAR kind) and
    the tokenizer.json HF derives from it: merges ranked by piece score, legacy normalizer."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    corpus = path / "corpus.txt"
    path.mkdir(parents=True, exist_ok=True)
    corpus.write_text((DATA / "tinyshakespeare.txt").read_text()[:40000])
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(path / "spm"), vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        split_digits=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        minloglevel=2)
    corpus.unlink()
    sp = spm.SentencePieceProcessor(model_file=str(path / "spm.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {p: i for i, p in enumerate(pieces)}
    normal = {p: (sp.get_score(i), i) for i, p in enumerate(pieces)
              if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))}
    ranked = sorted((-normal[p][0], normal[p][1], p[:k], p[k:]) for p in normal
                    for k in range(1, len(p)) if p[:k] in normal and p[k:] in normal)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for _, _, a, b in ranked],
                               unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                           normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(str(path))
    return path, sp


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An untied tiny Llama (f32) with a byte-level BPE tokenizer."""
    path = tmp_path_factory.mktemp("tiny") / "hf"
    make_hf_model(path, vocab_size=VOCAB, seed=1)
    write_bpe_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def tiny_tensors(tiny):
    st = SafetensorsFile(tiny / "model.safetensors")
    return {n: st.read(n) for n in st.names()}


def _gguf_name(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, i, rest = hf.split(".", 3)
    return f"blk.{i}.{LAYER_GGUF[rest.removesuffix('.weight')]}.weight"


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, written out independently of ours."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _raw(reader, name: str) -> np.ndarray:
    """A tensor's stored data, dequantized but NOT un-permuted (llama.cpp's view), HF shape."""
    t = next(t for t in reader.tensors if t.name == name)
    shape = tuple(int(n) for n in reversed(t.shape.tolist()))
    if t.tensor_type == Q.BF16:
        return np.array(t.data).view(ml_dtypes.bfloat16).reshape(shape)
    if t.tensor_type in (Q.F32, Q.F16):
        return np.array(t.data).reshape(shape)
    return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)


@functools.cache
def _logits(path, dtype=None) -> np.ndarray:
    return np.asarray(solar_jax.load_model(path, dtype=dtype)(IDS), np.float32)


def _export(src, out, *args) -> Path:
    assert main(["convert", str(src), str(out), "--to", "gguf", *args]) == 0
    return out


# ---- float encodings: exact ------------------------------------------------------------


@pytest.mark.parametrize("quant,dtype,param", [("f32", np.float32, "fp32"),
                                               ("f16", np.float16, "fp16"),
                                               ("bf16", ml_dtypes.bfloat16, "bf16")])
def test_float_export_is_exact(tmp_path, tiny, tiny_tensors, quant, dtype, param):
    out = _export(tiny, tmp_path / f"tiny-{quant}.gguf", "--quant", quant)
    reader = gguf.GGUFReader(out)
    want_type = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16}[quant]
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert set(types) == {_gguf_name(n) for n in tiny_tensors}
    for hf, value in tiny_tensors.items():
        assert types[_gguf_name(hf)] == (Q.F32 if value.ndim == 1 else want_type), hf
    # llama.cpp's own layout: Q/K rows interleaved per head, as its converter writes them
    for i in range(3):
        q = tiny_tensors[f"model.layers.{i}.self_attn.q_proj.weight"]
        k = tiny_tensors[f"model.layers.{i}.self_attn.k_proj.weight"]
        np.testing.assert_array_equal(_raw(reader, f"blk.{i}.attn_q.weight"),
                                      _llama_cpp_permute(q, 4).astype(dtype))
        np.testing.assert_array_equal(_raw(reader, f"blk.{i}.attn_k.weight"),
                                      _llama_cpp_permute(k, 2).astype(dtype))
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
    np.testing.assert_array_equal(_logits(out, param), _logits(tiny, param))


def test_round_trip_back_to_a_checkpoint(tmp_path, tiny):
    out = _export(tiny, tmp_path / "tiny.gguf", "--quant", "f32")
    assert main(["convert", str(out), str(tmp_path / "back")]) == 0
    np.testing.assert_array_equal(_logits(tmp_path / "back"), _logits(tiny))
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
    out = _export(tiny, tmp_path / f"tiny-{quant}.gguf", "--quant", quant)
    body = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[quant]
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.file_type"].contents() == \
        {"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[quant]
    types = {t.name: t.tensor_type for t in reader.tensors}
    src = open_source(out)
    for hf, value in tiny_tensors.items():
        got = src.read_tensor(hf)
        if value.ndim == 1:
            assert types[_gguf_name(hf)] == Q.F32
            np.testing.assert_array_equal(got, value, err_msg=hf)
            continue
        # q4_0 keeps the output head at Q8_0, as llama-quantize keeps it above 4 bits
        want = Q.Q8_0 if hf == "lm_head.weight" else body
        assert types[_gguf_name(hf)] == want, hf
        (_check_q8_0 if want == Q.Q8_0 else _check_q4_0)(value, got, hf)
    # logits: relative RMS error of the order of the weights' (q8_0 ~0.6%, q4_0 ~10%)
    ref, ours = _logits(tiny), _logits(out)
    rel = np.sqrt(np.mean((ours - ref) ** 2) / np.mean(ref**2))
    assert rel < {"q8_0": 0.02, "q4_0": 0.3}[quant], rel
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > {"q8_0": 0.9999, "q4_0": 0.95}[quant]


def test_tied_head_and_unaligned_rows(tmp_path):
    """A tied embedding is the head (Q8_0 under q4_0); rows not a multiple of 32 fall back
    to F16, as llama.cpp's converter does."""
    make_hf_model(tmp_path / "hf", tie_word_embeddings=True, vocab_size=VOCAB, intermediate_size=80)
    write_bpe_tokenizer(tmp_path / "hf")
    reader = gguf.GGUFReader(_export(tmp_path / "hf", tmp_path / "t.gguf", "--quant", "q4_0"))
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


# ---- tokenizers -----------------------------------------------------------------------


def test_bpe_tokenizer_metadata(tmp_path, tiny):
    reader = gguf.GGUFReader(_export(tiny, tmp_path / "t.gguf"))
    f = {k: v.contents() for k, v in reader.fields.items()}
    tok = json.loads((tiny / "tokenizer.json").read_text())
    vocab = {i: t for t, i in tok["model"]["vocab"].items()}
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    assert f["tokenizer.ggml.tokens"] == [vocab[i] for i in range(VOCAB)]
    assert f["tokenizer.ggml.token_type"] == [3, 3, 3] + [1] * (VOCAB - 3)
    assert f["tokenizer.ggml.merges"] == [" ".join(m) for m in tok["model"]["merges"]]
    assert (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"],
            f["tokenizer.ggml.unknown_token_id"]) == (1, 2, 0)
    assert f["tokenizer.ggml.add_bos_token"] is False  # its post-processor adds no BOS
    assert f["tokenizer.chat_template"].startswith("{% for m in messages %}")
    assert f["general.architecture"] == "llama" and f["general.name"] == "hf"
    assert f["llama.vocab_size"] == VOCAB and f["llama.rope.dimension_count"] == 16
    assert f["llama.attention.head_count_kv"] == 2 and f["llama.block_count"] == 3


def test_sentencepiece_tokenizer(tmp_path):
    """SentencePiece-style tokenizer.json -> llama.cpp's "llama" vocab: byte/control/unknown
    types, and scores that order merges as the SentencePiece model's own scores do, so the
    tokenizer rebuilt from the GGUF (scores only, no merges) encodes like SentencePiece."""
    _, sp = write_spm_tokenizer(tmp_path / "hf", 400)
    make_hf_model(tmp_path / "hf", vocab_size=400)
    out = _export(tmp_path / "hf", tmp_path / "spm.gguf", "--quant", "q8_0")
    f = {k: v.contents() for k, v in gguf.GGUFReader(out).fields.items()}
    assert f["tokenizer.ggml.model"] == "llama" and "tokenizer.ggml.pre" not in f
    assert f["tokenizer.ggml.add_space_prefix"] is True and f["tokenizer.ggml.add_bos_token"] is True
    assert f["tokenizer.ggml.tokens"] == [sp.id_to_piece(i) for i in range(400)]
    assert f["tokenizer.ggml.token_type"] == [2, 3, 3] + [6] * 256 + [1] * (400 - 259)
    scores = f["tokenizer.ggml.scores"]
    multi = [i for i in range(259, 400) if len(sp.id_to_piece(i)) > 1]
    assert sorted(multi, key=lambda i: (-scores[i], i)) == sorted(multi, key=lambda i: (-sp.get_score(i), i))
    back = tmp_path / "back"
    GGUFSource(out).copy_extras(back)
    from tokenizers import Tokenizer
    rebuilt = Tokenizer.from_file(str(back / "tokenizer.json"))
    for line in (DATA / "tinyshakespeare.txt").read_text()[50000:53000].splitlines():
        if line:
            assert rebuilt.encode(line, add_special_tokens=False).ids == sp.encode(line), line


@pytest.mark.parametrize("pre,name", [
    ({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}]}, "smollm"),
    ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": gguf_vocab.LLAMA3_SPLIT}, "behavior": "Isolated",
         "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}, "llama-bpe"),
])
def test_pre_tokenizer_names(pre, name):
    assert gguf_vocab._pre_tokenizer_name({"pre_tokenizer": pre}, "x") == name


@pytest.mark.parametrize("tok,prefix", [
    ({"normalizer": {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "},
                                                    "content": "\u2581"}]}}, True),
    ({"pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first",
                        "split": False}}, True),
    ({"pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "never",
                        "split": False}}, False),
])
def test_sentencepiece_style_detection(tok, prefix):
    """Llama 2's legacy normalizer and the newer Metaspace spelling are both "llama" vocabs."""
    data = {"model": {"type": "BPE", "byte_fallback": True}, **tok}
    assert gguf_vocab._bpe_kind(data) == "llama"
    assert gguf_vocab._spm_adds_space_prefix(data) is prefix


def test_unknown_pre_tokenizer_is_refused():
    pre = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\p{N}{1,5}"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}
    with pytest.raises(SolarError, match="cannot match") as err:
        gguf_vocab._pre_tokenizer_name({"pre_tokenizer": pre}, "x")
    assert "\n" not in str(err.value)


# ---- the real model: SmolLM2-135M-Instruct from its GGUF, exported again -----------------

# Keys that legitimately differ from the original file when it is re-exported:
#   general.file_type  the encoding we chose (original Q4_1 = 3; ours MOSTLY_Q8_0 = 7).
# Everything else, general.* provenance included, is carried over with the same GGUF types.
SMOL_CHANGED = {"general.file_type"}
SMOL_TOKENIZER = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                  "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                  "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                  "tokenizer.chat_template", "tokenizer.ggml.model",
                  "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix")


@pytest.fixture(scope="module")
def smol():
    return GGUFSource(smollm2_gguf())


def _fields(reader) -> dict:
    return {k: (tuple(f.types), gguf_vocab.raw_field_value(f)) for k, f in reader.fields.items()
            if not k.startswith("GGUF.")}


@pytest.mark.slow
def test_smollm2_export_matches_original(tmp_path, smol):
    out = tmp_path / "smol.gguf"
    write_gguf(smol, out, quant="q8_0")
    orig, ours = _fields(smol._reader), _fields(gguf.GGUFReader(out))
    assert set(orig) == set(ours)
    for key in sorted(set(orig) - SMOL_CHANGED):
        assert ours[key] == orig[key], key
    assert ours["general.file_type"][1] == gguf.LlamaFileType.MOSTLY_Q8_0
    # tensors: same names and shapes; 1-D stay F32, 2-D are Q8_0
    o = {t.name: (t.shape.tolist(), t.tensor_type) for t in smol._reader.tensors}
    n = {t.name: (t.shape.tolist(), t.tensor_type) for t in gguf.GGUFReader(out).tensors}
    assert {k: v[0] for k, v in o.items()} == {k: v[0] for k, v in n.items()}
    assert all(t == (Q.F32 if len(s) == 1 else Q.Q8_0) for s, t in n.values())


@pytest.mark.slow
def test_smollm2_tokenizer_through_hf_files(tmp_path, smol):
    """The HF tokenizer files the import writes (what a checkpoint converted from this GGUF
    carries) give back the original tokenizer entries."""
    smol.copy_extras(tmp_path)
    ours = gguf_vocab.from_hf_dir(tmp_path, smol.config)
    for key in SMOL_TOKENIZER:
        field = smol._reader.fields[key]
        assert ours[key].type == field.types[0], key
        value = ours[key].value
        want = field.contents()
        assert value == want, key
    # The import rebuilds tokenizer.json with a plain ByteLevel pre-tokenizer (transformers'
    # GGUF converter drops SmolLM's individual-digit split), so from those files the
    # pre-tokenizer reads as GPT-2's; copied straight from the GGUF it stays "smollm".
    assert smol._reader.fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert ours["tokenizer.ggml.pre"].value == "gpt-2"


# ---- bad input: one line on stderr, exit 2, nothing written ----------------------------


def _no_leftovers(folder: Path, name: str) -> None:
    assert not list(folder.glob(f".{name}*")), list(folder.iterdir())


def _fails(capsys, argv, message) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    return err


def test_unknown_quant_type(tmp_path, capsys, tiny):
    _fails(capsys, ["convert", str(tiny), str(tmp_path / "o.gguf"), "--to", "gguf",
                    "--quant", "q3_k"], "unknown GGUF quant type 'q3_k'")
    assert not (tmp_path / "o.gguf").exists()
    _no_leftovers(tmp_path, "o.gguf")


def test_source_without_tokenizer(tmp_path, capsys):
    make_hf_model(tmp_path / "hf")
    out = tmp_path / "o.gguf"
    _fails(capsys, ["convert", str(tmp_path / "hf"), str(out), "--to", "gguf"], "--no-tokenizer")
    assert not out.exists()
    _no_leftovers(tmp_path, "o.gguf")
    assert main(["convert", str(tmp_path / "hf"), str(out), "--to", "gguf", "--no-tokenizer"]) == 0
    fields = gguf.GGUFReader(out).fields
    assert fields["tokenizer.ggml.model"].contents() == "none"
    assert not any(k.startswith("tokenizer.ggml.tokens") for k in fields)


def test_existing_destination_needs_overwrite(tmp_path, capsys, tiny):
    out = tmp_path / "o.gguf"
    out.write_text("mine")
    _fails(capsys, ["convert", str(tiny), str(out), "--to", "gguf"], "--overwrite")
    assert out.read_text() == "mine"
    assert main(["convert", str(tiny), str(out), "--to", "gguf", "--overwrite"]) == 0
    assert isinstance(open_source(out), GGUFSource)
    _no_leftovers(tmp_path, "o.gguf")


def test_failure_midway_keeps_old_destination(tmp_path, capsys):
    """A weight f16 cannot hold is found while writing data: the half-written file goes,
    the previous DST stays."""
    from safetensors.numpy import save_file
    make_hf_model(tmp_path / "hf", vocab_size=VOCAB)
    write_bpe_tokenizer(tmp_path / "hf")
    out = _export(tmp_path / "hf", tmp_path / "o.gguf")
    before = out.read_bytes()
    st = SafetensorsFile(tmp_path / "hf" / "model.safetensors")
    tensors = {n: st.read(n) for n in st.names()}
    tensors["model.layers.2.mlp.down_proj.weight"][0, 0] = 1e6
    save_file(tensors, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    _fails(capsys, ["convert", str(tmp_path / "hf"), str(out), "--to", "gguf", "--overwrite"],
           "beyond float16's range")
    assert out.read_bytes() == before
    _no_leftovers(tmp_path, "o.gguf")
    assert main(["convert", str(tmp_path / "hf"), str(out), "--to", "gguf", "--overwrite",
                 "--quant", "bf16"]) == 0


@pytest.mark.parametrize("dst,argv,message", [
    ("o.gguf", ["--to", "gguf", "--dtype", "bf16"], "--quant"),
    ("o", ["--quant", "q8_0"], "apply to --to gguf only"),
    ("o", ["--no-tokenizer", "--to", "hf"], "apply to --to gguf only"),
    ("o.gguf", [], "pass --to gguf"),
])
def test_option_mismatch(tmp_path, capsys, tiny, dst, argv, message):
    _fails(capsys, ["convert", str(tiny), str(tmp_path / dst), *argv], message)
    assert not (tmp_path / dst).exists()


def test_gguf_output_needs_gguf_suffix(tmp_path, capsys, tiny):
    _fails(capsys, ["convert", str(tiny), str(tmp_path / "out"), "--to", "gguf"], ".gguf")
    assert not (tmp_path / "out").exists()


def test_save_model_as_gguf(tmp_path, tiny):
    model = solar_jax.load_model(tiny)
    out = solar_jax.save_model(model, tmp_path / "m.gguf", format="gguf", quant="f32")
    np.testing.assert_array_equal(_logits(out), _logits(tiny))
    assert gguf.GGUFReader(out).fields["tokenizer.ggml.model"].contents() == "gpt2"
