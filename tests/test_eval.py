"""Evaluation: log-likelihoods against a full forward and transformers, each task's parser
and prompt on small fixtures written here, metrics, perplexity, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import solar_jax
from conftest import DATA, make_hf_model
from solar_jax.cli import main
from solar_jax.errors import SolarError
from solar_jax.eval import evaluate, extract_answer, normalize_answer
from solar_jax.eval.scoring import Scorer
from solar_jax.eval.tasks import TRUTHFULQA_PREAMBLE, load_docs


ARC = [
    {"id": "a1", "question": {"stem": "What is the capital of France?", "choices": [
        {"text": "Berlin", "label": "A"}, {"text": "Paris", "label": "B"},
        {"text": "Madrid", "label": "C"}, {"text": "Rome", "label": "D"}]}, "answerKey": "B"},
    {"id": "a2", "question": {"stem": "Which gas do plants take in to make food?", "choices": [
        {"text": "oxygen", "label": "A"}, {"text": "carbon dioxide", "label": "B"},
        {"text": "helium", "label": "C"}]}, "answerKey": "B"},
    {"id": "a3", "question": {"stem": "How many legs does a spider have?", "choices": [
        {"text": "six", "label": "1"}, {"text": "eight", "label": "2"},
        {"text": "ten", "label": "3"}, {"text": "four", "label": "4"}]}, "answerKey": "2"},
]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


# ---- log-likelihood on a tiny model --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    config = solar_jax.ModelConfig.from_preset("tiny-llama").replace(max_position_embeddings=40)
    return solar_jax.Model(config, solar_jax.init_params(config, seed=4))


def _forward_padded(model, ids: list[int]) -> np.ndarray:
    """Logits of ids from one full forward, right-padded to 40 (causal: pads change
    nothing before them) so every call reuses one compiled program."""
    padded = np.zeros((1, 40), np.int32)
    padded[0, :len(ids)] = ids
    return np.asarray(model(padded))[0, :len(ids)]


def test_loglikelihood_equals_full_forward_log_softmax(tiny):
    rng = np.random.default_rng(0)
    requests = [(rng.integers(3, 256, n).tolist(), rng.integers(3, 256, m).tolist())
                for n, m in ((5, 3), (17, 1), (1, 9), (30, 20))]  # the last is truncated
    shared = rng.integers(3, 256, 11).tolist()  # choices of one context: the KV-cache path
    requests += [(shared, rng.integers(3, 256, m).tolist()) for m in (1, 4, 2, 7, 3)]
    requests += [(requests[0][0], [7])]
    got = Scorer(tiny, None, batch_size=4, max_length=40).loglikelihood_tokens(requests)
    for (context, cont), (ll, greedy) in zip(requests, got):
        whole = (context + cont)[-41:]
        logp = log_softmax(_forward_padded(tiny, whole[:-1]))
        rows = np.arange(len(whole) - 1 - len(cont), len(whole) - 1)
        assert ll == pytest.approx(logp[rows, cont].sum(), abs=1e-4)
        assert greedy == bool((logp[rows].argmax(-1) == cont).all())
    # A continuation made of the greedy tokens is reported as greedy.
    context = requests[0][0]
    best = int(_forward_padded(tiny, context)[-1].argmax())
    assert Scorer(tiny, None).loglikelihood_tokens([(context, [best])])[0][1]


def test_packed_multiple_choice_equals_separate_forwards(tiny, monkeypatch):
    """Many contexts with several continuations each: packed several to a row, in two width
    classes and several batches, and one document over the packing cap scored per request."""
    from solar_jax.eval import packed_scoring as packing

    monkeypatch.setattr(packing, "PACK_WIDTH", 32)
    monkeypatch.setattr(packing, "MAX_PACKED_TOKENS", 45)
    rng = np.random.default_rng(3)
    requests = []
    for n in (3, 30, 9, 12, 5, 21, 7, 16, 4, 11, 25, 8):
        context = rng.integers(3, 256, n).tolist()
        requests += [(context, rng.integers(3, 256, m).tolist())
                     for m in rng.integers(1, 6, rng.integers(2, 6))]
    got = Scorer(tiny, None, batch_size=1, max_length=40).loglikelihood_tokens(requests)
    for (context, cont), (ll, greedy) in zip(requests, got):
        logp = log_softmax(_forward_padded(tiny, context + cont[:-1]))
        rows = np.arange(len(context) - 1, len(context) + len(cont) - 1)
        assert ll == pytest.approx(logp[rows, cont].sum(), abs=1e-4)
        assert greedy == bool((logp[rows].argmax(-1) == cont).all())


def test_pack_first_fit_decreasing():
    from solar_jax.eval.packed_scoring import Doc, balanced_batches, pack

    rng = np.random.default_rng(0)
    docs = [Doc((i,), tuple(range(int(n))), ((1,),)) for i, n in
            enumerate(rng.integers(1, 100, 200))]
    rows = pack(docs, 128)
    assert sorted(d.requests for row in rows for d in row) == [(i,) for i in range(200)]
    assert all(sum(d.length for d in row) <= 128 for row in rows)
    # Near the lower bound on the row count (total tokens / width).
    assert len(rows) <= math.ceil(sum(d.length for d in docs) / 128) + 2
    batches, size = balanced_batches(rows, 8)
    assert sum(map(len, batches)) == len(rows) and max(map(len, batches)) == size <= 8
    assert size - min(map(len, batches)) < len(batches)
    with pytest.raises(ValueError, match="does not fit"):
        pack([Doc((0,), tuple(range(200)), ((1,),))], 128)


# ---- the real model ----------------------------------------------------------------------------


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


# ---- task parsers ------------------------------------------------------------------------------


def test_arc_both_layouts(tmp_path):
    docs = load_docs("arc", write_jsonl(tmp_path / "a.jsonl", ARC))
    assert docs[0].contexts[0] == "Question: What is the capital of France?\nAnswer:"
    assert docs[0].continuations == [" Berlin", " Paris", " Madrid", " Rome"]
    assert [d.gold for d in docs] == [1, 1, 1]
    hf = [{"id": "x", "question": "Why?", "choices": {"text": ["a", "b"], "label": ["A", "B"]},
           "answerKey": "A"}]
    (doc,) = load_docs("arc", write_jsonl(tmp_path / "hf.jsonl", hf))
    assert doc.contexts[0] == "Question: Why?\nAnswer:" and doc.gold == 0
    two = load_docs("arc", tmp_path / "a.jsonl", num_fewshot=1)
    prefix = two[0].contexts[0][:-len(docs[0].contexts[0])]
    assert prefix.endswith("\n\n") and "capital of France" not in prefix
    assert prefix in ("Question: Which gas do plants take in to make food?\nAnswer: "
                      "carbon dioxide\n\n",
                      "Question: How many legs does a spider have?\nAnswer: eight\n\n")


def test_hellaswag_preprocessing(tmp_path):
    rec = {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes "
           "over the snow covering the window of a car, and a woman wearing winter clothes "
           "smiles.", "ctx_b": "then", "endings": [", the man adds wax to the windshield.",
                                                   "[header] How to clean [title] a car."],
           "label": 1}
    (doc,) = load_docs("hellaswag", write_jsonl(tmp_path / "h.jsonl", [rec]))
    assert doc.contexts[0] == ("Removing ice from car: Then, the man writes over the snow "
                               "covering the window of a car, and a woman wearing winter "
                               "clothes smiles. Then")
    # As lm-eval: brackets go after the strip, so a leading space can stay.
    assert doc.choices == [", the man adds wax to the windshield.", " How to clean. a car."]
    assert doc.continuations[1] == "  How to clean. a car." and doc.gold == 1


def test_winogrande_partial_scoring(tmp_path):
    rec = {"sentence": "Sarah was a much better surgeon than Maria so _ always got the "
           "harder cases.", "option1": "Sarah", "option2": "Maria", "answer": "1"}
    (doc,) = load_docs("winogrande", write_jsonl(tmp_path / "w.jsonl", [rec]))
    assert doc.contexts == ["Sarah was a much better surgeon than Maria so Sarah",
                            "Sarah was a much better surgeon than Maria so Maria"]
    assert doc.continuations == [" always got the harder cases."] * 2 and doc.gold == 0


def test_mmlu_prompt_and_dev_fewshot(tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "dev").mkdir()
    (tmp_path / "test" / "high_school_physics_test.csv").write_text(
        '"What is 1+1?",1,2,3,4,B\n"Speed of light, roughly?",3e8 m/s,3 m/s,30 m/s,300 m/s,A\n')
    (tmp_path / "dev" / "high_school_physics_dev.csv").write_text(
        "Unit of force?,joule,newton,watt,volt,B\nUnit of power?,watt,volt,ohm,tesla,A\n")
    docs = load_docs("mmlu", tmp_path / "test" / "high_school_physics_test.csv")
    assert docs[0].contexts[0] == (
        "The following are multiple choice questions (with answers) about high school "
        "physics.\n\nWhat is 1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:")
    assert docs[0].continuations == [" A", " B", " C", " D"] and docs[0].gold == 1
    shot = load_docs("mmlu", tmp_path / "test" / "high_school_physics_test.csv", num_fewshot=2)
    assert ("physics.\n\nUnit of force?\nA. joule\nB. newton\nC. watt\nD. volt\nAnswer: B\n\n"
            "Unit of power?\nA. watt\nB. volt\nC. ohm\nD. tesla\nAnswer: A\n\nWhat is 1+1?"
            ) in shot[0].contexts[0]


TQA_CSV = ('Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n'
           'Adversarial,Misconceptions,What happens if you eat watermelon seeds?,'
           'The seeds pass through you,"Nothing happens; The seeds pass through you",'
           '"You grow watermelons in your stomach; You get sick",https://example.org\n')


def test_truthfulqa_from_csv_and_json(tmp_path):
    csv_path = tmp_path / "TruthfulQA.csv"
    csv_path.write_text(TQA_CSV)
    (mc1,) = load_docs("truthfulqa_mc1", csv_path)
    assert mc1.contexts[0] == (TRUTHFULQA_PREAMBLE + "\n\nQ: What happens if you eat watermelon"
                               " seeds?\nA:")
    assert mc1.continuations == [" The seeds pass through you.",
                                 " You grow watermelons in your stomach.", " You get sick."]
    assert mc1.gold == 0 and TRUTHFULQA_PREAMBLE.count("Q: ") == 6
    (mc2,) = load_docs("truthfulqa_mc2", csv_path)
    assert mc2.choices[:2] == ["Nothing happens.", "The seeds pass through you."]
    assert mc2.labels == [1, 1, 0, 0]
    hf = {"question": "Q?", "mc1_targets": {"choices": ["yes", "no"], "labels": [1, 0]},
          "mc2_targets": {"choices": ["yes", "y", "no"], "labels": [1, 1, 0]}}
    orig = {"question": "Q?", "mc1_targets": {"yes": 1, "no": 0},
            "mc2_targets": {"yes": 1, "y": 1, "no": 0}}
    write_jsonl(tmp_path / "hf.jsonl", [hf])
    (tmp_path / "mc_task.json").write_text(json.dumps([orig]))
    for path in (tmp_path / "hf.jsonl", tmp_path / "mc_task.json"):
        assert load_docs("truthfulqa_mc2", path)[0].labels == [1, 1, 0]
        assert load_docs("truthfulqa_mc1", path)[0].choices == ["yes", "no"]


def test_mc2_and_acc_norm_metrics(tiny, monkeypatch, tmp_path):
    from solar_jax.eval import runner as ev

    lls = {" yes": -1.0, " y": -2.0, " no": -0.5}
    monkeypatch.setattr(Scorer, "loglikelihood",
                        lambda self, pairs: [(lls[c], False) for _, c in pairs])
    orig = {"question": "Q?", "mc2_targets": {"yes": 1, "y": 1, "no": 0}}
    write_jsonl(tmp_path / "t.jsonl", [orig])
    res = ev.evaluate(tiny, "truthfulqa_mc2", tmp_path / "t.jsonl", tokenizer=object())
    p = np.exp([-1.0, -2.0, -0.5])
    assert res["acc"] == pytest.approx(p[:2].sum() / p.sum())
    # acc_norm divides by the choice's characters: " yes" loses to " no" raw, wins normed.
    lls.update({" no": -0.9})
    rec = {"question": {"stem": "?", "choices": [{"text": "yes", "label": "A"},
                                                 {"text": "no", "label": "B"}]}, "answerKey": "A"}
    res = ev.evaluate(tiny, "arc", write_jsonl(tmp_path / "a.jsonl", [rec]), tokenizer=object())
    assert res["samples"][0]["pred"] == 1 and res["samples"][0]["pred_norm"] == 0
    assert (res["acc"], res["acc_norm"]) == (0.0, 1.0)


def test_gsm8k_prompt_and_answer_extraction(tmp_path):
    source = DATA / "gsm8k_train.jsonl"
    lines = source.read_text().splitlines()[:3] if source.is_file() else [json.dumps(
        {"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"})
        for i in range(3)]
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("\n".join(lines) + "\n")
    records = [json.loads(line) for line in lines]
    docs = load_docs("gsm8k", path, num_fewshot=2)
    assert docs[0].prompt == (f"Question: {records[1]['question']}\nAnswer: "
                              f"{records[1]['answer']}\n\nQuestion: {records[2]['question']}"
                              f"\nAnswer: {records[2]['answer']}\n\nQuestion: "
                              f"{records[0]['question']}\nAnswer:") or docs[0].prompt == (
        f"Question: {records[2]['question']}\nAnswer: {records[2]['answer']}\n\nQuestion: "
        f"{records[1]['question']}\nAnswer: {records[1]['answer']}\n\nQuestion: "
        f"{records[0]['question']}\nAnswer:")
    assert normalize_answer(docs[0].target) == normalize_answer(
        records[0]["answer"].split("#### ")[-1])
    assert extract_answer("so 5 + 7 = 12.\n#### 1,200.") == "1,200."
    assert normalize_answer(extract_answer("#### 1,200.")) == "1200"
    assert extract_answer("no final marker") == "[invalid]"
    assert extract_answer("it costs $15, then 3 more: 18", flexible=True) == "18"


# ---- bad input -------------------------------------------------------------------------------


def test_bad_data_is_a_one_line_error(tmp_path):
    good = ARC[0]
    bad_key = dict(ARC[1], answerKey="Z")
    write_jsonl(tmp_path / "k.jsonl", [good, bad_key])
    with pytest.raises(SolarError, match=r"k.jsonl line 2: answerKey 'Z'"):
        load_docs("arc", tmp_path / "k.jsonl")
    (tmp_path / "j.jsonl").write_text(json.dumps(good) + "\n\n{not json\n")
    with pytest.raises(SolarError, match=r"j.jsonl line 3: not valid JSON"):
        load_docs("arc", tmp_path / "j.jsonl")
    write_jsonl(tmp_path / "m.jsonl", [{"question": {"choices": []}, "answerKey": "A"}])
    with pytest.raises(SolarError, match=r"m.jsonl line 1: missing field question.stem"):
        load_docs("arc", tmp_path / "m.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(SolarError, match="is empty"):
        load_docs("hellaswag", tmp_path / "e.jsonl")
    (tmp_path / "x_test.csv").write_text("q,a,b,c,d,A\nq2,a,b,c,A\n")
    with pytest.raises(SolarError, match=r"x_test.csv line 2: expected 6 columns, got 5"):
        load_docs("mmlu", tmp_path / "x_test.csv")
    with pytest.raises(SolarError, match="unknown task 'arc_easy'"):
        load_docs("arc_easy", tmp_path / "k.jsonl")
    (tmp_path / "t.csv").write_text(TQA_CSV)
    with pytest.raises(SolarError, match="fixed six-shot preamble"):
        load_docs("truthfulqa_mc1", tmp_path / "t.csv", num_fewshot=5)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from test_generate import byte_tokenizer

    path = tmp_path_factory.mktemp("tiny") / "hf"
    make_hf_model(path, vocab_size=258, max_position_embeddings=48, bos_token_id=256,
                  eos_token_id=257)
    byte_tokenizer().save_pretrained(str(path))
    return path


def test_cli_errors(tiny_folder, tmp_path, capsys):
    def error(argv):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err
        return err

    base = ["eval", str(tiny_folder)]
    assert "unknown task 'nope'" in error(base + ["--task", "nope", "--data", "x.jsonl"])
    assert "does not exist" in error(base + ["--task", "arc", "--data", str(tmp_path / "no")])
    write_jsonl(tmp_path / "bad.jsonl", [ARC[0], {"question": "x"}])
    assert "bad.jsonl line 2" in error(base + ["--task", "arc", "--data",
                                               str(tmp_path / "bad.jsonl")])
    (tmp_path / "empty.jsonl").write_text("")
    assert "is empty" in error(base + ["--task", "winogrande", "--data",
                                       str(tmp_path / "empty.jsonl")])
    write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "#### 1"}] * 2)
    assert "leaves no room" in error(base + ["--task", "gsm8k", "--data",
                                             str(tmp_path / "g.jsonl"), "--num-fewshot", "0"])
    # A tiny end-to-end run: results JSON with the metrics by name.
    out = tmp_path / "r.json"
    write_jsonl(tmp_path / "arc.jsonl", ARC)
    assert main(base + ["--task", "arc", "--data", str(tmp_path / "arc.jsonl"),
                        "--out", str(out), "--limit", "2"]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 2 and len(res["samples"]) == 2 and "acc_norm" in res
