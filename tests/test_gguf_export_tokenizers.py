"""GGUF export of tokenizers: BPE and SentencePiece vocabularies in llama.cpp's metadata,
pre-tokenizer names and styles, and a pre-tokenizer llama.cpp would not know refused."""

from __future__ import annotations

import json

import pytest

gguf = pytest.importorskip("gguf")

from conftest import DATA, make_hf_model  # noqa: E402
from gguf_helpers import VOCAB, export, tiny, write_spm_tokenizer  # noqa: E402, F401
from solar_jax.checkpoint import gguf_vocab  # noqa: E402
from solar_jax.checkpoint.gguf_source import GGUFSource  # noqa: E402
from solar_jax.errors import SolarError  # noqa: E402


# ---- tokenizers -----------------------------------------------------------------------


def test_bpe_tokenizer_metadata(tmp_path, tiny):
    reader = gguf.GGUFReader(export(tiny, tmp_path / "t.gguf"))
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
    out = export(tmp_path / "hf", tmp_path / "spm.gguf", "--quant", "q8_0")
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
