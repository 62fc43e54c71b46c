"""What an ablation writes, shared by the sweep (its per-point records) and the report
(results.json/csv): the columns of a results row, and records made JSON-safe."""

from __future__ import annotations

import math

import numpy as np

COLUMNS = ("m", "cut_a", "cut_b", "layers", "params", "seam_distance", "loss_before",
           "ppl_before", "acc_before", "loss_after", "ppl_after", "acc_after", "heal_tokens",
           "heal_steps", "heal_final_train_loss", "heal_status", "seconds")


def jsonable(x):
    """x with numpy scalars/arrays as Python values and non-finite floats as None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
