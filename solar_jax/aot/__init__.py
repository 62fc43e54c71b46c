"""Ahead-of-time compilation for named TPU and GPU topologies, with no accelerator attached.

    report = compile_for_topology(cfg, "v5p-128", num_slices=1, program="train")
    print(format_table(report)); check_fit(report)   # raises DoesNotFit (exit 1)

builds exactly the program(s) `solar-jax train` (lm, sft, dpo), `eval` and `generate` would
run for the run config `cfg` (solar_jax.aot.programs), from shapes alone, lowers and
compiles them for compile-only devices of the topology (solar_jax.aot.topology) on the mesh
and rules the run would use, and reports per-chip memory against HBM, compile time, model
FLOPs and (TPU) the compiler's step-time estimate (solar_jax.aot.report). The CLI is
`solar-jax compile`; docs/compile.md has the details.
"""

from __future__ import annotations


from solar_jax.aot.programs import build_programs, model_config
from solar_jax.aot.report import check_fit as _check_fit
from solar_jax.aot.report import compile_program, format_table
from solar_jax.aot.topology import GENERATIONS, Topology, compile_devices, parse_topology
from solar_jax.errors import SolarError
from solar_jax.sharding import make_mesh
from solar_jax.train.state import rules_for


def compile_for_topology(cfg, topology: str | None = None, *, num_slices: int = 1,
                         program: str = "train", log=None) -> dict:
    """Compile `cfg`'s programs for `topology` (default: the config's `topology` key);
    returns the report dict (every number of the table). `cfg` is a TrainConfig."""
    name = topology or cfg.topology
    if not name:
        raise SolarError("no topology: pass --topology NAME or set `topology:` in the config")
    topo = parse_topology(name, num_slices)
    config = model_config(cfg)
    rules = rules_for(cfg)
    devices = compile_devices(topo)
    mesh = make_mesh(cfg.mesh, devices)
    programs = build_programs(cfg, config, mesh, rules, program)
    rows = []
    for p in programs:
        if log:
            log(f"compiling {p.name} for {topo.name} x{topo.num_slices} ...")
        rows.append(compile_program(p, topo))
    return {"config": getattr(cfg, "_source", None) or cfg.model,
            "topology": topo.describe(), "mesh": dict(mesh.shape),
            "rules": {k: list(v) for k, v in rules.as_dict().items()},
            "model": {"num_params": config.num_params, "num_layers": config.num_layers,
                      "remat": config.remat, "attention_impl": config.attention_impl,
                      "param_dtype": config.param_dtype, "compute_dtype": config.compute_dtype},
            "run": {k: getattr(cfg, k) for k in ("objective", "batch_size", "seq_len",
                                                 "grad_accum", "loss_chunk")},
            "programs": rows,
            "fits": all(r["fits"] for r in rows)}


def check_fit(report: dict, cfg) -> None:
    """Raise DoesNotFit naming the first program of `report` that does not fit."""
    topo = parse_topology(report["topology"]["name"], report["topology"]["num_slices"])
    _check_fit(report["programs"], cfg, topo)


__all__ = ["GENERATIONS", "Topology", "check_fit", "compile_devices", "compile_for_topology",
           "compile_program", "format_table", "parse_topology"]
