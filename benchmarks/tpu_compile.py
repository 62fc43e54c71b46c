"""SOLAR-10.7B's pretrain step compiled for real TPU slices and GPU nodes, on this CPU host.

    python benchmarks/tpu_compile.py                       # every topology x attention x remat
    python benchmarks/tpu_compile.py --topologies v5p-128 --attention xla pallas --remat save_qkv

For each (topology, attention_impl, remat): per-chip arguments / temporaries / total against
HBM (or the compiler's RESOURCE_EXHAUSTED figure), compile time, and on TPU the compiler's
estimated step time and the MFU it implies (estimates, labelled so). Every compile runs in
its own subprocess, so one topology's libtpu state or a failed compile cannot touch the
next, and the peak memory of the host stays one compile's. Rows go to stdout as they finish
and, with --out, to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "solar-10.7b" / "pretrain.yaml"
TOPOLOGIES = ("v4-128", "v5p-128", "v5e-256", "v6e-64", "h100-8", "h200-8")
ATTENTION = ("xla", "pallas")
REMAT = ("save_qkv", "save_dots", "full", "none")
GiB = 1024 ** 3

ONE = """
import json, sys
from solar_jax.aot import compile_for_topology
from solar_jax.commands.compile import _host_cpu_only
from solar_jax.train import load_train_config
_host_cpu_only()
topology, overrides = sys.argv[1], sys.argv[2:]
cfg = load_train_config({config!r}, overrides)
print(json.dumps(compile_for_topology(cfg, topology, program="train"), default=str))
"""

def run_one(script: str, topology: str, overrides: list[str], timeout: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), SOLAR_JAX_COMPILE_CACHE="off")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script.format(config=str(CONFIG)), topology,
                           *overrides], capture_output=True, text=True, env=env,
                          timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        return {"error": tail[0][:300], "wall_seconds": wall}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_seconds"] = wall
    return out


def gib(x) -> str:
    return "-" if x is None else f"{x / GiB:.1f}"


def row_text(topology, attention, remat, r) -> str:
    if "error" in r:
        return f"| {topology} | {attention} | {remat} | error: {r['error']} |||||||"
    p = r["programs"][0]
    total = p.get("total_bytes")
    verdict = "fits" if p["fits"] else ("refused" if p["compiler_refused"] else "over HBM")
    step = p.get("estimated_step_seconds")
    mfu = p.get("estimated_mfu")
    return (f"| {topology} | {attention} | {remat} | {gib(p.get('argument_bytes'))} | "
            f"{gib(p.get('temp_bytes'))} | {gib(total)} / {gib(p['hbm_bytes'])} | {verdict} | "
            f"{p['compile_seconds']:.0f} | {'-' if step is None else f'{step:.2f}'} | "
            f"{'-' if mfu is None else f'{100 * mfu:.0f}%'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topologies", nargs="+", default=TOPOLOGIES)
    ap.add_argument("--attention", nargs="+", default=ATTENTION)
    ap.add_argument("--remat", nargs="+", default=REMAT)
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per compile")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores "
          f"({cpu}), load average {os.getloadavg()[0]:.1f}; {CONFIG.relative_to(ROOT)} "
          f"(batch 1024 x 4096, fsdp over all chips, fp32 master weights, bf16 compute)")
    print("| topology | attention | remat | args GiB | temp GiB | total / HBM GiB | verdict | "
          "compile s | est. step s* | est. MFU* |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for topology in args.topologies:
        for attention in args.attention:
            for remat in args.remat:
                r = run_one(ONE, topology, [f"attention_impl={attention}", f"remat={remat}"],
                            args.timeout)
                print(row_text(topology, attention, remat, r), flush=True)
                results.append({"topology": topology, "attention_impl": attention,
                                "remat": remat, **r})
    print("* estimates, not measurements: model FLOPs at the TPU compiler's estimated FLOP "
          "rate (its flops / optimal_seconds) and that rate over peak bf16; none on GPU. "
          "'refused': RESOURCE_EXHAUSTED, total = the compiler's figure")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
