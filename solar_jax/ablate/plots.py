"""PNG plots of a study (matplotlib, Agg backend): loss vs m, the layer-similarity
heatmaps, and Block Influence per layer. Small figures (well under 200 kB each)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from solar_jax.ablate.diagnostics import block_distances
from solar_jax.destination import staged_file
from solar_jax.errors import SolarError

DPI = 90


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SolarError("plots need matplotlib: pip install matplotlib (or set plots=false)") \
            from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    with staged_file(path) as stage:
        fig.savefig(stage, dpi=DPI, bbox_inches="tight", format="png")
    return path


def write_plots(out: Path, *, rows, base, diag, n: int, healed: bool) -> list[Path]:
    plt = _pyplot()
    paths = [loss_plot(plt, out / "loss.png", rows, base, healed),
             similarity_plot(plt, out / "similarity.png", diag, rows, n),
             block_influence_plot(plt, out / "block_influence.png", diag)]
    plt.close("all")
    return paths


def _x(rows):
    """m on a numeric axis when every candidate is SOLAR's recipe, else categories."""
    if all(r["m"] is not None for r in rows):
        return [r["m"] for r in rows], None, "m (layers removed from each copy)"
    labels = [str(r["m"]) if r["m"] is not None else f"{r['cut_a']}|{r['cut_b']}" for r in rows]
    return list(range(len(rows))), labels, "candidate (m, or a|b cut points)"


def loss_plot(plt, path, rows, base, healed):
    x, labels, xlabel = _x(rows)
    order = np.argsort(x, kind="stable")
    xs = np.asarray(x)[order]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    before = np.array([rows[i]["loss_before"] for i in order], np.float64)
    ax.plot(xs, before, "o-", color="tab:red", label="before healing")
    if healed:
        after = np.array([np.nan if rows[i]["loss_after"] is None else rows[i]["loss_after"]
                          for i in order], np.float64)
        ax.plot(xs, after, "s-", color="tab:blue", label="after healing")
    ax.axhline(base["loss"], color="gray", ls="--", lw=1,
               label=f"base model ({base['layers']} layers)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title("Held-out loss of the up-scaled model")
    finite = before[np.isfinite(before)]
    if finite.size and finite.max() > 4 * max(base["loss"], 1e-6):
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    seam = np.array([np.nan if rows[i]["seam_distance"] is None else rows[i]["seam_distance"]
                     for i in order], np.float64)
    ax2.plot(xs, seam, "d-", color="tab:green")
    ax2.set_xlabel(xlabel)
    ax2.set_ylabel("seam distance d(h_a, h_b)")
    ax2.set_title("Angular distance across the seam (original model)")
    ax2.grid(alpha=0.3)
    for a in (ax, ax2):
        if labels is not None:
            a.set_xticks(xs, [labels[i] for i in order], rotation=45, fontsize=8)
        else:
            a.set_xticks(xs)
    fig.tight_layout()
    return _save(fig, path)


def similarity_plot(plt, path, diag, rows, n):
    d = np.asarray(diag["angular_distance"], np.float64)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.6))
    im = ax.imshow(d, origin="lower", cmap="viridis", vmin=0, vmax=max(d.max(), 1e-6))
    ax.set_xlabel("j (h_j = input of layer j; j = n: last output)")
    ax.set_ylabel("i")
    ax.set_title("Angular distance d(h_i, h_j)")
    fig.colorbar(im, ax=ax, shrink=0.85)
    for r in rows:  # the seam of each candidate: D[a, b]
        ax.plot(r["cut_b"], r["cut_a"], "x", color="red", ms=6, mew=1.5)
    blocks = block_distances(d)[1:n + 1, :n]  # block sizes 1..n, starts 0..n-1
    masked = np.ma.masked_invalid(blocks)
    im2 = ax2.imshow(masked, origin="lower", cmap="viridis", aspect="auto",
                     extent=(-0.5, n - 0.5, 0.5, n + 0.5), vmin=0, vmax=max(d.max(), 1e-6))
    best = [np.nanargmin(blocks[k]) for k in range(n)]
    ax2.plot(best, np.arange(1, n + 1), ".", color="white", ms=4, label="most similar start")
    ax2.set_xlabel("first layer of the block, l")
    ax2.set_ylabel("block size k")
    ax2.set_title("Gromov et al.: d(h_l, h_{l+k})")
    ax2.legend(fontsize=7, loc="upper right")
    fig.colorbar(im2, ax=ax2, shrink=0.85)
    fig.tight_layout()
    return _save(fig, path)


def block_influence_plot(plt, path, diag):
    bi = np.asarray(diag["block_influence"], np.float64)
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.bar(np.arange(len(bi)), bi, color="tab:purple")
    ax.set_xlabel("layer l")
    ax.set_ylabel("BI = 1 - cos(h_l, h_{l+1})")
    ax.set_title("ShortGPT Block Influence (low = layer changes little)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, path)
