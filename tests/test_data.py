"""The pretraining data pipeline: packing against a plain-Python reference, determinism,
per-process shards, iterator state across process counts, sources, cache and errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from solar_jax.data import (
    DataConfig,
    PretrainDataset,
    TokenStream,
    build_pretrain_dataset,
)
from solar_jax.errors import SolarError

from conftest import DATA  # noqa: E402
WORDS = ["[PAD]", "<s>", "</s>"] + [f"w{i}" for i in range(40)]
KEYS = ("input_ids", "targets", "loss_weights", "segment_ids", "positions")


def word_tokenizer(bos: bool = True) -> PreTrainedTokenizerFast:
    """w0 -> 3, w1 -> 4, ...; BOS <s> = 1, EOS </s> = 2."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[PAD]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = {"bos_token": "<s>"} if bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="[PAD]",
                                   **specials)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte (byte-level BPE without merges): any text, tiny and fast."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"[PAD]": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(alphabet)}}
    tok = Tokenizer(models.BPE(vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="[PAD]")


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


def random_corpus(tmp_path: Path, n_docs: int = 60, max_words: int = 30, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    docs = [" ".join(f"w{w}" for w in rng.integers(0, 40, rng.integers(1, max_words)))
            for _ in range(n_docs)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs) + "\n")
    return path


def build(path, tok, seq_len=8, batch=4, seed=0, **cfg):
    shard = {k: cfg.pop(k) for k in ("process_index", "process_count") if k in cfg}
    return build_pretrain_dataset(DataConfig(path=str(path), **cfg), tok, seq_len=seq_len,
                                  global_batch_size=batch, seed=seed, **shard)


# -- a direct Python reference ---------------------------------------------------------------
def reference_rows(docs: list[list[int]], seq_len: int, policy: str) -> list[dict]:
    """Pack token lists in order, one token at a time, the obvious way."""
    pieces, fill, rows = [], 0, []  # piece = (doc, offset, length)
    for d, doc in enumerate(docs):
        off = 0
        while off < len(doc):
            room = seq_len - fill
            take = min(seq_len, len(doc) - off) if policy == "greedy" else min(room, len(doc) - off)
            if take > room:
                rows.append(pieces)
                pieces, fill = [], 0
            pieces.append((d, off, take))
            fill, off = fill + take, off + take
            if fill == seq_len:
                rows.append(pieces)
                pieces, fill = [], 0
    if pieces:
        rows.append(pieces)
    out = []
    for pieces in rows:
        row = {k: [0] * seq_len for k in KEYS}
        i = 0
        for seg, (d, off, n) in enumerate(pieces, start=1):
            doc = docs[d]
            for j in range(n):
                row["input_ids"][i] = doc[off + j]
                has_next = off + j + 1 < len(doc)
                row["targets"][i] = doc[off + j + 1] if has_next else 0
                row["loss_weights"][i] = float(has_next)
                row["segment_ids"][i], row["positions"][i] = seg, j
                i += 1
        out.append(row)
    return out


def epoch_rows(ds: PretrainDataset) -> list[dict]:
    steps = ds.num_rows // ds.global_batch_size + 1
    batches = [ds.batch(s) for s in range(steps)]
    return [{k: b[k][i].tolist() for k in KEYS} for b in batches
            for i in range(len(b["input_ids"]))][:ds.num_rows]


def doc_ids(tok, text_docs: list[str]) -> list[list[int]]:
    return [[tok.bos_token_id] + tok.encode(t, add_special_tokens=False) + [tok.eos_token_id]
            for t in text_docs]


# -- packing ---------------------------------------------------------------------------------
def test_handcrafted_rows_exact(tmp_path, tok):
    path = tmp_path / "a.txt"
    path.write_text("w1 w2 w3\n\nw4 w5\nw6\n\n\nw7 w8 w9 w10 w11 w12 w13\n")
    ds = build(path, tok, seq_len=6, batch=2, shuffle=False)
    assert (ds.num_rows, ds.num_documents, ds.num_tokens) == (4, 3, 19)
    b0, b1 = ds.batch(0), ds.batch(1)
    assert b0["input_ids"].tolist() == [[1, 4, 5, 6, 2, 0], [1, 7, 8, 9, 2, 0]]
    assert b0["targets"].tolist() == [[4, 5, 6, 2, 0, 0], [7, 8, 9, 2, 0, 0]]
    assert b0["loss_weights"].tolist() == [[1, 1, 1, 1, 0, 0]] * 2
    assert b0["segment_ids"].tolist() == [[1, 1, 1, 1, 1, 0]] * 2
    assert b0["positions"].tolist() == [[0, 1, 2, 3, 4, 0]] * 2
    # A 9-token document: one full chunk, then its tail. The chunk's last token still
    # predicts the document's next token (it is in the same document).
    assert b1["input_ids"].tolist() == [[1, 10, 11, 12, 13, 14], [15, 16, 2, 0, 0, 0]]
    assert b1["targets"].tolist() == [[10, 11, 12, 13, 14, 15], [16, 2, 0, 0, 0, 0]]
    assert b1["loss_weights"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]]
    assert b1["positions"].tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 0, 0]]
    for k, dtype in zip(KEYS, ("int32", "int32", "float32", "int32", "int32")):
        assert b0[k].dtype == dtype and b0[k].shape == (2, 6)

    concat = build(path, tok, seq_len=6, batch=2, shuffle=False, packing="concat")
    c0 = concat.batch(0)
    assert c0["input_ids"].tolist() == [[1, 4, 5, 6, 2, 1], [7, 8, 9, 2, 1, 10]]
    assert c0["segment_ids"].tolist() == [[1, 1, 1, 1, 1, 2], [1, 1, 1, 1, 2, 2]]
    assert c0["positions"].tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 2, 3, 0, 1]]
    assert c0["targets"].tolist() == [[4, 5, 6, 2, 0, 7], [8, 9, 2, 0, 10, 11]]
    assert c0["loss_weights"].tolist() == [[1, 1, 1, 1, 0, 1], [1, 1, 1, 0, 1, 1]]


@pytest.mark.parametrize("policy", ["greedy", "concat"])
@pytest.mark.parametrize("seq_len", [5, 16, 64])
def test_packing_matches_reference(tmp_path, tok, policy, seq_len):
    path = random_corpus(tmp_path)
    ds = build(path, tok, seq_len=seq_len, batch=3, shuffle=False, packing=policy)
    texts = path.read_text().strip().split("\n\n")
    assert epoch_rows(ds) == reference_rows(doc_ids(tok, texts), seq_len, policy)


def test_shuffled_epoch_is_a_permutation_of_packed_documents(tmp_path, tok):
    path = random_corpus(tmp_path)
    ds = build(path, tok, seq_len=16, batch=4, seed=3)
    rows = epoch_rows(ds)
    assert len({json.dumps(r) for r in rows}) == len(rows)  # no row twice in one epoch
    tokens = np.concatenate([np.array(r["input_ids"])[np.array(r["segment_ids"]) > 0]
                             for r in rows])
    assert sorted(tokens.tolist()) == sorted(np.asarray(ds.stream.tokens).tolist())
    for r in rows:  # structural invariants on every row
        seg, pos, ids, tgt, w = (np.array(r[k]) for k in KEYS[3:] + KEYS[:3])
        assert np.all(np.diff(seg[seg > 0]) >= 0) and np.all(seg[len(seg[seg > 0]):] == 0)
        starts = np.flatnonzero(np.diff(np.concatenate([[0], seg])) != 0)
        assert np.all(pos[starts[seg[starts] > 0]] == 0)
        same = (seg[:-1] == seg[1:]) & (seg[:-1] > 0)
        assert np.all(tgt[:-1][same] == ids[1:][same]) and np.all(w[:-1][same] == 1)
        assert np.all(w[seg == 0] == 0)
        assert np.all(w[ids == tok.eos_token_id] == 0)  # the last token of each document


# -- determinism, sharding, state ------------------------------------------------------------
def test_same_seed_same_batches_other_seed_other_order(tmp_path, tok):
    path = random_corpus(tmp_path)
    a, b, c = build(path, tok, seed=1), build(path, tok, seed=1), build(path, tok, seed=2)
    steps = range(2 * a.num_rows // 4 + 3)  # past two epoch boundaries
    differs = False
    for s in steps:
        batch_a, batch_b = a.batch(s), b.batch(s)
        for k in KEYS:
            np.testing.assert_array_equal(batch_a[k], batch_b[k])
        differs |= not np.array_equal(batch_a["input_ids"], c.batch(s)["input_ids"])
    assert differs
    # Each epoch is a fresh shuffle of the same rows.
    ds = build(path, tok, seq_len=16, batch=1, seed=1)
    n = ds.num_rows
    first = [ds.batch(s)["input_ids"][0].tolist() for s in range(n)]
    second = [ds.batch(s)["input_ids"][0].tolist() for s in range(n, 2 * n)]
    assert first != second and sorted(first) == sorted(second)


@pytest.mark.parametrize("count", [2, 4])
def test_process_shards_concatenate_to_global_batch(tmp_path, tok, count):
    path = random_corpus(tmp_path)
    whole = build(path, tok, batch=8)
    shards = [build(path, tok, batch=8, process_index=p, process_count=count)
              for p in range(count)]
    for s in (0, 1, 7, whole.num_rows // 8 + 2):
        got = [sh.batch(s) for sh in shards]
        for k in KEYS:
            assert got[0][k].shape[0] == 8 // count
            np.testing.assert_array_equal(np.concatenate([g[k] for g in got]), whole.batch(s)[k])


def test_state_restores_across_process_counts_and_batch_sizes(tmp_path, tok):
    path = random_corpus(tmp_path)
    saved = build(path, tok, batch=8, process_index=1, process_count=2)
    state = json.loads(json.dumps(saved.state(5)))
    whole = build(path, tok, batch=8)
    assert whole.restore(state) == 5
    four = [build(path, tok, batch=8, process_index=p, process_count=4) for p in range(4)]
    for s in range(5, 9):
        expect = whole.batch(s)["input_ids"]
        step = four[0].restore(state) + (s - 5)
        np.testing.assert_array_equal(
            np.concatenate([sh.batch(step)["input_ids"] for sh in four]), expect)
    # 40 rows consumed: a global batch of 4 resumes at step 10, 16 cannot resume exactly.
    half = build(path, tok, batch=4)
    assert half.restore(state) == 10
    np.testing.assert_array_equal(half.batch(10)["input_ids"], whole.batch(5)["input_ids"][:4])
    with pytest.raises(SolarError, match="not a multiple"):
        build(path, tok, batch=16).restore(state)
    with pytest.raises(SolarError, match="seed"):
        build(path, tok, batch=8, seed=9).restore(state)
    assert build(path, tok, batch=8, seed=9).restore(state, strict=False) == 5


def test_iterator_reads_batches_in_order(tmp_path, tok):
    ds = build(random_corpus(tmp_path), tok)
    it = ds.iterator(3)
    for s in range(3, 7):
        np.testing.assert_array_equal(next(it)["input_ids"], ds.batch(s)["input_ids"])


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


# -- the real corpus -------------------------------------------------------------------------
SHAKESPEARE = DATA / "tinyshakespeare.txt"


def test_tinyshakespeare_bytes_round_trip():
    tok = byte_tokenizer()
    ds = build(SHAKESPEARE, tok, seq_len=256, batch=16, seed=0)
    paragraphs = [p for p in SHAKESPEARE.read_text().split("\n\n") if p.strip()]
    assert ds.num_documents == len(paragraphs) == 7222
    # Every paragraph's bytes plus BOS and EOS, once per epoch.
    assert ds.num_tokens == sum(len(p.strip("\n").encode()) + 2 for p in paragraphs)
    text = SHAKESPEARE.read_text()
    batch = ds.batch(0)
    whole_docs = 0
    for ids, seg in zip(batch["input_ids"], batch["segment_ids"]):
        for k in range(1, seg.max() + 1):  # a segment from BOS to EOS is a whole paragraph
            piece = ids[seg == k].tolist()
            if piece[0] == tok.bos_token_id and piece[-1] == tok.eos_token_id:
                assert tok.decode(piece[1:-1]) in text
                whole_docs += 1
    assert whole_docs > 16
    filled = sum((ds.batch(s)["segment_ids"] > 0).sum() for s in range(ds.num_rows // 16))
    assert filled / (ds.num_rows // 16 * 16 * 256) > 0.8  # greedy packing wastes little


@pytest.mark.slow
def test_tinyshakespeare_smollm2_tokenizer():
    from solar_jax.demo import smollm2_gguf
    from solar_jax.tokenizer import load_tokenizer
    try:
        tok = load_tokenizer(smollm2_gguf())
    except SolarError as e:
        pytest.skip(str(e))
    ds = build(SHAKESPEARE, tok, seq_len=256, batch=8, seed=0, process_index=1, process_count=2)
    batch = ds.batch(3)
    assert batch["input_ids"].shape == (4, 256)
    assert 300_000 < ds.num_tokens < 400_000 and ds.num_documents == 7222
    first = batch["input_ids"][0][batch["segment_ids"][0] == 1]
    assert first[0] == tok.bos_token_id
    assert tok.decode(first[1:8].tolist()).strip() in SHAKESPEARE.read_text()


def test_demo_heldout_split_is_disjoint_and_complete(tmp_path):
    """The demo pretrains on tinyshakespeare minus a tail and scores perplexity on the tail;
    its GSM8K eval problems come from the end of the file, the SFT/DPO builder's from the
    start."""
    import json as _json

    from solar_jax import demo
    paths = demo.split_data(tmp_path)
    full = DATA.joinpath("tinyshakespeare.txt").read_text(encoding="utf-8")
    train = paths["train_text"].read_text(encoding="utf-8")
    heldout = paths["heldout_text"].read_text(encoding="utf-8")
    assert train + heldout == full and len(heldout) == demo.HELDOUT_CHARS
    problems = [_json.loads(x) for x in paths["heldout_gsm8k"].read_text().splitlines()]
    assert len(problems) >= demo.GSM8K_HELDOUT + demo.GSM8K_SHOTS
    first = [_json.loads(x) for x in
             DATA.joinpath("gsm8k_train.jsonl").read_text().splitlines()[:64]]
    assert not {p["question"] for p in problems} & {p["question"] for p in first}


def test_demo_data_is_package_data_found_through_the_package(tmp_path, monkeypatch):
    """The demo reads its data through solar_jax.resources, never the repository layout; a
    broken install (the data missing) is a one-line error naming the file."""
    from solar_jax import demo, resources
    from solar_jax.errors import SolarError
    assert resources.data_file("tinyshakespeare.txt") == DATA / "tinyshakespeare.txt"
    monkeypatch.setattr(resources, "_root", lambda: tmp_path / "missing")
    with pytest.raises(SolarError, match="tinyshakespeare.txt is missing"):
        demo.split_data(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SolarError, match="no shipped data file 'x.txt'"):
        resources.data_file("x.txt")


def test_demo_stage_starts_over_in_a_stale_run_dir(tmp_path, monkeypatch):
    """A second `make demo` (after the data or code changed) must not resume the first
    demo's runs: each training stage clears its run_dir first."""
    import solar_jax.train
    from solar_jax import demo

    stale = tmp_path / "runs" / "pretrain"
    (stale / "checkpoints").mkdir(parents=True)
    (stale / "checkpoints" / "from_an_older_demo").write_text("x")

    def fake_train(cfg):
        assert not (Path(cfg.run_dir) / "checkpoints").exists()
        Path(cfg.run_dir).mkdir(parents=True)
        (Path(cfg.run_dir) / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')

    monkeypatch.setattr(solar_jax.train, "train", fake_train)
    records = demo._train("pretrain.yaml", tmp_path, run_dir=stale, model=tmp_path,
                          data__path=tmp_path / "text.txt")
    assert records == [{"step": 1, "loss": 1.0}]
