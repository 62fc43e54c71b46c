"""Compile time of the decode loop: the unrolled CPU loop against the scanned one, and the
unrolled loop again with JAX's persistent compilation cache warm (what the CLI gives a
second run of the same shapes).

SmolLM2-135M-Instruct (30 layers), fp32, batch 1, one short prompt. Each variant runs in a
fresh process; "first chunk" is the first `Decoder.next()` (compile + 16 tokens) and
"compile" subtracts a steady-state chunk from it. The peer here is our own scanned loop,
which decodes slower (benchmarks/generate.py) but compiles faster.

    .venv/bin/python benchmarks/decode_compile.py [--model GGUF_OR_DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(model_dir: str, unroll: bool, cache_dir: str | None) -> dict:
    import solar_jax
    from solar_jax import compile_cache
    from solar_jax.generate.engine import Decoder
    from solar_jax.generate.sampling import Sampler

    if cache_dir:
        compile_cache.enable(cache_dir)
    model = solar_jax.load_model(model_dir)
    decoder = Decoder(model, [[1, 2, 3, 4, 5]], 64, sampler=Sampler(), seed=0, end_ids=(),
                      pad_id=0, chunk=16, unroll_layers=unroll)
    decoder.start()
    start = time.perf_counter()
    decoder.next()
    first = time.perf_counter() - start
    start = time.perf_counter()
    decoder.next()
    steady = time.perf_counter() - start
    return dict(first=first, compile=first - steady, unrolled=decoder._layers is not None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model (default: SmolLM2-135M-Instruct GGUF)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        model_dir, unroll, cache_dir = args.child
        print(json.dumps(measure(model_dir, unroll == "1", cache_dir or None)))
        return

    import solar_jax
    from solar_jax.demo import smollm2_gguf

    work = Path(tempfile.mkdtemp(prefix="bench_decode_compile_"))
    model_dir = solar_jax.convert(args.model or smollm2_gguf(), work / "hf", to="hf")
    cache = str(work / "xla_cache")

    def child(unroll: bool, cache_dir: str) -> dict:
        out = subprocess.run([sys.executable, __file__, "--child", str(model_dir),
                              "1" if unroll else "0", cache_dir],
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    rows = [("scanned layers, no cache", child(False, "")),
            ("unrolled layers, no cache", child(True, "")),
            ("unrolled layers, cold persistent cache", child(True, cache)),
            ("unrolled layers, warm persistent cache", child(True, cache))]
    base = rows[0][1]["compile"]
    print("| decode loop | first chunk s | compile s | compile / scanned |\n|---|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['first']:.2f} | {r['compile']:.2f} | {r['compile'] / base:.2f}x |")


if __name__ == "__main__":
    main()
