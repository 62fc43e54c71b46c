"""Local data and lm-eval task YAMLs for benchmarks/eval.py: each task in its real release
format, built from the shipped GSM8K problems (nothing can be downloaded here).

* arc: question, choices{text,label}, answerKey; four numeric choices.
* hellaswag: activity_label, ctx_a, ctx_b, endings (4), label (a string, as on the hub);
  the context is a problem's opening sentences, the endings the next sentence and three
  sentences of other problems. Some contexts carry WikiHow's " [title]" and "[step]"
  artifacts so that both tools' preprocessing runs.
* mmlu: `<subject>_test.csv` / `<subject>_dev.csv` as released (no header: question,
  A-D, answer letter) for solar-jax, and the same questions in the hub layout (question,
  subject, choices, answer index) for lm-eval; 5-shot from dev (first_n).
* truthfulqa: question, mc1_targets{choices,labels} (correct first), mc2_targets; the
  question is a problem's last sentence (as short as TruthfulQA's), 4 to 13 choices for
  mc1 and 2-4 true plus 3-9 false for mc2, answers as sentences.

The lm-eval YAMLs `include` lm-eval's own task YAML (its prompt templates, preprocessing
and mc2 metric) and override only where the data comes from.
"""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GSM8K = ROOT / "solar_jax" / "resources" / "data" / "gsm8k_train.jsonl"  # shipped package data
MMLU_SUBJECT = "elementary_mathematics"


def _problems(n: int, skip: int = 0) -> list[dict]:
    with open(GSM8K) as f:
        rows = [json.loads(line) for _, line in zip(range(skip + n), f)]
    out = []
    for rec in rows[skip:]:
        answer = int(rec["answer"].split("####")[-1].strip().replace(",", ""))
        sentences = [s for s in re.split(r"(?<=[.?!])\s+", rec["question"].strip()) if s]
        steps = [re.sub(r"<<.*?>>", "", s).strip() for s in rec["answer"].split("\n")[:-1]]
        out.append({"question": rec["question"], "answer": answer, "sentences": sentences,
                    "steps": [s for s in steps if s]})
    return out


def _numbers(answer: int, k: int, rng: random.Random) -> list[int]:
    wrong: set[int] = set()
    while len(wrong) < k:
        cand = answer + rng.choice([-1, 1]) * rng.randint(1, max(k + 1, abs(answer) // 2))
        if cand != answer:
            wrong.add(cand)
    return sorted(wrong)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_arc(n: int, work: Path) -> Path:
    rng = random.Random(0)
    rows = []
    for i, p in enumerate(_problems(n)):
        texts = [str(x) for x in [p["answer"], *_numbers(p["answer"], 3, rng)]]
        rng.shuffle(texts)
        rows.append({"id": f"gsm8k-{i}", "question": p["question"],
                     "choices": {"text": texts, "label": list("ABCD")},
                     "answerKey": "ABCD"[texts.index(str(p["answer"]))]})
    return _jsonl(work / "arc.jsonl", rows)


def make_hellaswag(n: int, work: Path) -> Path:
    rng = random.Random(1)
    problems = [p for p in _problems(3 * n) if len(p["sentences"]) >= 3][:n]
    pool = [s for p in problems for s in p["sentences"]]
    rows = []
    for i, p in enumerate(problems):
        head, nxt = p["sentences"][:-2], p["sentences"][-2]
        words = nxt.split()
        cut = max(1, len(words) // 3)
        ctx_a = " ".join(head) + (" [title] Step one." if i % 4 == 0 else "")
        ctx_b = " ".join(words[:cut]).lower()
        true_end = " ".join(words[cut:]) + (" [step] Then check." if i % 5 == 0 else "")
        endings = [true_end] + [" ".join(s.split()[cut:]) or s
                                for s in rng.sample([s for s in pool if s != nxt], 3)]
        order = list(range(4))
        rng.shuffle(order)
        rows.append({"ind": i, "activity_label": "Solving word problems", "ctx_a": ctx_a,
                     "ctx_b": ctx_b, "ctx": ctx_a + " " + ctx_b.capitalize(),
                     "endings": [endings[j] for j in order], "source_id": f"gsm8k-{i}",
                     "split": "val", "split_type": "indomain",
                     "label": str(order.index(0))})
    return _jsonl(work / "hellaswag.jsonl", rows)


def make_mmlu(n: int, work: Path) -> tuple[Path, Path]:
    """(solar-jax's test CSV, its dev CSV beside it); the lm-eval JSON sits in work."""
    rng = random.Random(2)
    folder = work / "mmlu"
    folder.mkdir(exist_ok=True)
    split_rows = {}
    for split, problems in (("dev", _problems(5)), ("test", _problems(n, skip=5))):
        rows = []
        for p in problems:
            texts = [str(x) for x in [p["answer"], *_numbers(p["answer"], 3, rng)]]
            rng.shuffle(texts)
            rows.append((p["question"], texts, texts.index(str(p["answer"]))))
        split_rows[split] = rows
        with open(folder / f"{MMLU_SUBJECT}_{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            for q, texts, gold in rows:
                w.writerow([q, *texts, "ABCD"[gold]])
        _jsonl(work / f"mmlu_{split}.jsonl",
               [{"question": q, "subject": MMLU_SUBJECT, "choices": texts, "answer": gold}
                for q, texts, gold in rows])
    return folder / f"{MMLU_SUBJECT}_test.csv", folder / f"{MMLU_SUBJECT}_dev.csv"


def make_truthfulqa(n: int, work: Path) -> Path:
    rng = random.Random(3)
    problems = _problems(n)
    steps = [s for p in problems for s in p["steps"]]
    rows = []
    for p in problems:
        question = p["sentences"][-1]
        best = f"The answer is {p['answer']}."
        k1 = rng.randint(3, 12)
        wrong = [f"The answer is {x}." for x in _numbers(p["answer"], k1 // 2, rng)]
        wrong += rng.sample(steps, k1 - len(wrong))
        true = [best] + rng.sample(p["steps"] or [best], min(len(p["steps"]), rng.randint(1, 3)))
        true = list(dict.fromkeys(true))
        false = wrong[:rng.randint(3, min(9, len(wrong)))]
        rows.append({"question": question,
                     "mc1_targets": {"choices": [best] + wrong, "labels": [1] + [0] * len(wrong)},
                     "mc2_targets": {"choices": true + false,
                                     "labels": [1] * len(true) + [0] * len(false)}})
    return _jsonl(work / "truthfulqa.jsonl", rows)


ARC_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def _override(name: str, include: Path, splits: dict[str, Path], extra: str = "") -> str:
    files = "".join(f"    {k}: {v}\n" for k, v in splits.items())
    return (f"include: {include}\ntask: {name}\ntag: []\ndataset_path: json\n"
            f"dataset_name: null\ndataset_kwargs:\n  data_files:\n{files}{extra}")


def write_lm_eval_tasks(tasks_dir: Path, include: Path, data: dict[str, Path],
                        work: Path) -> None:
    """One local YAML per task into `include` (lm-eval's --include_path); tasks_dir is
    lm-eval's own lm_eval/tasks folder."""
    include.mkdir(parents=True, exist_ok=True)
    if "arc" in data:
        (include / "arc_local.yaml").write_text(
            ARC_YAML.format(name="arc_local", data=data["arc"].resolve()))
    if "hellaswag" in data:
        f = data["hellaswag"].resolve()
        (include / "hellaswag_local.yaml").write_text(_override(
            "hellaswag_local", tasks_dir / "hellaswag" / "hellaswag.yaml",
            {"train": f, "validation": f}))
    if "mmlu" in data:
        (include / "mmlu_local.yaml").write_text(_override(
            "mmlu_local", tasks_dir / "mmlu" / "default" / "_default_template_yaml",
            {"test": (work / "mmlu_test.jsonl").resolve(),
             "dev": (work / "mmlu_dev.jsonl").resolve()},
            "description: \"The following are multiple choice questions (with answers) about "
            f"{MMLU_SUBJECT.replace('_', ' ')}.\\n\\n\"\nnum_fewshot: 5\n"
            "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"))
    for mc in ("mc1", "mc2"):
        if f"truthfulqa_{mc}" in data:
            f = data[f"truthfulqa_{mc}"].resolve()
            (include / f"truthfulqa_{mc}_local.yaml").write_text(_override(
                f"truthfulqa_{mc}_local", tasks_dir / "truthfulqa" / f"truthfulqa_{mc}.yaml",
                {"validation": f}))
