"""Per-chip memory of a deep stack from two shallow compiles of the same widths.

The layers are one scanned stack: params, optimizer state and gradients grow by one layer's
share per layer, and so do the activations remat saves per layer, while the rest (the
embedding and head, the loss chunks, one layer's workspace) stays fixed. So memory is
affine in the layer count, and compiles at 4 and 8 layers give the slope and intercept.
Used where a 48-layer compile per test would cost CI too much; benchmarks/tpu_compile.py
compares the extrapolation with the full compile.
"""

from __future__ import annotations

import dataclasses

FIELDS = ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "code_bytes",
          "total_bytes")


def extrapolate(rows_a: list[dict], rows_b: list[dict], layers_a: int, layers_b: int,
                target: int) -> list[dict]:
    """Rows at `target` layers, each byte field extrapolated linearly from the rows of the
    same programs compiled at layers_a and layers_b."""
    out = []
    for a, b in zip(rows_a, rows_b):
        if not (a["fits"] or a.get("total_bytes")) or a["program"] != b["program"]:
            raise ValueError("extrapolation needs both compiles of every program")
        row = {"program": a["program"], "hbm_bytes": a["hbm_bytes"], "layers": target,
               "extrapolated_from_layers": [layers_a, layers_b]}
        for f in FIELDS:
            if a.get(f) is not None and b.get(f) is not None:
                per_layer = (b[f] - a[f]) / (layers_b - layers_a)
                row[f] = int(a[f] + per_layer * (target - layers_a))
                row[f"{f}_per_layer"] = per_layer
        row["fits"] = row["total_bytes"] <= row["hbm_bytes"]
        row["hbm_margin"] = 1 - row["total_bytes"] / row["hbm_bytes"]
        out.append(row)
    return out


def compile_extrapolated(cfg, topology: str | None = None, *, num_slices: int = 1,
                         program: str = "train", layers=(4, 8), target: int | None = None):
    """(extrapolated rows, the two shallow reports) for `cfg` with its architecture's layer
    count (or `target`)."""
    from solar_jax.aot import compile_for_topology
    from solar_jax.aot.programs import model_config
    target = target or model_config(cfg).num_layers
    reports = []
    for n in layers:
        shallow = dataclasses.replace(cfg, model_overrides={**cfg.model_overrides,
                                                            "num_layers": n})
        reports.append(compile_for_topology(shallow, topology, num_slices=num_slices,
                                            program=program))
    rows = extrapolate(reports[0]["programs"], reports[1]["programs"], layers[0], layers[1],
                       target)
    return rows, reports
