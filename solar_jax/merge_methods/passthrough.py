"""passthrough: each output layer is one layer of one model, optionally scaled (mergekit's
`passthrough`): depth up-scaling (solar-jax upscale), not a weight merge."""

from __future__ import annotations

import numpy as np

from solar_jax.merge_methods.base import MergeMethod, Param, register


def scaled(x: np.ndarray, scale: float | None) -> np.ndarray:
    if scale is None or scale == 1:
        return x
    return np.asarray(x, np.float32) * np.float32(scale)


def _tensor(base, others, *, params, model_params, rule):
    return scaled(others[0], model_params[0].get("scale"))


METHOD = register(MergeMethod(
    "passthrough", "stack layers of one model per slice (depth up-scaling)", _tensor,
    params=(Param("scale", float, per_model=True, default=None,
                  help="multiply the tensor (e.g. 0 to zero a projection)"),),
    min_models=1, max_models=1, stacks_layers=True))
