"""The pretraining data pipeline: packing against a plain-Python reference, determinism,
per-process shards and iterator state across process counts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_helpers import KEYS, build, doc_ids, random_corpus, word_tokenizer
from solar_jax.data import PretrainDataset
from solar_jax.errors import SolarError


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


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
