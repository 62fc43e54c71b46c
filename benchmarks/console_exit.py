"""How long a solar-jax process takes to end after its last statement: Python's default
teardown against the console command's (cyclic collector off, solar_jax.cli).

Each run is a fresh process that imports what `solar-jax eval` imports, loads a model and
its tokenizer, prints a timestamp as its last statement and exits; the parent takes the
time from that timestamp to the process's end. A (default teardown) and B (`gc.disable();
gc.freeze()` first, as `solar_jax.cli.main` does for the console command) alternate for
--runs pairs in the same run.

    .venv/bin/python benchmarks/console_exit.py             # SmolLM2 (the shipped GGUF)
    .venv/bin/python benchmarks/console_exit.py --model DIR
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CHILD = ("import gc, sys, time\n"
         "from solar_jax.api import load_model\n"
         "from solar_jax.eval import evaluate  # noqa: F401 (what eval imports)\n"
         "from solar_jax.tokenizer import load_tokenizer\n"
         "model = load_model({model!r}, None)\n"
         "model.tokenizer = load_tokenizer({model!r})\n"
         "if {frozen}:\n"
         "    gc.disable(); gc.freeze()\n"
         "print(time.time(), flush=True)\n")


def exit_seconds(model: str, frozen: bool) -> float:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", CHILD.format(model=model, frozen=frozen)],
                          env=env, capture_output=True, text=True)
    ended = time.time()
    if proc.returncode:
        sys.exit(f"child failed: {proc.stderr.strip()[-2000:]}")
    return ended - float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None,
                    help="HF folder, solar-jax checkpoint or .gguf (default: SmolLM2's GGUF)")
    ap.add_argument("--runs", type=int, default=5)
    opts = ap.parse_args()
    if opts.runs < 1:
        sys.exit("error: --runs must be at least 1")
    if opts.model is None:
        from solar_jax.demo import smollm2_gguf
        opts.model = str(smollm2_gguf())
    default, frozen = [], []
    for _ in range(opts.runs):
        default.append(exit_seconds(opts.model, False))
        frozen.append(exit_seconds(opts.model, True))
    print(f"model {opts.model}, {opts.runs} alternating pairs, {os.cpu_count()} CPUs\n")
    print("| teardown | seconds from the last statement to exit | median |\n|---|---|---:|")
    for label, xs in (("Python's default", default), ("collector off (console)", frozen)):
        print(f"| {label} | {', '.join(f'{x:.3f}' for x in xs)} | {statistics.median(xs):.3f} |")
    print(f"\nsaved per process: {statistics.median(default) - statistics.median(frozen):.3f} s "
          f"(median to median)")


if __name__ == "__main__":
    main()
