"""SFT (template, masking, packing) and DPO (TRL's losses, reference log-probs, training)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from solar_jax.cli import main
from solar_jax.chat_template import SOLAR_TEMPLATE, render_text
from solar_jax.data.chat import ChatEncoder, record_messages
from solar_jax.data.config import DataConfig
from solar_jax.data.preference import build_preference_dataset
from solar_jax.data.sft import build_sft_dataset
from solar_jax.data.synth_math import build_math_data, corrupt_solution
from solar_jax.errors import SolarError
from solar_jax.train.dpo import dpo_losses

from conftest import DATA, write_jsonl




# ---- SFT ------------------------------------------------------------------------------------

def test_solar_template_text(tok):
    """SOLAR-10.7B-Instruct's markers, with BOS first and EOS after each answer."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}]
    assert render_text(tok, messages, SOLAR_TEMPLATE, True) == (
        "<s>### System:\nBe brief.\n\n### User:\nHi?\n\n"
        "### Assistant:\nHello.</s>### User:\n2+2?\n\n### Assistant:\n")
    assert render_text(tok, [{"role": "system", "content": ""}, messages[1]], SOLAR_TEMPLATE,
                       True) == "<s>### User:\nHi?\n\n### Assistant:\n"


@pytest.mark.parametrize("fmt, record, user", [
    ("alpaca", {"instruction": "Add.", "input": "2 and 3", "output": "5"}, "Add.\n\n2 and 3"),
    ("alpaca", {"instruction": "Add.", "input": "", "output": "5"}, "Add."),
    ("openorca", {"system_prompt": "S", "question": "Q", "response": "R"}, "Q"),
    ("gsm8k", {"question": "Q", "answer": "A\n#### 1"}, "Q"),
    ("prompt_completion", {"prompt": "P", "completion": "C"}, "P"),
    ("chat", {"messages": [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]}, "U"),
])
def test_record_formats(fmt, record, user):
    messages = record_messages("x:1", record, fmt)
    assert [m for m in messages if m["role"] == "user"][0]["content"] == user
    assert messages[-1]["role"] == "assistant"


def test_labels_only_on_answer_and_eos(tok):
    enc = ChatEncoder(tok, "solar")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo!"}]
    ids, target = enc.encode("x:1", messages)
    prompt = tok("### User:\nHi\n\n### Assistant:\n", add_special_tokens=False)["input_ids"]
    answer = tok("Yo!", add_special_tokens=False)["input_ids"]
    assert ids == [tok.bos_token_id] + prompt + answer + [tok.eos_token_id]
    assert target == [False] * (1 + len(prompt)) + [True] * (len(answer) + 1)


def test_sft_batches_mask_prompt_and_keep_eos(tok, tmp_path):
    rows = [{"instruction": f"Say {w}", "input": "", "output": w} for w in ("yes", "no", "maybe")]
    cfg = DataConfig(path=str(write_jsonl(tmp_path / "a.jsonl", rows)), format="alpaca", shuffle=False)
    ds = build_sft_dataset(cfg, tok, seq_len=96, global_batch_size=1, seed=0)
    batch = ds.batch(0)
    ids, tgt, w, seg = (batch[k][0] for k in ("input_ids", "targets", "loss_weights", "segment_ids"))
    # every weighted target is an answer token or EOS, and each conversation's EOS is a target
    answers = {tok.decode([t]) for t in tgt[w > 0] if t != tok.eos_token_id}
    assert answers <= set("yesnomaybe")
    assert int(((tgt == tok.eos_token_id) & (w > 0)).sum()) == len(np.unique(seg[seg > 0]))
    # nothing from the prompt is learned
    assert "#" not in tok.decode(tgt[w > 0].tolist())


def test_sft_bad_records_name_the_record(tok, tmp_path):
    write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "x", "output": "y"}, {"instruction": "x"}])
    cfg = DataConfig(path=str(tmp_path / "bad.jsonl"), format="alpaca")
    with pytest.raises(SolarError, match=r"bad.jsonl:2: record has no field 'output'"):
        build_sft_dataset(cfg, tok, seq_len=64, global_batch_size=1, seed=0)
    write_jsonl(tmp_path / "long.jsonl", [{"instruction": "x" * 200, "output": "y"}])
    cfg = DataConfig(path=str(tmp_path / "long.jsonl"), format="alpaca")
    with pytest.raises(SolarError, match=r"long.jsonl:1: the prompt .* longer than the maximum"):
        build_sft_dataset(cfg, tok, seq_len=64, global_batch_size=1, seed=0)


# ---- DPO losses: TRL's formulas in numpy --------------------------------------------------

def _logsig(x):
    return -np.logaddexp(0, -x)


def trl_numpy(pc, pr, rc, rr, beta, loss, ls):
    x = (pc - pr) - (rc - rr)
    if loss == "sigmoid":
        return -_logsig(beta * x) * (1 - ls) - _logsig(-beta * x) * ls
    if loss == "robust":
        return (-_logsig(beta * x) * (1 - ls) + _logsig(-beta * x) * ls) / (1 - 2 * ls)
    if loss == "hinge":
        return np.maximum(0, 1 - beta * x)
    return (x - 1 / (2 * beta)) ** 2


@pytest.mark.parametrize("loss, ls", [("sigmoid", 0.0), ("sigmoid", 0.1), ("robust", 0.2),
                                      ("hinge", 0.0), ("ipo", 0.0)])
def test_dpo_losses_and_gradients_match_numpy(loss, ls):
    rng = np.random.default_rng(0)
    pc, pr, rc, rr = (rng.normal(-20, 5, 8) for _ in range(4))
    beta = 0.3
    got, (rew_c, rew_r) = dpo_losses(jnp.asarray(pc), jnp.asarray(pr), jnp.asarray(rc),
                                     jnp.asarray(rr), beta=beta, loss=loss, label_smoothing=ls)
    np.testing.assert_allclose(got, trl_numpy(pc, pr, rc, rr, beta, loss, ls), rtol=1e-5)
    np.testing.assert_allclose(rew_c, beta * (pc - rc), rtol=1e-5)
    np.testing.assert_allclose(rew_r, beta * (pr - rr), rtol=1e-5)
    grad = jax.grad(lambda a: dpo_losses(a, jnp.asarray(pr), jnp.asarray(rc), jnp.asarray(rr),
                                         beta=beta, loss=loss, label_smoothing=ls)[0].sum())(
        jnp.asarray(pc))
    eps = 1e-4
    numeric = (trl_numpy(pc + eps, pr, rc, rr, beta, loss, ls)
               - trl_numpy(pc - eps, pr, rc, rr, beta, loss, ls)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-5)


# ---- data builder ---------------------------------------------------------------------------

def test_math_builder_is_deterministic_and_corrupts(tmp_path):
    src = tmp_path / "gsm.jsonl"
    src.write_text("".join((DATA / "gsm8k_train.jsonl").read_text().splitlines(True)[:40]))
    a = build_math_data(src, tmp_path / "a", seed=3)
    build_math_data(src, tmp_path / "b", seed=3)
    assert a["sft"] == 40 and a["preference"] >= 38
    assert (tmp_path / "a" / "preference.jsonl").read_text() == \
        (tmp_path / "b" / "preference.jsonl").read_text()
    for line in (tmp_path / "a" / "preference.jsonl").read_text().splitlines():
        pair = json.loads(line)
        good = pair["chosen"].rsplit("####", 1)[1].strip()
        bad = pair["rejected"].rsplit("####", 1)[1].strip()
        assert good != bad and pair["chosen"].count("\n") == pair["rejected"].count("\n")
    with pytest.raises(SolarError, match="--overwrite"):
        build_math_data(src, tmp_path / "a", seed=3)


def test_corrupt_changes_one_step_and_carries_it():
    answer = "She has 3*4 = <<3*4=12>>12 apples.\nThen 12+1 = <<12+1=13>>13.\n#### 13"
    out = corrupt_solution(answer, np.random.default_rng(0))
    assert out != answer and not out.endswith("#### 13")
    changed = [(x, y) for x, y in zip(answer.splitlines(), out.splitlines()) if x != y]
    assert 1 <= len(changed) <= 2


# ---- preference data, reference log-probs and a short DPO run --------------------------------

@pytest.fixture
def pairs_file(tmp_path):
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}.", "rejected": f"{2 * i + 1}."}
            for i in range(8)]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def test_preference_bad_records(tok, tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "  "}])
    cfg = DataConfig(path=str(tmp_path / "p.jsonl"), format="preference")
    with pytest.raises(SolarError, match=r"p.jsonl:1: rejected is empty"):
        build_preference_dataset(cfg, tok, seq_len=64, global_batch_size=1, seed=0)
    write_jsonl(tmp_path / "q.jsonl", [{"prompt": "p", "rejected": "r"}])
    cfg = DataConfig(path=str(tmp_path / "q.jsonl"), format="preference")
    with pytest.raises(SolarError, match=r"q.jsonl:1: record has no field 'chosen'"):
        build_preference_dataset(cfg, tok, seq_len=64, global_batch_size=1, seed=0)


def _dpo_config(tmp_path, byte_tokenizer, pairs_file, **overrides):
    cfg = {"model": "tiny-llama", "tokenizer": str(byte_tokenizer),
           "model_overrides": {"vocab_size": 288, "hidden_size": 32, "intermediate_size": 64,
                               "num_layers": 2, "num_heads": 4, "num_kv_heads": 2},
           "objective": "dpo", "data": {"path": str(pairs_file), "format": "preference"},
           "seq_len": 48, "batch_size": 8, "steps": 12, "learning_rate": 5e-3,
           "warmup_steps": 0, "schedule": "constant", "weight_decay": 0.0,
           "run_dir": str(tmp_path / "dpo"), "checkpoint_every": 100, "log_every": 1,
           "progress": False, "tensorboard": False, "async_checkpoint": False,
           "dpo": {"beta": 0.5}}
    cfg.update(overrides)
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_dpo_run_learns_its_pairs_and_reference_modes_agree(tmp_path, byte_tokenizer, pairs_file):
    assert main(["train", str(_dpo_config(tmp_path, byte_tokenizer, pairs_file))]) == 0
    records = [json.loads(x) for x in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected"):
        assert key in records[-1]
    assert records[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)  # policy == reference
    assert np.mean([r["rewards/accuracies"] for r in records[-3:]]) > 0.5
    assert (tmp_path / "dpo" / "reference_logps.npz").is_file()
    # the same run with a live reference gives the same first steps
    live = tmp_path / "live"
    assert main(["train", str(_dpo_config(tmp_path, byte_tokenizer, pairs_file,
                                          run_dir=str(live), steps=3,
                                          dpo={"beta": 0.5, "reference": "live"}))]) == 0
    live_records = [json.loads(x) for x in (live / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(records[:3], live_records):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-4)


def test_sft_run_trains(tmp_path, byte_tokenizer):
    src = tmp_path / "gsm.jsonl"
    src.write_text("".join((DATA / "gsm8k_train.jsonl").read_text().splitlines(True)[:24]))
    cfg = {"model": "tiny-llama", "tokenizer": str(byte_tokenizer),
           "model_overrides": {"vocab_size": 288, "hidden_size": 32, "intermediate_size": 64,
                               "num_layers": 2, "num_heads": 4, "num_kv_heads": 2},
           "objective": "sft", "data": {"path": str(src), "format": "gsm8k"},
           "seq_len": 512, "batch_size": 2, "steps": 8, "learning_rate": 1e-2,
           "run_dir": str(tmp_path / "sft"), "checkpoint_every": 100, "progress": False,
           "tensorboard": False, "async_checkpoint": False}
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    losses = [json.loads(x)["loss"] for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]
