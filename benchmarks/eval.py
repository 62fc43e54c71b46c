"""Wall time of a multiple-choice task: `solar-jax eval` beside lm-evaluation-harness.

The data: --data FILE (ARC JSONL, either layout), or N ARC-format questions made from
GSM8K (the shipped solar_jax/resources/data/gsm8k_train.jsonl): the stem is the word problem and the four
choices are the final answer and three nearby numbers, so the task is real text with
realistic lengths. It is written in the Hugging Face layout that lm-eval's arc YAML reads
(question, choices{text,label}, answerKey); solar-jax reads that layout too.

Both run as fresh processes on the same HF folder (the SmolLM2 GGUF converted once), fp32,
the same batch size, timed end to end (interpreter start, model load, scoring). lm-eval is
not a dependency: install it in a side virtual environment and pass its Python:

    python -m venv /tmp/lmeval && /tmp/lmeval/bin/pip install lm-eval torch transformers
    .venv/bin/python benchmarks/eval.py --lm-eval-python /tmp/lmeval/bin/python

Without --lm-eval-python only solar-jax is timed. With it, the script also compares the
two question by question: accuracy, agreement of predictions and max |Δ log-likelihood|.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GSM8K = ROOT / "solar_jax" / "resources" / "data" / "gsm8k_train.jsonl"  # shipped package data

LM_EVAL_TASK = """task: arc_local
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


def make_questions(n: int, path: Path) -> Path:
    rng = random.Random(0)
    with open(GSM8K) as f:
        records = [json.loads(line) for _, line in zip(range(n), f)]
    with open(path, "w") as out:
        for i, rec in enumerate(records):
            answer = int(rec["answer"].split("####")[-1].strip().replace(",", ""))
            wrong = set()
            while len(wrong) < 3:
                cand = answer + rng.choice([-1, 1]) * rng.randint(1, max(3, abs(answer) // 2))
                if cand != answer:
                    wrong.add(cand)
            texts = [str(x) for x in [answer, *sorted(wrong)]]
            rng.shuffle(texts)
            out.write(json.dumps({"id": f"gsm8k-{i}", "question": rec["question"],
                                  "choices": {"text": texts, "label": list("ABCD")},
                                  "answerKey": "ABCD"[texts.index(str(answer))]}) + "\n")
    return path


def timed(cmd: list[str], env=None) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{result.stderr[-4000:]}")
    return time.perf_counter() - start


def lm_eval_samples(out_dir: Path) -> list[dict]:
    files = sorted(out_dir.rglob("samples_arc_local_*.jsonl"))
    if not files:
        sys.exit(f"lm-eval wrote no samples under {out_dir}")
    rows = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["doc_id"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model (default: SmolLM2-135M-Instruct GGUF)")
    ap.add_argument("--data", default=None, help="ARC JSONL (default: N questions from GSM8K)")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lm-eval-python", default=None, help="Python of a venv with lm-eval")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    import solar_jax
    from solar_jax.demo import smollm2_gguf

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_eval_"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "model_hf"
    if not model_dir.exists():
        solar_jax.convert(args.model or smollm2_gguf(), model_dir, to="hf")
    data = Path(args.data) if args.data else make_questions(args.n, work / "arc.jsonl")
    n = sum(1 for line in data.read_text().splitlines() if line.strip())

    ours_json = work / "solar_jax.json"
    ours_s = timed([str(ROOT / ".venv" / "bin" / "solar-jax"), "eval", str(model_dir),
                    "--task", "arc", "--data", str(data), "--batch-size", str(args.batch_size),
                    "--out", str(ours_json)])
    ours = json.loads(ours_json.read_text())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"task: {n} ARC-format questions, 4 choices, SmolLM2-135M fp32, "
          f"batch {args.batch_size}\n")
    print("| evaluator | wall s | acc | acc_norm |\n|---|---:|---:|---:|")
    print(f"| solar-jax eval | {ours_s:.1f} | {ours['acc']:.4f} | {ours['acc_norm']:.4f} |")
    if not args.lm_eval_python:
        print("\n(lm-eval not given: pass --lm-eval-python to time it on the same data)")
        return

    include = work / "lm_eval_tasks"
    include.mkdir(exist_ok=True)
    (include / "arc_local.yaml").write_text(LM_EVAL_TASK.format(data=data.resolve()))
    out_dir = work / "lm_eval_out"
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    theirs_s = timed([args.lm_eval_python, "-m", "lm_eval", "run", "--model", "hf",
                      "--model_args", f"pretrained={model_dir},dtype=float32",
                      "--tasks", "arc_local", "--include_path", str(include),
                      "--batch_size", str(args.batch_size), "--device", "cpu",
                      "--output_path", str(out_dir), "--log_samples"], env=env)
    samples = lm_eval_samples(out_dir)
    acc = sum(s["acc"] for s in samples) / len(samples)
    acc_norm = sum(s["acc_norm"] for s in samples) / len(samples)
    print(f"| lm-eval (hf) | {theirs_s:.1f} | {acc:.4f} | {acc_norm:.4f} |")
    worst, same_pred = 0.0, 0
    for mine, theirs in zip(ours["samples"], samples):
        lls = [float(r[0][0]) for r in theirs["resps"]]
        worst = max(worst, max(abs(a - b) for a, b in zip(mine["loglikelihoods"], lls)))
        same_pred += int(mine["pred"] == max(range(len(lls)), key=lls.__getitem__))
    print(f"\nspeedup {theirs_s / ours_s:.2f}x; same prediction on {same_pred}/{len(samples)} "
          f"questions; max |Δ log-likelihood| {worst:.2e}")


if __name__ == "__main__":
    main()
