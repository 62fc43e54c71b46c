"""Decode throughput of `solar_jax.generate` beside transformers `generate`, same run.

SmolLM2-135M-Instruct (the GGUF, converted once to an HF folder both libraries load),
fp32, greedy, the same prompts (GSM8K questions of different lengths, left-padded), EOS
ignored so every row decodes exactly --new-tokens tokens. Decode tokens/s is measured
without the prefill: (time for N new tokens - time for 1 new token) / (N - 1) per step,
times the batch size; each number is the best of --repeats after a warm-up (compilation).
Each framework runs in a fresh process of its own, one after the other: in one shared
process torch's spin-waiting OpenMP workers slowed solar-jax by ~25%, and with
OMP_WAIT_POLICY=PASSIVE transformers lost speed instead. --runs N repeats that pair N
times, interleaved (ours, theirs, ours, ...), and reports each framework's median over
its N fresh processes: fresh processes of one framework varied by up to +-25% here, so a
single pair of runs cannot show a 2x ratio reliably. The load average is printed per run.

The memory-bandwidth bound at batch 1: a decode step must read every weight once (the tied
embedding serves as the LM head) plus the KV cache, so tokens/s <= bandwidth / bytes read.
The bandwidth is measured here with a large numpy copy (read + write bytes per second).

The time of the 1-token run is reported too: the prefill and first token, the cost that
long prompts (--shots 5: 5-shot GSM8K size) put before the first streamed token.

    .venv/bin/python benchmarks/generate.py [--runs 5] [--new-tokens 64] [--batch-sizes 1 8]
        [--shots K]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import cpu_model  # benchmarks/ runs as scripts: their folder is on sys.path

ROOT = Path(__file__).resolve().parent.parent
GSM8K = ROOT / "solar_jax" / "resources" / "data" / "gsm8k_train.jsonl"  # shipped package data


def copy_bandwidth(n_bytes: int = 512 << 20, repeats: int = 5) -> float:
    """Bytes/s moved by np.copyto over a buffer far larger than the caches (read+write)."""
    a = np.ones(n_bytes // 4, np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - start)
    return 2 * n_bytes / best


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up: compilation, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def decode_rate(run, batch: int, new_tokens: int, repeats: int) -> tuple[float, float]:
    """(decode tokens/s of all rows with the prefill and first token subtracted, seconds
    for the prefill and first token)."""
    full = best_of(lambda: run(new_tokens), repeats)
    first = best_of(lambda: run(1), repeats)
    # Under heavy load the 1-token run can take longer than the full one: no rate then
    # (NaN, left out of the medians) rather than a huge one.
    rate = batch * (new_tokens - 1) / (full - first) if full > first else float("nan")
    return rate, first


def prompt_ids(tok, batch: int, shots: int = 0) -> list[list[int]]:
    """The first 8 GSM8K questions, repeated to fill the batch (same ids on both sides).
    shots > 0 prefixes each with that many solved problems (lines 100 on), in the
    `Question: ...\nAnswer: ...` format of few-shot GSM8K, for long prompts."""
    with open(GSM8K) as f:
        records = [json.loads(line) for _, line in zip(range(100 + shots), f)]
    prefix = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n"
                     for r in records[100:100 + shots])
    questions = [(f"{prefix}Question: {r['question']}\nAnswer:" if shots else r["question"])
                 for r in records[:8]]
    return [tok.encode(q) for q in (questions * batch)[:batch]]


def measure_ours(model_dir: Path, args) -> dict[int, float]:
    import solar_jax
    from solar_jax.generate import generate

    ours = solar_jax.load_model(model_dir)
    tok = solar_jax.load_tokenizer(model_dir)
    rates, first = {}, {}
    for batch in args.batch_sizes:
        prompts = prompt_ids(tok, batch, args.shots)
        rates[batch], first[batch] = decode_rate(
            lambda n: generate(ours, prompts, n, ignore_eos=True, chunk=args.chunk),
            batch, args.new_tokens, args.repeats)
    return rates | {"first": first}


def measure_theirs(model_dir: Path, args) -> dict[int, float]:
    import torch
    from transformers import AutoModelForCausalLM

    from solar_jax.tokenizer import load_tokenizer

    theirs = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tok = load_tokenizer(model_dir)
    tok.padding_side = "left"
    rates, first = {}, {}
    for batch in args.batch_sizes:
        prompts = prompt_ids(tok, batch, args.shots)
        enc = tok([tok.decode(p) for p in prompts], return_tensors="pt", padding=True,
                  add_special_tokens=False)

        def run(n):
            with torch.no_grad():
                theirs.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                pad_token_id=tok.pad_token_id or tok.eos_token_id)

        rates[batch], first[batch] = decode_rate(run, batch, args.new_tokens, args.repeats)
    return rates | {"first": first, "threads": torch.get_num_threads(),
                    "torch": torch.__version__}


def run_side(side: str, model_dir: Path, args) -> dict:
    """One framework in a fresh process of its own: neither's thread pool (torch's
    spin-waiting OpenMP workers, XLA's) can slow the other, and each gets the default
    environment its users would have."""
    out = model_dir.parent / f"{side}.json"
    cmd = [sys.executable, __file__, "--side", side, "--model-dir", str(model_dir),
           "--side-out", str(out), "--new-tokens", str(args.new_tokens), "--repeats",
           str(args.repeats), "--chunk", str(args.chunk), "--shots", str(args.shots),
           "--batch-sizes", *map(str, args.batch_sizes)]
    subprocess.run(cmd, check=True)
    rates = {int(k) if k.isdigit() else k: v for k, v in json.loads(out.read_text()).items()}
    rates["first"] = {int(k): v for k, v in rates["first"].items()}
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model (default: SmolLM2-135M-Instruct GGUF)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runs", type=int, default=1,
                    help="fresh-process runs per framework, interleaved; medians reported")
    ap.add_argument("--chunk", type=int, default=16, help="solar-jax tokens per device call")
    ap.add_argument("--shots", type=int, default=0,
                    help="prefix each prompt with this many solved GSM8K problems (long "
                         "prompts: 5 gives ~800 tokens, the size of 5-shot GSM8K)")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    ap.add_argument("--side", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--side-out", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.side:  # a child: measure one framework, write its rates
        measure = measure_ours if args.side == "ours" else measure_theirs
        Path(args.side_out).write_text(json.dumps(measure(Path(args.model_dir), args)))
        return

    import jax

    import solar_jax
    from solar_jax.demo import smollm2_gguf

    work = Path(tempfile.mkdtemp(prefix="bench_generate_"))
    model_dir = solar_jax.convert(args.model or smollm2_gguf(), work / "hf", to="hf")
    model = solar_jax.load_model(model_dir)
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(model.params))
    cfg = model.config
    prompt_lens = {b: max(len(p) for p in prompt_ids(solar_jax.load_tokenizer(model_dir), b,
                                                     args.shots))
                   for b in args.batch_sizes}
    del model
    bw = copy_bandwidth()
    if args.runs < 1:
        sys.exit("error: --runs must be at least 1")
    runs = []  # (load average before, ours, theirs) per interleaved pair
    for r in range(args.runs):
        load = os.getloadavg()[0]
        ours = run_side("ours", model_dir, args)
        theirs = run_side("theirs", model_dir, args)
        runs.append((load, ours, theirs))
        print(f"run {r + 1}/{args.runs} (load {load:.2f}): " + ", ".join(
            f"batch {b} {ours[b]:.1f} / {theirs[b]:.1f} tok/s = {ours[b] / theirs[b]:.2f}x"
            for b in args.batch_sizes), flush=True)

    def med(side: int, key, batch: int) -> float:
        values = [run[side][key][batch] if key else run[side][batch] for run in runs]
        return statistics.median([v for v in values if v == v] or [float("nan")])

    rows = []
    for batch in args.batch_sizes:
        # Bytes one step reads at this batch: weights + the KV cache at mid-generation.
        kv = (2 * cfg.num_layers * batch * (prompt_lens[batch] + args.new_tokens // 2)
              * cfg.num_kv_heads * cfg.head_dim * 4)
        bound = bw / (weight_bytes + kv) * batch
        mine, ref = med(1, None, batch), med(2, None, batch)
        rows.append(dict(batch=batch, solar_jax=mine, transformers=ref, speedup=mine / ref,
                         bound=bound, fraction=mine / bound, prompt_tokens=prompt_lens[batch],
                         first_ours=med(1, "first", batch), first_theirs=med(2, "first", batch),
                         per_run=[run[1][batch] / run[2][batch] for run in runs]))

    theirs = runs[0][2]
    loads = [run[0] for run in runs]
    print(f"\nmachine: {cpu_model()}, {os.cpu_count()} cores, "
          f"numpy copy bandwidth {bw / 1e9:.2f} GB/s; load average {min(loads):.2f}-"
          f"{max(loads):.2f} before the runs, {os.getloadavg()[0]:.2f} after")
    print(f"model: SmolLM2-135M fp32, {weight_bytes / 1e6:.0f} MB of weights; "
          f"{args.new_tokens} new tokens, greedy, chunk {args.chunk}; jax {jax.__version__} "
          f"({jax.default_backend()}), torch {theirs['torch']} ({theirs['threads']} threads); "
          f"each framework timed in its own process, median of {args.runs} interleaved "
          "fresh-process runs\n")
    print("| batch | solar-jax tok/s | transformers tok/s | speedup (of medians) | per-run "
          "speedups | bandwidth bound tok/s | fraction of bound |\n"
          "|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['solar_jax']:.1f} | {r['transformers']:.1f} | "
              f"{r['speedup']:.2f}x | {', '.join(f'{x:.2f}' for x in r['per_run'])} | "
              f"{r['bound']:.1f} | {r['fraction']:.0%} |")
    print("\nPrefill and first token (seconds, best of the repeats, median of the runs):\n\n"
          "| batch | longest prompt (tokens) | solar-jax s | transformers s | speedup |\n"
          "|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['prompt_tokens']} | {r['first_ours']:.2f} | "
              f"{r['first_theirs']:.2f} | {r['first_theirs'] / r['first_ours']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(bandwidth=bw, loads=loads, rows=rows), indent=1))


if __name__ == "__main__":
    main()
