"""Decode throughput of `solar_jax.generate` beside transformers `generate`, same run.

SmolLM2-135M-Instruct (the GGUF, converted once to an HF folder both libraries load),
fp32, greedy, the same prompts (GSM8K questions of different lengths, left-padded), EOS
ignored so every row decodes exactly --new-tokens tokens. Decode tokens/s is measured
without the prefill: (time for N new tokens - time for 1 new token) / (N - 1) per step,
times the batch size; each number is the best of --repeats after a warm-up (compilation).

The memory-bandwidth bound at batch 1: a decode step must read every weight once (the tied
embedding serves as the LM head) plus the KV cache, so tokens/s <= bandwidth / bytes read.
The bandwidth is measured here with a large numpy copy (read + write bytes per second).

    .venv/bin/python benchmarks/generate.py [--new-tokens 64] [--batch-sizes 1 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k_train.jsonl"


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


def decode_rate(run, batch: int, new_tokens: int, repeats: int) -> float:
    """Decode tokens/s (all rows), the prefill and first token subtracted."""
    full = best_of(lambda: run(new_tokens), repeats)
    first = best_of(lambda: run(1), repeats)
    return batch * (new_tokens - 1) / max(full - first, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model (default: SmolLM2-135M-Instruct GGUF)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=16, help="solar-jax tokens per device call")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    import solar_jax
    from solar_jax.demo import smollm2_gguf
    from solar_jax.generate import generate

    work = Path(tempfile.mkdtemp(prefix="bench_generate_"))
    model_dir = solar_jax.convert(args.model or smollm2_gguf(), work / "hf", to="hf")
    ours = solar_jax.load_model(model_dir)
    tok = solar_jax.load_tokenizer(model_dir)
    theirs = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with open(GSM8K) as f:
        questions = [json.loads(line)["question"] for _, line in zip(range(8), f)]
    bw = copy_bandwidth()
    weight_bytes = sum(x.nbytes for x in __import__("jax").tree.leaves(ours.params))
    cfg = ours.config

    rows = []
    for batch in args.batch_sizes:
        prompts = [tok.encode(q) for q in (questions * batch)[:batch]]

        def run_ours(n):
            generate(ours, prompts, n, ignore_eos=True, chunk=args.chunk)

        tok.padding_side = "left"
        enc = tok([tok.decode(p) for p in prompts], return_tensors="pt", padding=True,
                  add_special_tokens=False)

        def run_theirs(n):
            with torch.no_grad():
                theirs.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                pad_token_id=tok.pad_token_id or tok.eos_token_id)

        mine = decode_rate(run_ours, batch, args.new_tokens, args.repeats)
        ref = decode_rate(run_theirs, batch, args.new_tokens, args.repeats)
        # Bytes one step reads at this batch: weights + the KV cache at mid-generation.
        prompt_len = max(len(p) for p in prompts)
        kv = (2 * cfg.num_layers * batch * (prompt_len + args.new_tokens // 2)
              * cfg.num_kv_heads * cfg.head_dim * 4)
        bound = bw / (weight_bytes + kv) * batch
        rows.append(dict(batch=batch, solar_jax=mine, transformers=ref, speedup=mine / ref,
                         bound=bound, fraction=mine / bound))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"numpy copy bandwidth {bw / 1e9:.2f} GB/s")
    print(f"model: SmolLM2-135M fp32, {weight_bytes / 1e6:.0f} MB of weights; "
          f"{args.new_tokens} new tokens, greedy, chunk {args.chunk}; jax "
          f"{__import__('jax').__version__} ({__import__('jax').default_backend()}), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)\n")
    print("| batch | solar-jax tok/s | transformers tok/s | speedup | bandwidth bound tok/s "
          "| fraction of bound |\n|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['solar_jax']:.1f} | {r['transformers']:.1f} | "
              f"{r['speedup']:.2f}x | {r['bound']:.1f} | {r['fraction']:.0%} |")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(bandwidth=bw, rows=rows), indent=1))


if __name__ == "__main__":
    main()
