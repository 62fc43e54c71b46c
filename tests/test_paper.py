"""The paper's ablation at CPU scale: the instruction builder, the held-out math split, and
configs/paper/ (every config validates, every dataset builds with SmolLM2's tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from solar_jax.cli import main
from solar_jax.data.chat import record_messages
from solar_jax.data.synth_instruct import build_instruct_data, parse_speeches
from solar_jax.data.synth_math import build_math_data
from solar_jax.errors import SolarError

from conftest import DATA, ROOT  # noqa: E402

PAPER = ROOT / "configs" / "paper"
TEXT = DATA / "tinyshakespeare.txt"


def read_jsonl(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def instruct(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper") / "paper_out" / "data" / "instruct"
    counts = build_instruct_data(TEXT, out, seed=0)
    return out, counts


def test_instruction_builder_formats_heldout_and_determinism(instruct, tmp_path):
    out, counts = instruct
    assert counts["alpaca.jsonl"] > 1000 and counts["alpaca_eval.jsonl"] > 10
    text = TEXT.read_text()
    heldout = (out / "heldout.txt").read_text()
    assert text.endswith(heldout) and 5000 < len(heldout) <= 6000
    assert heldout.split("\n")[0].endswith(":")  # cut at a speech boundary
    training_text = text[:-len(heldout)]
    for fmt in ("alpaca", "openorca"):
        for where, rows in (("train", read_jsonl(out / f"{fmt}.jsonl")[:50]),
                            ("eval", read_jsonl(out / f"{fmt}_eval.jsonl"))):
            for i, row in enumerate(rows):
                messages = record_messages(f"{fmt}:{i}", row, fmt)
                assert messages[-1]["role"] == "assistant" and messages[-1]["content"].strip()
    for row in read_jsonl(out / "alpaca_eval.jsonl"):
        # a held-out record's lines come from the tail, and are not in the training part
        assert row["output"].split("\n")[0] in heldout
    for row in read_jsonl(out / "alpaca.jsonl")[:200]:
        assert row["output"].split("\n")[0] in training_text
        prompt_lines = row["input"].split("\n")
        assert len(prompt_lines) <= 5 and prompt_lines[0].endswith(":")
    pairs = read_jsonl(out / "preference.jsonl")
    assert all(p["chosen"] != p["rejected"] and p["rejected"].strip() for p in pairs)
    again = build_instruct_data(TEXT, tmp_path / "again", seed=0)
    assert again == counts
    assert (tmp_path / "again" / "alpaca.jsonl").read_text() == (out / "alpaca.jsonl").read_text()
    other = build_instruct_data(TEXT, tmp_path / "other", seed=1)
    assert (tmp_path / "other" / "alpaca.jsonl").read_text() != (out / "alpaca.jsonl").read_text()
    assert other["openorca.jsonl"] == counts["openorca.jsonl"]
    with pytest.raises(SolarError, match="already holds instruction data; pass --overwrite"):
        build_instruct_data(TEXT, out)


def test_speech_parsing():
    speeches = parse_speeches("First Citizen:\nBefore we proceed.\nHear me.\n\nAll:\nSpeak.\n\n"
                              "not a speech\n\nMENENIUS:\n")
    assert speeches == [("First Citizen", ["Before we proceed.", "Hear me."]), ("All", ["Speak."])]


def test_build_instruct_command_defaults_to_the_shipped_text(tmp_path, capsys):
    assert main(["build-instruct", str(tmp_path / "d"), "--heldout-chars", "3000"]) == 0
    assert "alpaca.jsonl" in capsys.readouterr().out
    assert len((tmp_path / "d" / "heldout.txt").read_text()) <= 3000
    assert main(["build-instruct", str(tmp_path / "nope.txt"), str(tmp_path / "e")]) == 2
    assert "error: text file" in capsys.readouterr().err


def test_build_math_heldout_is_the_tail_and_never_trained_on(tmp_path):
    counts = build_math_data(DATA / "gsm8k_train.jsonl", tmp_path, limit=50, heldout=24)
    assert counts["sft"] == 50 and counts["heldout"] == 24
    lines = [json.loads(x) for x in (DATA / "gsm8k_train.jsonl").read_text().splitlines()]
    held = read_jsonl(tmp_path / "heldout.jsonl")
    assert [h["question"] for h in held] == [x["question"] for x in lines[-24:]]
    trained = {r["question"] for r in read_jsonl(tmp_path / "sft.jsonl")}
    assert not trained & {h["question"] for h in held}
    with pytest.raises(SolarError, match="leaves none"):
        build_math_data(DATA / "gsm8k_train.jsonl", tmp_path / "x", heldout=10**6)


@pytest.mark.slow
def test_paper_configs_validate_and_their_data_builds(instruct, smol_dir, monkeypatch):
    """Every configs/paper/ run config validates (its eval files exist) and every dataset it
    names builds with SmolLM2's tokenizer at its seq_len: no record is too long."""
    from solar_jax.data.builders import build_dataset_for
    from solar_jax.tokenizer import load_tokenizer
    from solar_jax.train import load_train_config
    from solar_jax.train.eval_config import eval_data_config

    import shutil
    out, _ = instruct
    root = out.parent.parent.parent  # the directory holding paper_out/, as the repo root does
    build_math_data(DATA / "gsm8k_train.jsonl", root / "paper_out" / "data" / "math",
                    limit=256, heldout=24)
    # The run configs' paths are relative to the config file (../../paper_out): a copy of
    # configs/paper/ under `root` reads `root`'s paper_out/, from any working directory.
    paper = root / "configs" / "paper"
    if not paper.exists():
        shutil.copytree(PAPER, paper)
    monkeypatch.chdir(root.parent)
    tok = load_tokenizer(smol_dir)
    names = sorted(p.stem for p in paper.glob("*.yaml") if not p.stem.startswith("merge"))
    assert names == ["dpo_v1", "dpo_v2", "sft_v1", "sft_v3", "sft_v4"]
    for name in names:
        cfg = load_train_config(paper / f"{name}.yaml")
        assert cfg.run_dir == str(root / "paper_out" / "runs" / name)
        assert {t.task for t in cfg.eval_tasks} == {"gsm8k", "perplexity"}
        for data in (cfg.data, eval_data_config(cfg)):
            ds = build_dataset_for(cfg.objective, data, tok, seq_len=cfg.seq_len,
                                   global_batch_size=cfg.batch_size, seed=cfg.seed)
            assert ds.num_rows >= cfg.batch_size // 2, name
    for name, sources in (("sft_v3", ["alpaca", "openorca", "math"]),
                          ("sft_v4", ["alpaca", "math"]), ("dpo_v2", ["general", "math"])):
        assert [s.name for s in load_train_config(paper / f"{name}.yaml").data.sources] == sources
    run = (PAPER / "run.sh").read_text()
    for name in [*names, "merge_sft", "merge_dpo"]:
        assert f"configs/paper/{name}.yaml" in run or f"configs/paper/$run.yaml" in run
    assert "paper:" in (ROOT / "Makefile").read_text()
    # eval may not write inside the model it reads: the merges' results go to evals/<name>/
    for line in run.splitlines():
        if line.lstrip().startswith("$SJ eval") and "--out" in line:
            assert "$OUT/evals/" in line, line
    assert "--eval-dir $OUT/evals" in run
