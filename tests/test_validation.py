"""Validation during training: held-out loss on the training mesh, eval tasks on the live
params, DPO reward metrics, resumed runs that do not evaluate again, and bad input."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import yaml

from solar_jax.cli import main

from conftest import DATA  # noqa: E402

TINY = {"vocab_size": 288, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
        "num_heads": 4, "num_kv_heads": 2}


def records(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def write_config(tmp_path, byte_tokenizer, **overrides):
    cfg = {"model": "tiny-llama", "model_overrides": TINY, "tokenizer": str(byte_tokenizer),
           "seq_len": 64, "batch_size": 4, "steps": 5, "learning_rate": 1e-2,
           "warmup_steps": 0, "run_dir": str(tmp_path / "run"), "checkpoint_every": 3,
           "progress": False, "tensorboard": False, "async_checkpoint": False}
    cfg.update(overrides)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_lm_eval_matches_training_loss_tasks_match_eval_and_resume_skips(tmp_path,
                                                                         byte_tokenizer):
    # One document of exactly 4 rows x 64 tokens (BOS + 254 bytes + EOS), concat-packed: every
    # training batch is those 4 rows (reshuffled), so the held-out loss of the same file after
    # step k is the training loss of step k + 1, computed by another program.
    same = tmp_path / "same.txt"
    same.write_text((DATA / "tinyshakespeare.txt").read_text()[:254].replace("\n\n", "\n "))
    held = tmp_path / "held.txt"
    held.write_text((DATA / "tinyshakespeare.txt").read_text()[-2000:])
    path = write_config(
        tmp_path, byte_tokenizer, data={"path": str(same), "packing": "concat"}, eval_every=2,
        grad_accum=2,
        eval_data={"mixture": [{"path": str(same), "weight": 3},
                               {"path": str(held), "weight": 1, "name": "held"}]},
        eval_tasks=[{"task": "perplexity", "data": str(held)}])
    assert main(["train", str(path)]) == 0
    run = tmp_path / "run"
    log = records(run)
    train = {r["step"]: r for r in log if "loss" in r}
    evals = {r["step"]: r for r in log if "eval/loss" in r}
    assert sorted(train) == [1, 2, 3, 4, 5] and sorted(evals) == [2, 4, 5]
    for k in (2, 4):
        e, t = evals[k], train[k + 1]
        assert e["eval/same/loss"] == pytest.approx(t["loss"], rel=1e-5)
        assert e["eval/same/accuracy"] == pytest.approx(t["accuracy"], abs=1e-6)
        assert e["eval/same/tokens"] == t["tokens"]
        assert e["eval/loss"] == pytest.approx((3 * e["eval/same/loss"] + e["eval/held/loss"]) / 4)
        assert e["eval/perplexity"] == pytest.approx(math.exp(e["eval/loss"]))
        assert e["eval/held/perplexity"] == pytest.approx(math.exp(e["eval/held/loss"]))
    assert evals[4]["eval/held/loss"] < evals[2]["eval/held/loss"] + 1.0
    # the eval task on the live params equals `evaluate` on the saved final checkpoint
    import solar_jax
    from solar_jax.eval import evaluate
    model = solar_jax.load_model(run)
    model.tokenizer = solar_jax.load_tokenizer(byte_tokenizer)
    standalone = evaluate(model, "perplexity", held)
    assert evals[5]["eval/perplexity/perplexity"] == pytest.approx(standalone["perplexity"],
                                                                   rel=1e-5)
    assert evals[5]["eval/perplexity/tokens"] == standalone["tokens"]
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["loss"] == train[5]["loss"] and final["eval/loss"] == evals[5]["eval/loss"]

    # A crash after step 5's evaluation was logged but before its checkpoint: the restart
    # resumes at 3 and retrains 4 and 5 bit-identically without evaluating 4 or 5 again.
    shutil.rmtree(run / "checkpoints" / "5")
    assert main(["train", str(path)]) == 0
    again = records(run)
    assert [r["step"] for r in again if "eval/loss" in r] == [2, 4, 5]
    retrained = [r for r in again if "loss" in r][5:]
    assert [r["step"] for r in retrained] == [4, 5]
    assert [r["loss"] for r in retrained] == [train[4]["loss"], train[5]["loss"]]
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["eval/loss"] == evals[5]["eval/loss"]  # the logged evaluation, not rerun


@pytest.mark.slow
def test_eval_on_a_sharded_mesh_equals_one_device(tmp_path, byte_tokenizer, shakespeare_slice):
    """Held-out loss and an eval task on fsdp-sharded params give one device's numbers."""
    import subprocess
    import sys
    from pathlib import Path

    runner = Path(__file__).with_name("train_runner.py")
    held = tmp_path / "held.txt"
    held.write_text((DATA / "tinyshakespeare.txt").read_text()[-1500:])
    path = write_config(tmp_path, byte_tokenizer, data={"path": str(shakespeare_slice)},
                        steps=2, checkpoint_every=2, eval_data=str(held), eval_batches=2,
                        eval_tasks=[{"task": "perplexity", "data": str(held)}])
    out = {}
    for name, devices, mesh in (("one", 1, "{data: 1, fsdp: 1, tensor: 1}"),
                                ("fsdp", 4, "{data: 2, fsdp: 2, tensor: 1}")):
        result = subprocess.run([sys.executable, str(runner), str(devices), str(path),
                                 f"run_dir={tmp_path / name}", f"mesh={mesh}"],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        out[name] = [r for r in records(tmp_path / name) if "eval/loss" in r][-1]
    for key in ("eval/loss", "eval/accuracy", "eval/perplexity/perplexity"):
        assert out["fsdp"][key] == pytest.approx(out["one"][key], rel=1e-5), key


@pytest.mark.slow
def test_dpo_eval_reports_reward_accuracy_and_margins(tmp_path, byte_tokenizer):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}.",
                                         "rejected": f"{2 * i + 1}."}) + "\n" for i in range(8)))
    # eval_data = the training pairs, batch = all 8: the evaluation after step k sees the pairs
    # step k + 1 trains on, with the same params (means do not depend on the order)
    path = write_config(tmp_path, byte_tokenizer, objective="dpo", seq_len=48, batch_size=8,
                        steps=3, learning_rate=5e-3, schedule="constant", weight_decay=0.0,
                        data={"path": str(pairs), "format": "preference"}, dpo={"beta": 0.5},
                        eval_data=str(pairs), eval_every=1, checkpoint_every=100)
    assert main(["train", str(path)]) == 0
    log = records(tmp_path / "run")
    train = {r["step"]: r for r in log if "loss" in r}
    evals = {r["step"]: r for r in log if "eval/loss" in r}
    assert sorted(evals) == [1, 2, 3]
    for k in (1, 2):
        for key in ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen",
                    "rewards/rejected", "logps/chosen", "logps/rejected"):
            assert evals[k][f"eval/{key}"] == pytest.approx(train[k + 1][key], rel=1e-4,
                                                            abs=1e-5), key
    assert evals[2]["eval/rewards/margins"] > 0
    assert (tmp_path / "run" / "eval_data_reference_logps.npz").is_file()


@pytest.mark.parametrize("overrides, message", [
    ({"eval_tasks": [{"task": "gsm9k", "data": "DATA"}]}, "eval_tasks[0]: unknown task"),
    ({"eval_tasks": [{"task": "gsm8k", "data": "nope.jsonl"}]},
     # a path in a config file is relative to that file (its directory: TMP)
     "eval_tasks[0] (gsm8k): data file TMP/nope.jsonl does not exist"),
    ({"eval_tasks": [{"task": "gsm8k", "data": "DATA"}, {"task": "gsm8k", "data": "DATA"}]},
     "eval_tasks[1]: two eval tasks log as eval/gsm8k/"),
    ({"eval_tasks": [{"task": "gsm8k", "data": "DATA", "limt": 3}]}, "unknown config key"),
    ({"eval_every": -1}, "config key eval_every must be >= 0"),
    ({"eval_batches": 0}, "config key eval_batches must be positive"),
    ({"eval_data": {"path": "DATA", "format": "preference"}},
     "objective sft reads eval_data.format"),
    ({"eval_data": {"path": "DATA", "colour": 1}}, "unknown config key(s): eval_data.colour"),
    ({"eval_data": {"mixture": [{"path": "DATA", "weight": 0}]}},
     "eval_data: data source 'gsm' : weight"),
])
def test_bad_eval_config_is_one_line_error(tmp_path, byte_tokenizer, capsys, overrides, message):
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text((DATA / "gsm8k_train.jsonl").read_text().splitlines(True)[0])
    overrides = json.loads(json.dumps(overrides).replace("DATA", str(gsm)))
    path = write_config(tmp_path, byte_tokenizer, objective="sft",
                        data={"path": str(gsm), "format": "gsm8k"}, **overrides)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    message = message.replace(" : ", ": ").replace("TMP", str(tmp_path))
    assert err.startswith("error: ") and message in err, err
    assert "\n" not in err
