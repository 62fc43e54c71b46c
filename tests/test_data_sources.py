"""Pretraining data sources (text, jsonl, parquet, directories), loss masks, tokenizer
options, the token cache, and bad input as one-line errors."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from data_helpers import build, doc_ids, random_corpus, word_tokenizer
from solar_jax.data import DataConfig, PretrainDataset, TokenStream, build_pretrain_dataset
from solar_jax.errors import SolarError


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


# -- sources ---------------------------------------------------------------------------------
TEXTS = ["w1 w2", "w3", "w4 w5 w6"]


def test_sources_text_jsonl_parquet_agree(tmp_path, tok):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    (tmp_path / "a.txt").write_text("\n\n".join(TEXTS) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(TEXTS) + "\n")
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"body": t, "id": i})
                                                for i, t in enumerate(TEXTS)) + "\n\n")
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps({"body": t}) for t in TEXTS))
    pq.write_table(pa.table({"body": TEXTS, "n": [1, 2, 3]}), tmp_path / "e.parquet")
    expect = [t for ids in doc_ids(tok, TEXTS) for t in ids]
    for cfg in ({"path": str(tmp_path / "a.txt")},
                {"path": str(tmp_path / "b.txt"), "text_split": "line"},
                {"path": str(tmp_path / "c.jsonl"), "format": "jsonl", "field": "body"},
                {"path": str(tmp_path / "d.jsonl.gz"), "format": "jsonl", "field": "body"},
                {"path": str(tmp_path / "e.parquet"), "format": "parquet", "field": "body"}):
        ds = build_pretrain_dataset(DataConfig(**cfg), tok, seq_len=4, global_batch_size=1, seed=0)
        assert np.asarray(ds.stream.tokens).tolist() == expect, cfg
    whole = build(tmp_path / "a.txt", tok, seq_len=4, batch=1, text_split="file")
    assert whole.num_documents == 1
    # Globs, directories and lists expand in sorted order; a listed file counts each time.
    for path in (str(tmp_path / "*.txt"), [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]):
        ds = build_pretrain_dataset(DataConfig(path=path), tok, seq_len=4, global_batch_size=1,
                                    seed=0)
        assert ds.num_documents == 4  # a.txt: 3 paragraphs; b.txt: one (no blank lines)


def test_directory_skips_marker_files(tmp_path, tok):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("w1 w2\n")
    (tmp_path / "d" / "sub" / "a.txt").write_text("w3 w4\n")
    (tmp_path / "d" / "_SUCCESS").write_text("")
    (tmp_path / "d" / ".hidden").write_text("w9\n")
    ds = build(tmp_path / "d", tok, seq_len=4, batch=1)
    assert np.asarray(ds.stream.tokens).tolist() == [1, 4, 5, 2, 1, 6, 7, 2]  # b.txt, sub/a.txt


def test_target_mask_zeroes_loss_weights():
    """The hook SFT uses: a token stream whose prompt tokens are not targets."""
    stream = TokenStream(np.array([1, 5, 6, 7, 2], np.int32), np.array([0, 5]),
                         target_mask=np.array([0, 0, 0, 1, 1], bool))
    ds = PretrainDataset(stream, seq_len=6, global_batch_size=1, seed=0, shuffle=False)
    assert ds.batch(0)["loss_weights"].tolist() == [[0, 0, 1, 1, 0, 0]]
    assert ds.batch(0)["targets"].tolist()[0][:4] == [5, 6, 7, 2]


def test_tokenizer_without_bos_and_options(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("w1 w2\n\n\nw3\n")
    ds = build(path, word_tokenizer(bos=False), seq_len=4, batch=1, shuffle=False)
    assert np.asarray(ds.stream.tokens).tolist() == [4, 5, 2, 6, 2]
    ds = build(path, word_tokenizer(), seq_len=2, batch=1, shuffle=False, add_bos=False,
               add_eos=False)
    assert np.asarray(ds.stream.tokens).tolist() == [4, 5, 6]


def test_cache_is_reused_and_invalidated(tmp_path, tok):
    path = random_corpus(tmp_path)
    cache = tmp_path / "cache"
    first = build(path, tok, cache_dir=str(cache))
    second = build(path, tok, cache_dir=str(cache))
    assert isinstance(second.stream.tokens, np.memmap)
    assert len(list(cache.glob("tokens-*.bin"))) == 1
    for s in range(3):
        np.testing.assert_array_equal(first.batch(s)["input_ids"], second.batch(s)["input_ids"])
    assert first.fingerprint == second.fingerprint
    path.write_text("w1 w2\n\nw3 w4 w5 w6 w7 w8 w9\n")  # new size and mtime: a new key
    third = build(path, tok, cache_dir=str(cache))
    assert third.num_documents == 2 and len(list(cache.glob("tokens-*.bin"))) == 2


# -- errors ----------------------------------------------------------------------------------
def _error(fn) -> str:
    with pytest.raises(SolarError) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_errors_are_one_line_and_name_the_problem(tmp_path, tok):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    good = random_corpus(tmp_path)
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    (tmp_path / "small.txt").write_text("w1 w2\n")
    (tmp_path / "nofield.jsonl").write_text('{"text": "w1"}\n{"body": "w2"}\n')
    (tmp_path / "bad.jsonl").write_text('{"text": "w1"}\n\n{"text": \n')
    (tmp_path / "num.jsonl").write_text('{"text": 3}\n')
    pq.write_table(pa.table({"body": ["w1"]}), tmp_path / "x.parquet")
    f = lambda path, **kw: lambda: build(path, tok, **kw)

    assert "does not exist" in _error(f(tmp_path / "missing.txt"))
    assert "matches no files" in _error(f(tmp_path / "*.nothing"))
    assert "not set" in _error(lambda: build_pretrain_dataset(
        DataConfig(), tok, seq_len=4, global_batch_size=1, seed=0))
    assert "no tokens" in _error(f(tmp_path / "empty.txt"))
    assert "fewer than one row" in _error(f(tmp_path / "small.txt", seq_len=64))
    assert "unknown data.format 'csv'" in _error(lambda: DataConfig(path=str(good), format="csv"))
    msg = _error(f(tmp_path / "nofield.jsonl", format="jsonl"))
    assert "nofield.jsonl:2" in msg and "no field 'text'" in msg
    msg = _error(f(tmp_path / "bad.jsonl", format="jsonl"))
    assert "bad.jsonl:3" in msg and "malformed JSON" in msg
    assert "expected a string" in _error(f(tmp_path / "num.jsonl", format="jsonl"))
    msg = _error(f(tmp_path / "x.parquet", format="parquet"))
    assert "x.parquet" in msg and "no column 'text'" in msg
    assert "not divisible by the process count 4" in _error(f(good, batch=6, process_count=4))
    assert "unknown config key(s): data.pth" in _error(lambda: DataConfig.from_dict({"pth": "x"}))
    assert "seq_len" in _error(f(good, seq_len=0))
    assert "process_index" in _error(f(good, process_index=2, process_count=2))
