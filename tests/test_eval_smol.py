"""Evaluation of the real SmolLM2 model: log-likelihoods, ARC through the CLI and
perplexity against transformers, GSM8K generation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from eval_helpers import ARC, log_softmax, write_jsonl
from solar_jax.cli import main
from solar_jax.eval import evaluate, extract_answer, normalize_answer
from solar_jax.eval.scoring import Scorer


@pytest.fixture(scope="module")
def torch_ll(smol_dir):
    """log p(continuation tokens | context tokens) from transformers."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(smol_dir), dtype=torch.float32).eval()

    def score(context: list[int], cont: list[int]) -> float:
        with torch.no_grad():
            logits = hf(torch.as_tensor([context + cont])).logits[0].numpy()
        logp = log_softmax(logits)
        return float(logp[np.arange(len(context) - 1, len(context) + len(cont) - 1), cont].sum())

    return score


@pytest.mark.slow
def test_smol_loglikelihood_matches_transformers(smol, torch_ll):
    tok = smol.tokenizer
    scorer = Scorer(smol, tok, batch_size=4)
    pairs = [("Question: What is the capital of France?\nAnswer:", " Paris"),
             ("The sky is ", "blue"), ("", "Hello world"), ("2 + 2 =", " 4, and 3 + 3 = 6")]
    encoded = [scorer.encode_pair(c, x) for c, x in pairs]
    # lm-eval's split: trailing space joins the continuation; empty context -> BOS.
    assert encoded[1] == (tok.encode("The sky is", add_special_tokens=False),
                          tok.encode("The sky is blue", add_special_tokens=False)[
                              len(tok.encode("The sky is", add_special_tokens=False)):])
    assert encoded[2] == ([tok.bos_token_id], tok.encode("Hello world", add_special_tokens=False))
    for (context, cont), (ll, _) in zip(encoded, scorer.loglikelihood(pairs)):
        assert ll == pytest.approx(torch_ll(context, cont), abs=2e-3, rel=1e-4)


@pytest.mark.slow
def test_smol_arc_cli_results_json(smol_dir, smol, torch_ll, tmp_path, capsys):
    data = write_jsonl(tmp_path / "arc.jsonl", ARC)
    out = tmp_path / "results.json"
    assert main(["eval", str(smol_dir), "--task", "arc", "--data", str(data),
                 "--batch-size", "4", "--out", str(out)]) == 0
    assert "| arc | 3 | acc_norm |" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["task"] == "arc" and res["n"] == 3 and {"acc", "acc_norm"} <= set(res)
    first = res["samples"][0]
    assert first["choices"] == ["Berlin", "Paris", "Madrid", "Rome"] and first["gold"] == 1
    scorer = Scorer(smol, smol.tokenizer)
    context, cont = scorer.encode_pair("Question: What is the capital of France?\nAnswer:",
                                       " Madrid")
    assert first["loglikelihoods"][2] == pytest.approx(torch_ll(context, cont), abs=2e-3)
    lls = np.array([s["loglikelihoods"] for s in res["samples"]], dtype=object)
    norm = [int(np.argmax(np.array(l) / [len(c) for c in s["choices"]]))
            for l, s in zip(lls, res["samples"])]
    assert [s["pred_norm"] for s in res["samples"]] == norm
    assert res["acc_norm"] == pytest.approx(np.mean([n == s["gold"]
                                                     for n, s in zip(norm, res["samples"])]))


@pytest.mark.slow
def test_smol_gsm8k_generation(smol, tmp_path):
    records = [{"question": "Tom has 3 apples and buys 2 more. How many apples does he have?",
                "answer": "3 + 2 = <<3+2=5>>5\n#### 5"},
               {"question": "A box holds 4 pens. How many pens are in 2 boxes?",
                "answer": "4 * 2 = <<4*2=8>>8\n#### 8"}]
    data = write_jsonl(tmp_path / "gsm8k.jsonl", records)
    res = evaluate(smol, "gsm8k", data, num_fewshot=1, max_gen_tokens=32, batch_size=2)
    assert res["n"] == 2 and 0.0 <= res["exact_match"] <= 1.0
    for sample in res["samples"]:
        assert "Question:" not in sample["generation"]
        assert sample["exact_match"] == float(
            normalize_answer(extract_answer(sample["generation"])) ==
            normalize_answer(sample["target"]))


@pytest.mark.slow
def test_smol_perplexity_matches_transformers(smol, torch_ll, tmp_path):
    text = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to "
            "suffer the slings and arrows of outrageous fortune, or to take arms against a "
            "sea of troubles and by opposing end them.")
    path = tmp_path / "hamlet.txt"
    path.write_text(text)
    tok = smol.tokenizer
    tokens = tok.encode(text, add_special_tokens=False)
    bos = tok.bos_token_id
    whole = torch_ll([bos], tokens)  # one window: every token given all before it
    res = evaluate(smol, "perplexity", path)
    assert res["tokens"] == len(tokens) and res["bytes"] == len(text.encode())
    assert res["perplexity"] == pytest.approx(math.exp(-whole / len(tokens)), rel=1e-4)
    assert res["byte_perplexity"] == pytest.approx(math.exp(-whole / len(text.encode())),
                                                   rel=1e-4)
    # Rolling windows of 16 (lm-eval's disjoint windows, each seeing 16 tokens).
    n, expected, done = 16, 0.0, 0
    while done < len(tokens):
        end = min(done + n, len(tokens))
        context = [bos] + tokens[:done] if end <= n else tokens[end - n - 1:done]
        expected += torch_ll(context, tokens[done:end])
        done = end
    res = evaluate(smol, "perplexity", path, max_length=16)
    assert res["loglikelihood"] == pytest.approx(expected, abs=5e-3)
