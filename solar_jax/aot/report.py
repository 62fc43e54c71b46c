"""Compile programs, read the compiler's memory and cost analyses, judge the fit.

Per chip: arguments (params, optimizer state, batch), temporaries (activations, gradients,
workspace), outputs, and total = arguments + outputs - aliased (donated state updated in
place) + temporaries + generated code, against the chip's HBM.

Model FLOPs count the whole layer stack: 6 x (params except the input embedding) per
trained token plus 12 x layers x heads x head_dim x seq for the attention matmuls (full
S x S, no causal credit), a third of that for forward-only programs. The compiler's own
count (`cost_analysis()["flops"]`, per chip, TPU only) is reported beside it, but XLA's
cost model counts each while-loop body once: a scanned stack of 48 layers counts as one
layer, so the ratio is about 1/layers plus what lies outside the scan. Its `optimal_seconds`
is for the same once-counted program. What carries over is the rate: the compiler's FLOPs
over its seconds is its estimate of how fast this program's operations run on the chip, so
the estimated step time is the model FLOPs per chip at that rate, and the estimated MFU that
rate over the chip's peak. Both are estimates from a cost model, labelled so. No GPU
estimate exists (cost_analysis is None there, and without a device there is no autotuning).
"""

from __future__ import annotations

import re
import time

from solar_jax.aot.topology import GiB, Topology
from solar_jax.errors import DoesNotFit

_OOM = ("RESOURCE_EXHAUSTED", "Ran out of memory", "out of memory")


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) and x else x


def _parse_need(message: str) -> int | None:
    """The per-chip bytes a refused program asked for, from XLA's message, e.g.
    `HLO temporaries (484.64G) exceeds available HBM (95.74G)`."""
    m = re.search(r"\(([\d.]+)([KMGT])\) exceeds", message)
    if not m:
        m = re.search(r"[Uu]sed ([\d.]+)([KMGT]) of ", message)
    if not m:
        return None
    scale = {"K": 1024, "M": 1024 ** 2, "G": GiB, "T": 1024 ** 4}[m.group(2)]
    return int(float(m.group(1)) * scale)


def compile_program(program, topology: Topology) -> dict:
    """One row: memory, time, FLOPs, fit. A compiler refusal for memory is a row with
    fits=False and the compiler's message, not an exception."""
    hbm = topology.hbm_bytes
    row = {"program": program.name, **program.shapes, "hbm_bytes": hbm,
           "model_flops": program.model_flops, "tokens": program.tokens}
    t0 = time.perf_counter()
    try:
        if program.compiled is None:
            program.compiled = program.lower().compile()
    except Exception as e:  # XLA raises its own runtime error type; memory is ours to report
        message = " ".join(str(e).split())
        if not any(k in message for k in _OOM):
            raise
        row.update(compile_seconds=time.perf_counter() - t0, fits=False,
                   compiler_refused=True, compiler_message=message[:500],
                   total_bytes=_parse_need(message))
        return row
    row["compile_seconds"] = time.perf_counter() - t0
    compiled = program.compiled
    mem = compiled.memory_analysis()
    parts = {"argument_bytes": mem.argument_size_in_bytes,
             "output_bytes": mem.output_size_in_bytes,
             "alias_bytes": mem.alias_size_in_bytes,
             "temp_bytes": mem.temp_size_in_bytes,
             "code_bytes": mem.generated_code_size_in_bytes}
    total = (parts["argument_bytes"] + parts["output_bytes"] - parts["alias_bytes"]
             + parts["temp_bytes"] + parts["code_bytes"])
    row.update(parts, total_bytes=total, fits=total <= hbm, compiler_refused=False,
               hbm_margin=1 - total / hbm)
    cost = _first(compiled.cost_analysis()) if topology.generation.platform == "tpu" else None
    chips = topology.total_chips
    if cost:
        flops, seconds = float(cost.get("flops", 0.0)), float(cost.get("optimal_seconds", 0.0))
        row["compiler_flops_per_chip"] = flops
        row["compiler_optimal_seconds"] = seconds
        row["compiler_over_model_flops"] = (flops * chips / program.model_flops
                                            if program.model_flops else None)
        if flops > 0 and seconds > 0:
            # XLA's cost model counts each while-loop body once (the scanned layer stack,
            # grad_accum's micro-batch loop), so its seconds are not the step's. Its FLOP
            # rate over what it counted is meaningful: the step at that rate is the estimate.
            rate = flops / seconds
            row["estimated_flops_per_second_per_chip"] = rate
            row["estimated_step_seconds"] = program.model_flops / chips / rate
            row["estimated_mfu"] = rate / topology.generation.peak_bf16_flops
    return row


def suggestions(cfg, topology: Topology) -> str:
    """What to change, in the order most likely to help."""
    tips = []
    if cfg.attention_impl != "pallas":
        tips.append("attention_impl=pallas")
    if cfg.remat != "full":
        tips.append("remat=full")
    if cfg.objective != "dpo":
        tips.append(f"grad_accum={cfg.grad_accum * 2}")
    fsdp = cfg.mesh.get("fsdp", 1)
    if fsdp != -1 and fsdp < topology.chips:
        tips.append("mesh={data: 1, fsdp: -1, tensor: 1}")
    g = topology.generation
    n = topology.chips * 2 * (g.cores_per_chip if g.name_counts == "cores" else 1)
    tips.append(f"a bigger slice ({g.name}-{n})")
    return ", ".join(tips)


def check_fit(rows: list[dict], cfg, topology: Topology) -> None:
    """Raise DoesNotFit (exit 1) naming the first program that does not fit."""
    for row in rows:
        if row["fits"]:
            continue
        need = row.get("total_bytes")
        need_text = f"{need / GiB:.1f} GiB per chip" if need else "more than the HBM"
        how = "the compiler refused it (RESOURCE_EXHAUSTED)" if row["compiler_refused"] else \
            "arguments + temporaries + outputs exceed it"
        raise DoesNotFit(f"does not fit: {row['program']} needs {need_text} on "
                         f"{topology.name}, whose {topology.generation.label} chips have "
                         f"{topology.hbm_bytes / GiB:.1f} GiB of HBM ({how}); try "
                         f"{suggestions(cfg, topology)}")


def _gib(x) -> str:
    return "-" if x is None else f"{x / GiB:.1f}"


def format_table(report: dict) -> str:
    topo = report["topology"]
    head = (f"{report['config']}  on  {topo['name']} x{topo['num_slices']} "
            f"({topo['total_chips']} x {topo['label']}, {topo['hbm_bytes_per_chip'] / GiB:.1f} "
            f"GiB HBM each)  mesh {report['mesh']}")
    cols = ("program", "args GiB", "temp GiB", "out GiB", "total GiB", "HBM %", "fits",
            "compile s", "model TFLOP", "compiler/model", "est. step s*", "est. MFU*")
    lines = [head, "  ".join(f"{c:>{max(len(c), 8)}}" for c in cols)]
    for r in report["programs"]:
        total = r.get("total_bytes")
        vals = (r["program"], _gib(r.get("argument_bytes")), _gib(r.get("temp_bytes")),
                _gib(r.get("output_bytes")), _gib(total),
                "-" if total is None else f"{100 * total / r['hbm_bytes']:.0f}",
                "yes" if r["fits"] else "NO", f"{r['compile_seconds']:.1f}",
                f"{r['model_flops'] / 1e12:.1f}",
                "-" if r.get("compiler_over_model_flops") is None
                else f"{r['compiler_over_model_flops']:.2f}",
                "-" if r.get("estimated_step_seconds") is None
                else f"{r['estimated_step_seconds']:.3f}",
                "-" if r.get("estimated_mfu") is None else f"{100 * r['estimated_mfu']:.1f}%")
        lines.append("  ".join(f"{v:>{max(len(c), 8)}}" for v, c in zip(vals, cols)))
    lines.append("* estimates, not measurements: model FLOPs at the TPU compiler's estimated "
                 "FLOP rate (its flops / optimal_seconds), and that rate over peak bf16; none "
                 "on GPU. compiler/model: XLA counts a scanned loop's body once")
    return "\n".join(lines)
