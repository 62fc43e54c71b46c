"""The real corpora: tinyshakespeare through the byte and SmolLM2 tokenizers, and the demo's
data (its held-out split, its package data, a fresh start per stage)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import DATA
from data_helpers import build, byte_tokenizer
from solar_jax.errors import SolarError


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
