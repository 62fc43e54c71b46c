"""task_arithmetic: the base plus the weighted task vectors of the models (mergekit's
`task_arithmetic`, Ilharco et al. 2022).

    base + lambda * sum_i w_i (x_i - base)     the sum divided by sum_i w_i when normalize
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from solar_jax.errors import SolarError
from solar_jax.merge_methods.base import (MergeMethod, Param, accepted_noop, lam, normalize,
                                          register, weight)


def task_arithmetic(base: np.ndarray, arrays: Sequence[np.ndarray], weights: Sequence[float],
                    normalize: bool = False, lam: float = 1.0) -> np.ndarray:
    if len(arrays) != len(weights):
        raise SolarError(f"{len(weights)} weights for {len(arrays)} models")
    base = np.asarray(base, np.float32)
    delta = np.zeros(base.shape, np.float32)
    for x, w in zip(arrays, weights):
        delta += np.float32(w) * (np.asarray(x, np.float32) - base)
    if normalize:
        total = float(sum(weights))
        delta /= np.float32(total if abs(total) >= 1e-8 else 1.0)  # mergekit's guard
    return base + np.float32(lam) * delta


def _tensor(base, others, *, params, model_params, rule):
    return task_arithmetic(base, others, [m["weight"] for m in model_params],
                           params["normalize"], params["lambda"])


def _dense_only(v) -> str | None:
    # mergekit silently ignores density here; a recipe asking for it wants ties.
    return None if v == 1 else ("must be 1: task_arithmetic does not sparsify "
                                "(use merge_method: ties to trim task vectors)")


METHOD = register(MergeMethod(
    "task_arithmetic", "base + lambda * sum_i w_i (x_i - base)", _tensor,
    params=(weight(1.0), normalize(False), lam(),
            Param("density", float, per_model=True, default=1.0, check=_dense_only),
            # Recipes copied from DARE/TIES ones carry these; without sparsification
            # they change nothing (int8_mask only picks mergekit's mask dtype).
            accepted_noop("int8_mask", "mergekit's mask dtype; no effect on the result"),
            accepted_noop("rescale", "no effect without sparsification")),
    base="required", base_help="the model the task vectors start from",
    reference="https://arxiv.org/abs/2212.04089"))
