"""model_stock: Model Stock (Jang et al. 2024) as mergekit's `model_stock` defines it.

Per tensor, with w_0 the base and w_1..w_N the fine-tuned models (N >= 2):

    cos   the mean over pairs i < j of cos(w_i - w_0, w_j - w_0), each pair's norm product
          clamped to >= 1e-6 and the cosine to [-1, 1]
    t     N cos / (1 + (N - 1) cos)
    out   t * mean_i w_i + (1 - t) * w_0

Each tensor is one vector, or with filter_wise one vector per row of the Hugging Face
[out, in] tensor (a 1-D tensor is one row), each row getting its own t.
"""

from __future__ import annotations

import numpy as np

from solar_jax.checkpoint import hf_names
from solar_jax.merge_methods.base import MergeMethod, Param, register

NORM_FLOOR = 1e-6  # mergekit's clamp on the norm product


def model_stock(base: np.ndarray, arrays, filter_wise: bool = False) -> np.ndarray:
    """`base` and `arrays` as HF tensors (filter_wise reads rows of [out, in])."""
    base = np.asarray(base, np.float32)
    shape = base.shape
    if filter_wise:
        w0 = base.reshape(1, -1) if base.ndim == 1 else base
        ws = [np.asarray(x, np.float32).reshape(w0.shape) for x in arrays]
    else:
        w0 = base.reshape(-1)
        ws = [np.asarray(x, np.float32).reshape(-1) for x in arrays]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            a, b = offsets[i], offsets[j]
            norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
            cos = (a * b).sum(axis=-1) / np.maximum(norms, np.float32(NORM_FLOOR))
            cosines.append(np.clip(cos, -1, 1))
    cos = np.mean(np.stack(cosines), axis=0)[..., None].astype(np.float32)
    n = len(ws)
    t = (n * cos) / (1 + (n - 1) * cos)
    average = sum(ws) / np.float32(n)
    return (t * average + (1 - t) * w0).reshape(shape).astype(np.float32)


def _tensor(base, others, *, params, model_params, rule):
    if not params["filter_wise"] or rule is None or rule.layout == "copy":
        return model_stock(base, others, params["filter_wise"])
    # rows are a property of the HF layout: compute there, then back to ours
    hf = model_stock(hf_names.to_hf(rule, base), [hf_names.to_hf(rule, x) for x in others],
                     True)
    return hf_names.from_hf(rule, hf, base.shape)


METHOD = register(MergeMethod(
    "model_stock", "base + t (average - base), t from the angle between the task vectors",
    _tensor,
    params=(Param("filter_wise", bool, default=False, flag="--filter-wise",
                  help="one angle per row of each weight matrix instead of per tensor"),),
    min_models=3, base="required",
    base_help="the pre-trained model the fine-tuned ones start from",
    reference="https://arxiv.org/abs/2403.19522"))
