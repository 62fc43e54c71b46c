"""The study's outputs: results.csv, results.json, report.md and the plots (plots.py)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from solar_jax.ablate.config import plural, resolve_model
from solar_jax.ablate.plots import write_plots
from solar_jax.ablate.records import COLUMNS, jsonable
from solar_jax.destination import write_text_atomic


def best_row(rows: list[dict], healed: bool) -> dict | None:
    """The candidate with the lowest held-out loss: after healing when there was a budget,
    else before. Ties go to the fewer layers (then the earlier row)."""
    key = "loss_after" if healed else "loss_before"
    scored = [r for r in rows if r.get(key) is not None and math.isfinite(r[key])]
    if not scored:
        return None
    return min(scored, key=lambda r: (r[key], r["layers"]))


def spearman(x, y) -> float | None:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3:
        return None

    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # average ranks of ties
            r[v == value] = r[v == value].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row[c] for c in COLUMNS})
    return buf.getvalue()


def _fmt(x, digits=4):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _label(row) -> str:
    if row["m"] is not None:
        return str(row["m"]) + (" (original)" if row["cut_a"] == row["cut_b"] else "")
    return f"[0,{row['cut_a']})+[{row['cut_b']},n)"


def write_outputs(cfg, out: Path, *, rows, base, diag, config, heal_source: str, log) -> dict:
    out = Path(out)
    healed = cfg.heal_tokens > 0
    best = best_row(rows, healed)
    n = config.num_layers
    results = {
        "model": cfg.model, "num_layers": n, "base": base,
        "eval_data": cfg.data_config("eval_data").to_dict(), "seq_len": cfg.seq_len,
        "heal_tokens": cfg.heal_tokens, "heal_steps": cfg.heal_steps,
        "heal_batch_size": cfg.heal_batch_size, "heal_data": heal_source or None,
        "heal": {k: getattr(cfg.heal, k) for k in cfg.heal.__dataclass_fields__},
        "columns": list(COLUMNS), "rows": rows,
        "best": best,
        "diagnostics": {"angular_distance": diag["angular_distance"],
                        "block_influence": diag["block_influence"], "tokens": diag["tokens"],
                        "diagnostic_tokens": cfg.diagnostic_tokens},
    }
    results = jsonable(results)
    write_text_atomic(out / "results.json", json.dumps(results, indent=1) + "\n")
    write_text_atomic(out / "results.csv", to_csv(rows))
    plots = []
    if cfg.plots:
        plots = write_plots(out, rows=rows, base=base, diag=diag, n=n, healed=healed)
    write_text_atomic(out / "report.md", report_markdown(cfg, rows=rows, base=base, diag=diag, n=n,
                                                    best=best, heal_source=heal_source,
                                                    plots=plots))
    log(f"wrote {out / 'results.csv'}, results.json, report.md"
        + (f", {', '.join(p.name for p in plots)}" if plots else ""))
    if best is not None:
        what = f"m={best['m']}" if best["m"] is not None else _label(best)
        key = "loss_after" if healed else "loss_before"
        log(f"best {'after healing' if healed else 'before healing'}: {what} "
            f"({best['layers']} layers, loss {best[key]:.4f})")
    return results


def report_markdown(cfg, *, rows, base, diag, n, best, heal_source, plots) -> str:
    healed = cfg.heal_tokens > 0
    name = Path(resolve_model(str(cfg.model))).name or str(cfg.model)
    lines = [f"# Layer-count ablation: {name}", ""]
    eval_paths = ", ".join(cfg.data_config("eval_data").paths)
    lines.append(f"Base model: {plural(n, 'layer')}, {base['params'] / 1e6:.1f}M parameters; "
                 f"held-out loss {base['loss']:.4f} (perplexity {base['ppl']:.2f}) on "
                 f"{plural(base['tokens'], 'token')} of `{eval_paths}` (seq_len {cfg.seq_len}).")
    if healed:
        h = cfg.heal
        lines.append(f"Healing budget: {plural(cfg.heal_tokens, 'token')} per candidate = "
                     f"{plural(cfg.heal_steps, 'step')} of {cfg.heal_batch_size} x {cfg.seq_len} "
                     f"on {heal_source}; AdamW lr {h.learning_rate:g}, "
                     f"{plural(h.warmup_steps, 'warmup step')}, {h.schedule} schedule "
                     f"— the same data and hyperparameters for every candidate.")
    else:
        lines.append("No healing (heal_tokens = 0): losses are of the freshly up-scaled models.")
    lines.append("")
    key = "loss_after" if healed else "loss_before"
    when = "after healing" if healed else "before healing (no healing budget)"
    if best is not None:
        what = f"m = {best['m']}" if best["m"] is not None else f"cut {_label(best)}"
        lines.append(f"**Best {'m' if best['m'] is not None else 'candidate'} under this budget: "
                     f"{what}** — held-out loss {when} {best[key]:.4f} (perplexity "
                     f"{math.exp(min(best[key], 700)):.2f}), {best['layers']} layers, "
                     f"{best['params'] / 1e6:.1f}M parameters.")
        if best["layers"] <= n:
            lines.append(f"(This candidate has {best['layers']} layers: no deeper model beat it.)")
        solar = [r for r in rows if r["m"] is not None and r["layers"] > n]
        bm = best_row(solar, healed)
        if bm is not None and bm is not best:
            lines.append(f"Best up-scaled m (more than {n} layers): m = {bm['m']}, loss "
                         f"{bm[key]:.4f}, {bm['layers']} layers.")
        if any(r["cut_a"] == r["cut_b"] for r in rows):
            lines.append(f"The candidate with a = b is the original {n}-layer model: with "
                         f"healing it is the control that separates what the budget does to any "
                         f"model (e.g. adapting to the healing text) from repairing the seam.")
    lines.append("")
    header = ["m / cut", "layers", "params", "seam distance", "loss before", "ppl before"]
    if healed:
        header += ["loss after", "ppl after"]
    header += ["seconds"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for r in rows:
        cells = [_label(r), str(r["layers"]), f"{r['params'] / 1e6:.1f}M",
                 _fmt(r["seam_distance"], 3), _fmt(r["loss_before"]), _fmt(r["ppl_before"], 2)]
        if healed:
            cells += [_fmt(r["loss_after"]), _fmt(r["ppl_after"], 2)]
        cells += [_fmt(r["seconds"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    status = [f"{_label(r)}: {r['heal_status']}" for r in rows
              if r.get("heal_status") not in (None, "ok")]
    if status:
        lines += ["Healing problems: " + "; ".join(status) + ".", ""]
    bi = np.asarray(diag["block_influence"], np.float64)
    low = np.argsort(bi)[:3]
    tokens = "all tokens" if cfg.diagnostic_tokens == "all" else "the last token of each document"
    lines.append(f"Diagnostics on {diag['tokens']} calibration tokens ({tokens}): seam distance "
                 f"= angular distance arccos(cos)/π between h_a (output of layer a−1, the last "
                 f"kept layer of copy A) and h_b (input of layer b, the first kept layer of copy "
                 f"B) in the original model; for m, a = n−m and b = m. Lowest Block Influence "
                 f"(1 − cos between a layer's input and output): "
                 + ", ".join(f"layer {i} ({bi[i]:.3f})" for i in low) + ".")
    rho_b = spearman([r["seam_distance"] for r in rows], [r["loss_before"] for r in rows])
    rho_a = spearman([r["seam_distance"] for r in rows],
                     [r["loss_after"] if r["loss_after"] is not None else np.nan for r in rows])
    if rho_b is not None:
        lines.append(f"Spearman correlation of seam distance with loss: {rho_b:+.2f} before "
                     f"healing" + (f", {rho_a:+.2f} after." if rho_a is not None else "."))
    lines.append("")
    for p in plots:
        lines.append(f"![{p.stem}]({p.name})")
    lines.append("")
    return "\n".join(lines)
