"""slerp: spherical interpolation between two models, tensor by tensor (mergekit's `slerp`).

Each tensor is one vector: its normalized copy gives the angle to the other model's tensor,
and the original tensors are interpolated along the arc, from the base (t=0) to the other
model (t=1); nearly colinear tensors (|cos| > 0.9995) are interpolated linearly.
"""

from __future__ import annotations

import numpy as np

from solar_jax.merge_methods.base import MergeMethod, register, unit_t

DOT_THRESHOLD = 0.9995  # mergekit's: above it the tensors are treated as colinear
EPS = 1e-8


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation from `a` (t=0) to `b` (t=1), treating each tensor as one
    vector; the normalized copies only give the angle, the originals are interpolated."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    ua = a / na if na > EPS else a
    ub = b / nb if nb > EPS else b
    dot = np.sum(ua * ub)
    if np.abs(dot) > DOT_THRESHOLD:
        return (1 - t) * a + t * b
    theta0 = np.arccos(dot)
    sin0 = np.sin(theta0)
    theta_t = theta0 * t
    s0 = np.sin(theta0 - theta_t) / sin0
    s1 = np.sin(theta_t) / sin0
    return (s0 * a + s1 * b).astype(np.float32)


def _tensor(base, others, *, params, model_params, rule):
    return slerp(base, others[0], params["t"])


METHOD = register(MergeMethod(
    "slerp", "spherical interpolation from the base (t=0) to the other model (t=1)", _tensor,
    params=(unit_t(),), min_models=2, max_models=2, base="first",
    base_help="the t=0 end (default: the first model)"))
