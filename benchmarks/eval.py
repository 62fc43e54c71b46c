"""Wall time of multiple-choice tasks: `solar-jax eval` beside lm-evaluation-harness.

The mix (--tasks, default all): arc, hellaswag, mmlu (5-shot), truthfulqa_mc1 and
truthfulqa_mc2, N documents each, built locally in each task's release format from the
shipped GSM8K problems (benchmarks/eval_data.py says how). lm-eval reads the same files
through local YAMLs that include lm-eval's own task YAML, so both tools score identical
requests.

Each task runs as a fresh process on each side, interleaved (ours, lm-eval, ours, ...), on
the same HF folder (the SmolLM2 GGUF converted once), fp32, the same batch size, timed end
to end. solar-jax's compile time is measured in the same process (jax.monitoring events),
with the persistent compilation cache off (a first run): its time splits into start-up
(imports, model load), compile and scoring. lm-eval is not a dependency: install it in a
side virtual environment and pass its Python:

    python -m venv /tmp/lmeval && /tmp/lmeval/bin/pip install lm-eval torch transformers
    .venv/bin/python benchmarks/eval.py --lm-eval-python /tmp/lmeval/bin/python

Without --lm-eval-python only solar-jax is timed. With it, each task is also compared
document by document: the metrics, agreement of predictions and max |Δ log-likelihood|.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_data  # noqa: E402

ROOT = eval_data.ROOT
TASKS = ("arc", "hellaswag", "mmlu", "truthfulqa_mc1", "truthfulqa_mc2")
METRICS = {"arc": ("acc", "acc_norm"), "hellaswag": ("acc", "acc_norm"),
           "mmlu": ("acc", "acc_norm"), "truthfulqa_mc1": ("acc",),
           "truthfulqa_mc2": ("acc",)}
SHOTS = {"mmlu": 5}


def run(cmd: list[str], env=None) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{result.stderr[-4000:]}")
    return time.perf_counter() - start, result.stdout


def build_data(tasks, n: int, work: Path) -> dict[str, Path]:
    data = {}
    for task in tasks:
        if task == "arc":
            data[task] = eval_data.make_arc(n, work)
        elif task == "hellaswag":
            data[task] = eval_data.make_hellaswag(n, work)
        elif task == "mmlu":
            data[task] = eval_data.make_mmlu(n, work)[0]
        elif task.startswith("truthfulqa"):
            data[task] = eval_data.make_truthfulqa(n, work)
    return data


def ours(task: str, model_dir: Path, data: Path, batch: int, work: Path) -> dict:
    out = work / f"solar_jax_{task}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "_eval_timed.py"), "eval",
           str(model_dir), "--task", task, "--data", str(data), "--batch-size", str(batch),
           "--out", str(out)]
    if task in SHOTS:
        cmd += ["--num-fewshot", str(SHOTS[task])]
    env = dict(os.environ, SOLAR_JAX_COMPILE_CACHE="off",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    wall, stdout = run(cmd, env)
    timing = json.loads(stdout.split("TIMING ", 1)[1].splitlines()[0])
    res = json.loads(out.read_text())
    compile_s = timing["compile_s"] + timing["trace_s"]
    return {"wall": wall, "compile": compile_s, "programs": timing["programs"],
            "scoring": res["seconds"] - compile_s, "startup": wall - res["seconds"],
            "res": res}


def theirs(task: str, py: str, model_dir: Path, include: Path, batch: int,
           work: Path) -> dict:
    name = f"{task}_local"
    out_dir = work / f"lm_eval_out_{task}"
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    wall, _ = run([py, "-m", "lm_eval", "run", "--model", "hf",
                   "--model_args", f"pretrained={model_dir},dtype=float32",
                   "--tasks", name, "--include_path", str(include),
                   "--batch_size", str(batch), "--device", "cpu",
                   "--output_path", str(out_dir), "--log_samples"], env=env)
    files = sorted(out_dir.rglob(f"samples_{name}_*.jsonl"))
    if not files:
        sys.exit(f"lm-eval wrote no samples under {out_dir}")
    rows = [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]
    return {"wall": wall, "samples": sorted(rows, key=lambda r: r["doc_id"])}


def compare(task: str, mine: dict, other: dict) -> dict:
    samples = other["samples"]
    metrics = {m: sum(float(s[m]) for s in samples) / len(samples) for m in METRICS[task]}
    worst, same = 0.0, 0
    for a, b in zip(mine["res"]["samples"], samples):
        lls = [float(r[0][0]) for r in b["resps"]]
        worst = max(worst, max(abs(x - y) for x, y in zip(a["loglikelihoods"], lls)))
        same += int(a["pred"] == max(range(len(lls)), key=lls.__getitem__))
    return {"metrics": metrics, "worst": worst, "same": same, "n": len(samples)}


def lm_eval_tasks_dir(py: str) -> Path:
    _, out = run([py, "-c", "import lm_eval.tasks, os; print(os.path.dirname(lm_eval.tasks.__file__))"])
    return Path(out.strip())


def fmt(mets: dict, task: str) -> str:
    return " / ".join(f"{mets[m]:.4f}" for m in METRICS[task])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model (default: SmolLM2-135M-Instruct GGUF)")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated, of " + ", ".join(TASKS))
    ap.add_argument("--n", type=int, default=100, help="documents per task")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lm-eval-python", default=None, help="Python of a venv with lm-eval")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    if unknown := [t for t in tasks if t not in TASKS]:
        sys.exit(f"error: unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")

    import solar_jax
    from solar_jax.demo import smollm2_gguf

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_eval_"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "model_hf"
    if not model_dir.exists():
        solar_jax.convert(args.model or smollm2_gguf(), model_dir, to="hf")
    data = build_data(tasks, args.n, work)
    include = work / "lm_eval_tasks"
    if args.lm_eval_python:
        eval_data.write_lm_eval_tasks(lm_eval_tasks_dir(args.lm_eval_python), include,
                                      data, work)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"SmolLM2-135M fp32, batch {args.batch_size}, N={args.n} per task; "
          f"load before: {os.getloadavg()[0]:.2f}\n", flush=True)
    print("| task | solar-jax s (start-up + compile [programs] + scoring) | lm-eval s | "
          "speedup | metrics solar-jax | metrics lm-eval | same pred | max |Δ ll| | load |")
    print("|---|---:|---:|---:|---|---|---:|---:|---:|", flush=True)
    total_ours = total_theirs = 0.0
    for task in tasks:
        mine = ours(task, model_dir, data[task], args.batch_size, work)
        total_ours += mine["wall"]
        split = (f"{mine['wall']:.1f} ({mine['startup']:.1f} + {mine['compile']:.1f} "
                 f"[{mine['programs']}] + {mine['scoring']:.1f})")
        mets = fmt(mine["res"], task)
        if not args.lm_eval_python:
            print(f"| {task} | {split} | | | {mets} | | | | {os.getloadavg()[0]:.2f} |",
                  flush=True)
            continue
        other = theirs(task, args.lm_eval_python, model_dir, include, args.batch_size, work)
        total_theirs += other["wall"]
        c = compare(task, mine, other)
        print(f"| {task} | {split} | {other['wall']:.1f} | {other['wall'] / mine['wall']:.2f}x | "
              f"{mets} | {fmt(c['metrics'], task)} | {c['same']}/{c['n']} | {c['worst']:.1e} | "
              f"{os.getloadavg()[0]:.2f} |", flush=True)
    if args.lm_eval_python:
        print(f"\nmix: solar-jax {total_ours:.1f} s, lm-eval {total_theirs:.1f} s, "
              f"speedup {total_theirs / total_ours:.2f}x")
    else:
        print(f"\nmix: solar-jax {total_ours:.1f} s (pass --lm-eval-python to time lm-eval)")


if __name__ == "__main__":
    main()
