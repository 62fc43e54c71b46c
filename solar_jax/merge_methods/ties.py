"""ties: TIES-Merging (Yadav et al. 2023) as mergekit's `ties` defines it.

Per tensor, for each model i with task vector d_i = x_i - base:

    trim       keep the k = int(density_i * numel) entries of d_i largest in |value|, zero
               the rest (mergekit's `magnitude` sparsification; density >= 1 keeps all). At
               the cut, equal magnitudes keep the lower flat index (a stable descending
               sort; mergekit's torch.argsort gives no order among ties on large tensors).
               rescale (off by default): multiply the kept entries by |d_i|_1 / |kept|_1.
    weight     wd_i = w_i * d_i
    elect      majority sign per entry: +1 where sum_i wd_i >= 0, else -1 (mergekit's
               default "sum" consensus: the sign of the summed weighted task vectors)
    merge      mask_i = sign(wd_i) == majority (trimmed zeros never agree);
               delta = sum_i mask_i wd_i, divided by sum_i mask_i w_i when normalize (the
               default; a zero divisor counts as 1)
    result     base + lambda * delta
"""

from __future__ import annotations

import numpy as np

from solar_jax.merge_methods.base import (MergeMethod, Param, accepted_noop, lam, normalize,
                                          register, weight)

RESCALE_EPS = 1e-7  # mergekit's rescaled_masked_tensor tolerance


def keep_count(density: float, numel: int) -> int:
    # Python float product truncated, as mergekit: int(0.29 * 100) == 28.
    return int(float(density) * numel)


def trim(delta: np.ndarray, density: float, rescale: bool = False) -> np.ndarray:
    """mergekit's `magnitude`: the top `density` fraction of `delta` by |value|."""
    if density >= 1:
        return delta
    flat = delta.reshape(-1)
    k = keep_count(density, flat.size)
    if k <= 0:
        raise ValueError(f"density {density} keeps no value of {flat.size}")
    mags = np.abs(flat)
    # The k-th largest magnitude by selection (O(n), where a full sort of a 58M-entry MLP
    # matrix takes seconds); everything above it stays, then the lowest indices equal to it.
    cut = np.partition(mags, flat.size - k)[flat.size - k]
    keep = mags > cut
    short = k - int(np.count_nonzero(keep))
    if short > 0:
        keep[np.flatnonzero(mags == cut)[:short]] = True
    kept = np.where(keep, flat, np.float32(0))
    if rescale:
        before, after = mags.sum(), np.abs(kept).sum()
        if before >= RESCALE_EPS and after >= RESCALE_EPS:
            kept = kept * (before / after)
    return kept.reshape(delta.shape)


def ties(base: np.ndarray, arrays, weights, densities, *, normalize: bool = True,
         lam: float = 1.0, rescale: bool = False) -> np.ndarray:
    base = np.asarray(base, np.float32)
    if not arrays:
        return base
    deltas = np.stack([trim(np.asarray(x, np.float32) - base, d, rescale)
                       for x, d in zip(arrays, densities)])
    w = np.asarray(weights, np.float32).reshape((-1,) + (1,) * base.ndim)
    weighted = deltas * w
    majority = np.where(weighted.sum(axis=0) >= 0, np.float32(1), np.float32(-1))
    mask = np.sign(weighted) == majority
    delta = np.where(mask, weighted, np.float32(0)).sum(axis=0)
    if normalize:
        divisor = np.where(mask, w, np.float32(0)).sum(axis=0)
        delta = delta / np.where(divisor == 0, np.float32(1), divisor)
    if lam != 1:
        delta = delta * np.float32(lam)
    return base + delta


def _tensor(base, others, *, params, model_params, rule):
    return ties(base, others, [m["weight"] for m in model_params],
                [m["density"] for m in model_params], normalize=params["normalize"],
                lam=params["lambda"], rescale=params["rescale"])


def _density(v) -> str | None:
    return None if 0.0 < v <= 1.0 else "must be in (0, 1]"


def _check(params, model_params, numel):
    for m in model_params:
        if m["density"] < 1 and keep_count(m["density"], numel) == 0:
            return (f"density {m['density']:g} keeps none of its {numel} values "
                    f"(int(density * {numel}) = 0); raise density")
    return None


METHOD = register(MergeMethod(
    "ties", "trim task vectors to `density` by magnitude, elect signs, average the agreeing",
    _tensor,
    params=(weight(1.0),
            Param("density", float, per_model=True, default=1.0, check=_density,
                  flag="--density",
                  help="fraction of each task vector kept, by magnitude, in (0, 1] "
                       "(one value: the same for all)"),
            normalize(True), lam(),
            Param("rescale", bool, default=False, flag="--rescale",
                  help="scale each trimmed task vector back to the L1 norm it had before trimming"),
            accepted_noop("int8_mask", "mergekit's mask dtype; no effect on the result")),
    base="required", base_help="the model the task vectors start from", check=_check,
    reference="https://arxiv.org/abs/2306.01708"))
