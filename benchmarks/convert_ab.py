"""A/B of one conversion setting: whole `solar-jax convert` processes in alternating pairs.

Builds a random Mistral-shaped bf16 HF checkpoint of about --size-gb (as convert_memory.py
does) and converts it once to a solar-jax checkpoint, then runs, each as a fresh process
on the console path (the huge-page restart included), A and B alternately for --pairs
pairs, with the page cache synced (untimed) before every run:

  --setting prefetch   HF -> solar with `writers.PREFETCH_BYTES` at 256 MiB (A, the old
                       budget) against 1 GiB (B, the default): is reading the next leaf
                       while one is written worth holding two leaves?
  --setting hugepages  solar -> HF with SOLAR_JAX_HUGEPAGES=0 (A) against the default (B):
                       glibc's huge-page tunable for tensorstore's read buffers.

Prints every wall time, the per-pair ratios B / A and their median.

    .venv/bin/python benchmarks/convert_ab.py --setting prefetch --pairs 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ckpt_gen import DTYPES, machine_info, mistral_shape, write_random_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# each run: the console path (cli.main() on sys.argv) after an optional budget override
CHILD = ("import sys\n"
         "from solar_jax.checkpoint import writers\n"
         "if {budget} is not None: writers.PREFETCH_BYTES = {budget}\n"
         "from solar_jax import cli\n"
         "sys.argv = ['solar-jax', 'convert', *{args!r}]\n"
         "sys.exit(cli.main())\n")


def timed_convert(args: list[str], dst: Path, budget: int | None = None,
                  hugepages: bool = True) -> float:
    shutil.rmtree(dst, ignore_errors=True)
    os.sync()
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("GLIBC_TUNABLES", None)
    if not hugepages:
        env["SOLAR_JAX_HUGEPAGES"] = "0"
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", CHILD.format(budget=budget, args=args)],
                            env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"convert {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setting", choices=("prefetch", "hugepages"), required=True)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--workdir", default=None, help="default: a fresh temp dir under /tmp")
    opts = ap.parse_args()
    if opts.pairs < 1:
        sys.exit("error: --pairs must be at least 1")

    work = Path(opts.workdir or tempfile.mkdtemp(prefix="convert_ab-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    src, solar, out = work / "src_hf", work / "solar", work / "out"
    try:
        info = machine_info()
        print(f"machine: {info['nproc']} CPUs ({info['cpu']}); setting {opts.setting}, "
              f"{opts.pairs} pairs", flush=True)
        dtype_name, itemsize = DTYPES["bf16"]
        if not (src / "config.json").is_file():
            shutil.rmtree(src, ignore_errors=True)
            write_random_checkpoint(src, mistral_shape(opts.size_gb * 1e9, itemsize),
                                    dtype_name, int(1e9))
        if opts.setting == "prefetch":
            labels = ("PREFETCH_BYTES 256 MiB", "PREFETCH_BYTES 1 GiB")
            runs = (lambda: timed_convert([str(src), str(out)], out, budget=256 << 20),
                    lambda: timed_convert([str(src), str(out)], out, budget=1 << 30))
        else:
            timed_convert([str(src), str(solar)], solar)
            labels = ("SOLAR_JAX_HUGEPAGES=0", "huge pages (default)")
            runs = tuple(lambda h=h: timed_convert([str(solar), str(out), "--to", "hf"], out,
                                                   hugepages=h) for h in (False, True))
        walls: tuple[list[float], list[float]] = ([], [])
        for k in range(opts.pairs):
            order = (0, 1) if k % 2 == 0 else (1, 0)  # alternate which side goes first
            for side in order:
                walls[side].append(runs[side]())
            print(f"pair {k + 1}: A {walls[0][-1]:.2f} s, B {walls[1][-1]:.2f} s "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
        ratios = [b / a for a, b in zip(*walls)]
        print(f"\n| run | wall s per pair | median |\n|---|---|---:|")
        for label, ws in zip(labels, walls):
            print(f"| {label} | {', '.join(f'{w:.2f}' for w in ws)} | "
                  f"{statistics.median(ws):.2f} |")
        print(f"\nB / A per pair: {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"median {statistics.median(ratios):.2f}x")
    finally:
        if not opts.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
