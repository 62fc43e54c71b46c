"""Weighted dataset mixtures: the schedule, weights landing, formats mixed in one run,
per-process shards, exact resume, re-epoch notes, subsets and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from solar_jax.cli import main
from solar_jax.data import DataConfig
from solar_jax.data.builders import build_dataset_for
from solar_jax.data.mixture import MixtureSchedule, period_counts
from solar_jax.errors import SolarError

from conftest import DATA, write_jsonl  # noqa: E402

TINY = {"vocab_size": 288, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
        "num_heads": 4, "num_kv_heads": 2, "max_position_embeddings": 1024}




@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mix")
    text = (DATA / "tinyshakespeare.txt").read_text()
    gsm = [json.loads(x) for x in (DATA / "gsm8k_train.jsonl").read_text().splitlines()[:40]]
    out = {"text": d / "shakespeare.txt", "questions": d / "questions.jsonl"}
    out["text"].write_text(text[:30_000])
    write_jsonl(out["questions"], [{"text": r["question"]} for r in gsm])
    out["gsm8k"] = write_jsonl(d / "gsm8k.jsonl", gsm[:24])
    out["alpaca"] = write_jsonl(d / "alpaca.jsonl", [
        {"instruction": f"Repeat {i}.", "input": "" if i % 2 else "twice", "output": f"{i} {i}"}
        for i in range(30)])
    out["openorca"] = write_jsonl(d / "openorca.jsonl", [
        {"system_prompt": "Be brief.", "question": f"What is {i} + 1?", "response": str(i + 1)}
        for i in range(20)])
    out["chat"] = write_jsonl(d / "chat.jsonl", [
        {"messages": [{"role": "user", "content": f"Hi {i}"},
                      {"role": "assistant", "content": f"Hello {i}!"}]} for i in range(20)])
    out["pairs"] = write_jsonl(d / "pairs.jsonl", [
        {"prompt": f"{i} + {i}?", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1}"}
        for i in range(12)])
    out["pairs2"] = write_jsonl(d / "pairs2.jsonl", [
        {"prompt": f"{i} * 2?", "chosen": f"{2 * i}", "rejected": f"{i}"} for i in range(6)])
    return out


def mixture(*sources, **shared) -> DataConfig:
    return DataConfig.from_dict({**shared, "mixture": list(sources)})


# ---- the schedule --------------------------------------------------------------------------

@pytest.mark.parametrize("weights", [[0.7, 0.3], [1, 1, 1], [0.5, 0.25, 0.2, 0.05], [3, 1e-3]])
def test_schedule_counts_are_exact_and_every_prefix_within_a_row(weights):
    sched = MixtureSchedule(weights)
    share = np.asarray(weights) / np.sum(weights)
    assert sched.counts.sum() == sched.period and sched.counts.min() >= 1
    np.testing.assert_allclose(sched.counts / sched.period, share, atol=1.0 / sched.period)
    rows = np.arange(3 * sched.period + 17)
    source, position = sched.locate(rows)
    for s in range(len(weights)):
        mine = position[source == s]
        np.testing.assert_array_equal(mine, np.arange(len(mine)))  # each row exactly once
        # smooth: at every prefix, within one row of the period's exact share
        prefix = np.cumsum(source[:sched.period] == s)
        target = np.arange(1, sched.period + 1) * sched.counts[s] / sched.period
        assert np.abs(prefix - target).max() < 1.0 + 1e-9
    j = 2 * sched.period + 5
    np.testing.assert_array_equal(sched.consumed(j),
                                  np.bincount(source[:j], minlength=len(weights)))


def test_period_counts_largest_remainder():
    np.testing.assert_array_equal(period_counts([1, 1, 1], 10), [4, 3, 3])
    np.testing.assert_array_equal(period_counts([0.7, 0.3], 4096), [2867, 1229])


# ---- weights land, shares are the trained tokens -------------------------------------------

def test_200_steps_of_a_70_30_mixture_land_within_3_percent(files, tok):
    # text + jsonl in one pretraining mixture
    cfg = mixture({"path": str(files["text"]), "format": "text", "weight": 0.7},
                  {"path": str(files["questions"]), "format": "jsonl", "weight": 0.3},
                  packing="concat")
    ds = build_dataset_for("lm", cfg, tok, seq_len=64, global_batch_size=8, seed=3)
    assert ds.names == ["shakespeare", "questions"]
    shares = np.array([[s["data/shakespeare/tokens"], s["data/questions/tokens"]]
                       for s in map(ds.token_shares, range(200))])
    np.testing.assert_allclose(shares.sum(1), 1.0)
    np.testing.assert_allclose(shares.mean(0), [0.7, 0.3], atol=0.03)
    rows = np.concatenate([ds.batch(k)["source"] for k in range(200)])
    np.testing.assert_allclose(np.bincount(rows) / len(rows), [0.7, 0.3], atol=1.0 / 200)
    # the reported share is exactly the share of the loss weights that are trained on
    for k in (0, 57, 199):
        batch = ds.batch(k)
        per_source = [batch["loss_weights"][batch["source"] == s].sum() for s in (0, 1)]
        np.testing.assert_allclose(np.array(per_source) / np.sum(per_source),
                                   list(ds.token_shares(k).values()), rtol=1e-6)


def test_formats_mixed_in_one_sft_run_keep_their_masks(files, tok):
    cfg = mixture(*({"path": str(files[f]), "format": f, "weight": 1.0}
                    for f in ("alpaca", "openorca", "gsm8k", "chat")), chat_template="solar")
    ds = build_dataset_for("sft", cfg, tok, seq_len=512, global_batch_size=8, seed=0)
    seen = set()
    for k in range(8):
        batch = ds.batch(k)
        for row in range(8):
            name = ds.names[batch["source"][row]]
            seen.add(name)
            ids, w = batch["input_ids"][row], batch["loss_weights"][row]
            text = tok.decode(ids[ids != 0][:200])
            marker = {"alpaca": "Repeat", "openorca": "Be brief", "gsm8k": "", "chat": "Hi"}[name]
            assert marker in text
            assert 0 < w.sum() < (batch["segment_ids"][row] > 0).sum()  # prompts are masked
    assert seen == {"alpaca", "openorca", "gsm8k", "chat"}


# ---- determinism, processes, resume --------------------------------------------------------

def test_process_shards_concatenate_and_seed_decides(files, tok):
    cfg = mixture({"path": str(files["alpaca"]), "format": "alpaca", "weight": 2},
                  {"path": str(files["gsm8k"]), "format": "gsm8k", "weight": 1})
    kwargs = dict(seq_len=512, global_batch_size=8)
    one = build_dataset_for("sft", cfg, tok, seed=1, **kwargs)
    parts = [build_dataset_for("sft", cfg, tok, seed=1, process_index=p, process_count=4,
                               **kwargs) for p in range(4)]
    for k in (0, 5, 31):
        whole = one.batch(k)
        for key, value in whole.items():
            np.testing.assert_array_equal(np.concatenate([p.batch(k)[key] for p in parts]), value)
    other = build_dataset_for("sft", cfg, tok, seed=2, **kwargs)
    assert not all(np.array_equal(one.batch(k)["input_ids"], other.batch(k)["input_ids"])
                   for k in range(4))
    # state after k steps restores k under another process count; a changed mixture refuses
    assert parts[2].restore(one.state(12)) == 12
    assert one.state(12)["sources"] == {n: int(c) for n, c in
                                        zip(one.names, one.schedule.consumed(96))}
    reweighted = mixture({"path": str(files["alpaca"]), "format": "alpaca", "weight": 1},
                         {"path": str(files["gsm8k"]), "format": "gsm8k", "weight": 1})
    changed = build_dataset_for("sft", reweighted, tok, seed=1, **kwargs)
    with pytest.raises(SolarError, match="changed since the checkpoint"):
        changed.restore(one.state(12))


def test_exhausted_source_re_epochs_with_a_note(files, tok):
    cfg = mixture({"path": str(files["openorca"]), "format": "openorca", "weight": 1, "limit": 5},
                  {"path": str(files["gsm8k"]), "format": "gsm8k", "weight": 1})
    ds = build_dataset_for("sft", cfg, tok, seq_len=512, global_batch_size=4, seed=0)
    small = ds.sources[0]
    notes = {k: ds.notes(k) for k in range(20)}
    noted = [k for k, n in notes.items() if any("'openorca'" in x for x in n)]
    starts = [k for k in range(20)
              if (ds.schedule.consumed(4 * k)[0] - 1) // small.num_rows
              < (ds.schedule.consumed(4 * (k + 1))[0] - 1) // small.num_rows
              and ds.schedule.consumed(4 * (k + 1))[0] > small.num_rows]
    assert noted and noted == starts
    assert "epoch 2 begins at step" in notes[noted[0]][0]
    # every epoch of the small source is a permutation of its rows, reshuffled
    epoch = [ds.sources[0].order[i] for i in range(3 * small.num_rows)]
    first, second = epoch[:small.num_rows], epoch[small.num_rows:2 * small.num_rows]
    assert sorted(first) == sorted(second) == list(range(small.num_rows))


def test_limit_and_fraction_take_the_first_records(files, tok):
    base = {"path": str(files["alpaca"]), "format": "alpaca"}
    full = build_dataset_for("sft", DataConfig(**base, shuffle=False), tok, seq_len=64,
                             global_batch_size=1, seed=0)
    limited = build_dataset_for("sft", DataConfig(**base, limit=7, shuffle=False), tok,
                                seq_len=64, global_batch_size=1, seed=0)
    part = build_dataset_for("sft", DataConfig(**base, fraction=0.25, shuffle=False), tok,
                             seq_len=64, global_batch_size=1, seed=0)
    assert limited.num_documents == 7 and part.num_documents == 8  # ceil(0.25 x 30)
    n = limited.stream.num_tokens
    np.testing.assert_array_equal(limited.stream.tokens, full.stream.tokens[:n])
    assert limited.fingerprint != full.fingerprint


@pytest.mark.parametrize("path, name", [
    ("a/b/alpaca_gpt4.jsonl.gz", "alpaca_gpt4"), ("gs://b/sft/openorca/*.parquet", "openorca"),
    ("data/alpaca_*.jsonl", "alpaca"), ("data/math/", "math"), ("*.txt", "source"),
    ("x/open orca.jsonl", "open_orca")])
def test_default_source_names(path, name):
    from solar_jax.data.mixture_config import default_name
    assert default_name([path]) == name


# ---- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("sources, message", [
    ([{"path": "a.jsonl", "format": "alpaca", "weight": 0}],
     r"data source 'a': weight must be a positive number, got 0"),
    ([{"path": "a.jsonl", "format": "alpaca", "weight": -1, "name": "x"}],
     r"data source 'x': weight must be a positive number"),
    ([{"path": "a.jsonl", "format": "alpaca", "wieght": 1}],
     r"data source 'a': unknown key 'wieght' \(did you mean weight\?\)"),
    ([{"path": "a.jsonl", "format": "alpacca"}], r"data source 'a': unknown data.format"),
    ([{"path": "x/a.jsonl"}, {"path": "y/a.jsonl"}], r"both named 'a'; give each a distinct name"),
    ([{"format": "gsm8k"}], r"data source 0 of the mixture: path is not set"),
    ([{"path": "a.jsonl", "name": "a b"}], r"name must be letters"),
    ([], r"non-empty list"),
])
def test_bad_mixture_is_one_line_error_naming_the_source(sources, message):
    with pytest.raises(SolarError, match=message):
        mixture(*sources)


def _run_config(tmp_path, byte_tokenizer, **overrides):
    cfg = {"model": "tiny-llama", "model_overrides": TINY, "tokenizer": str(byte_tokenizer),
           "objective": "sft", "seq_len": 512, "batch_size": 4, "steps": 2,
           "learning_rate": 1e-2, "run_dir": str(tmp_path / "run"), "checkpoint_every": 100,
           "progress": False, "tensorboard": False, "async_checkpoint": False}
    cfg.update(overrides)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("data, message", [
    ({"mixture": [{"path": "ALPACA", "format": "alpaca"},
                  {"path": "PAIRS", "format": "preference"}]},
     "error: data source 'pairs' of data: format 'preference' does not fit objective sft"),
    ({"mixture": [{"path": "ALPACA", "format": "alpaca"},
                  {"path": "missing.jsonl", "format": "gsm8k"}]},
     # a relative path in a config file is relative to that file (here: tmp_path)
     "error: data source 'missing': data path TMP/missing.jsonl does not exist"),
    ({"path": "ALPACA", "mixture": [{"path": "ALPACA", "format": "alpaca"}]},
     "error: data.mixture names its sources' paths"),
])
def test_bad_mixture_in_a_run(tmp_path, byte_tokenizer, files, capsys, data, message):
    data = json.loads(json.dumps(data).replace("ALPACA", str(files["alpaca"]))
                      .replace("PAIRS", str(files["pairs"])))
    assert main(["train", str(_run_config(tmp_path, byte_tokenizer, data=data))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message.replace("TMP", str(tmp_path))) and "\n" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_sft_mixture_run_logs_token_shares(tmp_path, byte_tokenizer, files):
    data = {"mixture": [{"path": str(files["alpaca"]), "format": "alpaca", "weight": 0.7},
                        {"path": str(files["gsm8k"]), "format": "gsm8k", "weight": 0.3,
                         "name": "math"}]}
    assert main(["train", str(_run_config(tmp_path, byte_tokenizer, data=data, steps=3))]) == 0
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert r["data/alpaca/tokens"] + r["data/math/tokens"] == pytest.approx(1.0)


@pytest.mark.slow
def test_dpo_mixture_run_has_one_reference_table(tmp_path, byte_tokenizer, files):
    data = {"mixture": [{"path": str(files["pairs"]), "format": "preference", "weight": 2},
                        {"path": str(files["pairs2"]), "format": "preference", "weight": 1}]}
    path = _run_config(tmp_path, byte_tokenizer, objective="dpo", data=data, seq_len=48,
                       steps=2, batch_size=6, dpo={"beta": 0.5})
    assert main(["train", str(path)]) == 0
    stored = np.load(tmp_path / "run" / "reference_logps.npz")
    assert stored["logps"].shape == (18, 2) and np.all(stored["logps"] < 0)
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-5)  # policy == reference
    assert first["data/pairs/tokens"] + first["data/pairs2/tokens"] == pytest.approx(1.0)


@pytest.mark.slow
def test_sigkill_mid_mixture_resumes_bit_identically(tmp_path, byte_tokenizer, files):
    """text + jsonl pretraining mixture: killed after checkpoint 3, the restart reads the
    same mixture rows (same data/<name>/tokens) and gives bit-identical losses."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    runner = Path(__file__).with_name("train_runner.py")
    data = {"packing": "concat",
            "mixture": [{"path": str(files["text"]), "format": "text", "weight": 0.7},
                        {"path": str(files["questions"]), "format": "jsonl", "weight": 0.3}]}
    path = _run_config(tmp_path, byte_tokenizer, objective="lm", data=data, seq_len=64,
                       batch_size=8, steps=6, checkpoint_every=3)
    straight, crash = tmp_path / "straight", tmp_path / "crash"
    subprocess.run([sys.executable, str(runner), "1", str(path), f"run_dir={straight}"],
                   check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, str(runner), "1", str(path), f"run_dir={crash}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import time
    deadline = time.time() + 300
    while not (crash / "checkpoints" / "3").is_dir():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run([sys.executable, str(runner), "1", str(path), f"run_dir={crash}"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step 3" in resumed.stdout

    def last_per_step(run):
        out = {}
        for line in (run / "metrics.jsonl").read_text().splitlines():
            r = json.loads(line)
            out[r["step"]] = r
        return out

    ref, got = last_per_step(straight), last_per_step(crash)
    assert sorted(got) == list(range(1, 7))
    for step in range(1, 7):
        for key in ("loss", "data/shakespeare/tokens", "data/questions/tokens"):
            assert got[step][key] == ref[step][key], (step, key)
