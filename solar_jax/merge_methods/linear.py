"""linear: the weighted average of the models (mergekit's `linear`; SOLAR's Average(0.5, 0.5)).

    sum_i w_i x_i            divided by sum_i w_i when normalize (the default)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from solar_jax.errors import SolarError
from solar_jax.merge_methods.base import MergeMethod, normalize, register, weight


def linear(arrays: Sequence[np.ndarray], weights: Sequence[float],
           normalize: bool = True) -> np.ndarray:
    if len(arrays) != len(weights):
        raise SolarError(f"{len(weights)} weights for {len(arrays)} models")
    out = np.zeros(np.shape(arrays[0]), np.float32)
    for x, w in zip(arrays, weights):
        out += np.float32(w) * np.asarray(x, np.float32)
    if normalize:
        total = float(np.float32(sum(np.float32(w) for w in weights)))
        if total == 0:
            raise SolarError("linear merge weights sum to 0; cannot normalize "
                             "(pass --no-normalize or other weights)")
        out /= np.float32(total)
    return out


def _tensor(base, others, *, params, model_params, rule):
    return linear(others, [m["weight"] for m in model_params], params["normalize"])


def _check(params, model_params, numel):
    if params["normalize"] and sum(m["weight"] for m in model_params) == 0:
        return "linear weights sum to 0; cannot normalize (turn normalize off or change them)"
    return None


METHOD = register(MergeMethod(
    "linear", "weighted average: sum_i w_i x_i / sum_i w_i", _tensor,
    params=(weight(lambda n: 1.0 / n, default_text="equal"),
            normalize(True)),
    check=_check, reference="https://arxiv.org/abs/2203.05482"))
