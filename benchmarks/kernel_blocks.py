"""Tile sizes of the TPU flash attention kernels, per generation, from the compiler alone.

No TPU needed (libtpu's deviceless compile, solar_jax.kernels.aot). For each generation
and each candidate BlockSizes, at the attention shape of the SOLAR-10.7B pretrain step
(per sequence: 4096 packed tokens, bf16, causal, segment ids, head_dim 128, GQA 4: 8 query
/ 2 kv heads, a quarter of its 32 / 8; every figure below scales with the head count),
the forward+backward is compiled and we print:

* whether Mosaic compiles it (VMEM bounds the tiles);
* `cost_analysis()["optimal_seconds"]`: XLA's roofline for the program, which for the
  kernels is built from their CostEstimate (solar_jax/kernels/cost.py: exact FLOPs of the
  visible tile pairs, so the causal diagonal's waste grows with the tile, and HBM bytes,
  which fall with the tile as K/V and Q/dO are re-read less often);
* (--llo) the kernels' cycles in the compiler's static LLO profile
  (`--xla_jf_dump_static_llo_profile_to`). It does not count the bodies under `pl.when`
  (it falls ~3x per doubling of both tiles, like the grid step count), so it is read as the
  per-grid-step overhead: the DMA issue and bookkeeping that larger tiles amortize;
* estimate = optimal_seconds + static cycles / clock: the sum of the two (with --llo).

    python benchmarks/kernel_blocks.py [--llo] [v5e v5p v6e v4] [1024x2048 ...]

--llo adds the static LLO profile; libtpu 0.0.42 aborts it on v5e and v6e ("Unsupported
DMA direction ... on VL/VLP"), so use it for v5p and v4 only.

Timings of the compile itself depend on the machine's load and are printed only as a
guide. The chosen presets live in solar_jax/kernels/blocks.py; results in RESULTS.md.
"""

from __future__ import annotations

import glob
import os
import re
import sys
import tempfile

PROFILE_DIR = tempfile.mkdtemp(prefix="llo-profile-")
LLO = "--llo" in sys.argv  # libtpu 0.0.42 aborts the static profile on v5e/v6e (VL DMAs)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # libtpu's lock: others may compile
if LLO:
    os.environ["LIBTPU_INIT_ARGS"] = (os.environ.get("LIBTPU_INIT_ARGS", "")
                                      + f" --xla_jf_dump_static_llo_profile_to={PROFILE_DIR}")

from solar_jax.kernels import aot  # noqa: E402  (after the environment is set)

# TensorCore clock (GHz), to turn static cycles into seconds: public figures.
CLOCK_GHZ = {"v4": 1.05, "v5e": 1.5, "v5p": 1.75, "v6e": 1.75}
CANDIDATES = [(256, 512), (512, 512), (512, 1024), (1024, 1024), (1024, 2048), (2048, 2048)]


def static_cycles() -> int:
    total = 0
    for path in glob.glob(os.path.join(PROFILE_DIR, "*flash*")):
        match = re.search(r"estimated_cycles: (\d+)", open(path).read())
        total += int(match.group(1)) if match else 0
        os.remove(path)
    return total


def main(argv: list[str]) -> None:
    argv = [a for a in argv if a != "--llo"]
    targets = [a for a in argv if "x" not in a] or ["v5e", "v5p", "v6e"]
    only = [tuple(map(int, a.split("x"))) for a in argv if "x" in a]  # e.g. 1024x2048
    for target in targets:
        devices = aot.devices(target)
        print(f"\n{target} ({devices[0].device_kind}), SOLAR shape fwd+bwd:")
        print(f"{'blocks (q, kv)':>16} {'compiles':>9} {'GFLOP':>7} {'MB moved':>9} "
              f"{'optimal_s':>10} {'llo cycles':>11} {'estimate':>10} {'compile s':>9}")
        for bq, bk in only or CANDIDATES:
            for path in glob.glob(os.path.join(PROFILE_DIR, "*")):
                os.remove(path)
            case = aot.Case(f"{bq}x{bk}", head_dim=128, heads=8, kv_heads=2, seq=4096,
                            segments=True, blocks=(bq, bk, bq, bk, bq, bk))
            out = aot.compile_case(case, devices)
            if not out["ok"]:
                reason = out["error"].splitlines()[0][:90]
                print(f"{bq:>7}, {bk:<7} {'no':>9}  {reason}")
                continue
            cycles = static_cycles() if LLO else 0
            optimal = out["cost"].get("optimal_seconds", float("nan"))
            estimate = optimal + cycles / (CLOCK_GHZ[target] * 1e9)
            flops = out["cost"].get("flops", 0) / 1e9
            moved = out["cost"].get("bytes accessed", 0) / 1e6
            print(f"{bq:>7}, {bk:<7} {'yes':>9} {flops:>7.1f} {moved:>9.1f} "
                  f"{optimal * 1e3:>8.3f}ms {cycles:>11} "
                  f"{estimate * 1e3:>8.3f}ms {out['seconds']:>9.1f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
