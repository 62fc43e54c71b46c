"""Evaluation tasks: each task's parser and prompt on small fixtures written here, answer
extraction, and bad input (one-line errors from the API and the CLI)."""

from __future__ import annotations

import json

import pytest

from conftest import DATA
from eval_helpers import ARC, write_jsonl
from test_generate import tiny_folder  # noqa: F401  (the same tiny HF model + byte tokenizer fixture)
from solar_jax.cli import main
from solar_jax.errors import SolarError
from solar_jax.eval import extract_answer, normalize_answer
from solar_jax.eval.tasks import TRUTHFULQA_PREAMBLE, load_docs


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
