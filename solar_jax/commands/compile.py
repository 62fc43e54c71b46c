"""solar-jax compile CONFIG.yaml [key=value ...] --topology NAME [--num-slices N]
[--program train|eval|generate|all] [--out report.json]

Compiles the run's programs for a TPU slice or GPU node with none attached, prints one row
per program (per-chip memory against HBM, compile time, FLOPs, the TPU compiler's step-time
estimate) and exits 0 when all fit, 1 with `error: does not fit: ...` when one does not,
2 for bad input. Python: solar_jax.aot.compile_for_topology.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from solar_jax.destination import write_text_atomic


def register(sub) -> None:
    p = sub.add_parser("compile", help="compile a run for a TPU/GPU topology and check it fits")
    p.add_argument("config", help="run config YAML (as for train)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides")
    p.add_argument("--topology", default=None,
                   help="v4-N, v5p-N, v5e-N (v5litepod-N), v6e-N, h100-N, h200-N "
                        "(default: the config's topology key)")
    p.add_argument("--num-slices", type=int, default=1, help="TPU slices (dcn axis)")
    p.add_argument("--program", choices=("train", "eval", "generate", "all"), default="train")
    p.add_argument("--out", default=None, help="write the report as JSON")
    p.set_defaults(func=run)


def _host_cpu_only() -> None:
    """Compile-only TPU/GPU devices need no backend but the host's CPU (the CUDA topology
    requires that no CUDA client exists); this process never runs anything."""
    import jax
    from jax._src import xla_bridge
    if not xla_bridge.backends_are_initialized():
        os.environ["JAX_PLATFORMS"] = "cpu"
        jax.config.update("jax_platforms", "cpu")


def write_report(report: dict, out: str) -> None:
    write_text_atomic(out, json.dumps(report, indent=2, default=str) + "\n")


def run(args) -> None:
    from solar_jax.aot import check_fit, compile_for_topology, format_table
    from solar_jax.errors import SolarError
    from solar_jax.train import load_train_config

    if args.out and not Path(args.out).resolve().parent.is_dir():
        raise SolarError(f"--out {args.out}: directory {Path(args.out).parent} does not exist")
    _host_cpu_only()
    cfg = load_train_config(args.config, args.overrides)
    cfg._source = args.config
    report = compile_for_topology(cfg, args.topology, num_slices=args.num_slices,
                                  program=args.program,
                                  log=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_table(report), flush=True)
    if args.out:
        write_report(report, args.out)
    check_fit(report, cfg)
