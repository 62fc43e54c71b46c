"""Layer-count ablation of Depth Up-Scaling: `solar-jax ablate CONFIG.yaml`.

    from solar_jax.ablate import load_ablate_config, run_ablation
    results = run_ablation(load_ablate_config("configs/ablate-smollm2-cpu.yaml"))
    results["best"]["m"], results["rows"]

config.py (the keys, candidates), diagnostics.py (angular distance, Block Influence, seam
distance), sweep.py (the resumable sweep), records.py (the per-candidate records),
runtime.py (mesh, held-out evaluation), heal.py (healing through train's step loop),
report.py / plots.py (the outputs).
"""

from solar_jax.ablate.config import AblateConfig, HealConfig, Point, load_ablate_config
from solar_jax.ablate.diagnostics import (block_distances, layer_similarity, pairwise_sums,
                                          seam_distance, token_mask)
from solar_jax.ablate.records import COLUMNS
from solar_jax.ablate.sweep import run_ablation

__all__ = ["AblateConfig", "HealConfig", "Point", "load_ablate_config", "run_ablation",
           "layer_similarity", "pairwise_sums", "seam_distance", "token_mask",
           "block_distances", "COLUMNS"]
