"""Layer-similarity diagnostics of a model's residual stream.

Notation: for an n-layer model, h_0 is the input of layer 0 (the embeddings), h_l the input
of layer l (= the output of layer l-1), and h_n the last layer's output (before the final
norm): `CausalLM.hidden_states(..., collect=True)` returns h_0 .. h_n, [n + 1, B, S, H].
Every quantity below is computed per token (one vector of H numbers per position) and
averaged over the calibration tokens (all real tokens, or with diagnostic_tokens="last"
only the last token of each document as in Gromov et al.).

* angular distance (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper
  Layers", eq. 7): d(h_i, h_j) = arccos(cos(h_i, h_j)) / pi, in [0, 1]. The matrix
  D[i, j] (i, j = 0..n) holds its token average; Gromov's d(x^(l), x^(l+n)) for a block of
  n layers starting at l is D[l, l + n].
* Block Influence (ShortGPT, Men et al. 2024, eq. 1): BI_l = 1 - E_t cos(h_l, h_{l+1}),
  the input versus the output of layer l, l = 0..n-1. Low BI = a layer that barely
  changes the residual stream.
* seam distance of a candidate that keeps [0, a) of copy A and [b, n) of copy B: after
  layer a-1 (output h_a) the next layer is layer b, which in the original model reads h_b;
  the seam distance is D[a, b] = d(h_a, h_b) in the ORIGINAL model. SOLAR's recipe with m
  (a = n - m, b = m) has seam distance D[n - m, m]: the distance across the block of
  layers [m, n - m) that appears twice in the up-scaled model (for m > n/2 the distance
  across the pruned block [n - m, m)). m = n/2 is the original model, seam distance 0.

Angles are computed as 2 * atan2(|u - v|, |u + v|) on unit vectors (u, v), which stays
accurate for nearly parallel vectors where arccos of a rounded cosine does not.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from solar_jax.config import ModelConfig
from solar_jax.errors import SolarError
from solar_jax.model.transformer import bind


def token_mask(segment_ids, valid=None, *, last_only: bool = False):
    """[B, S] float: 1 on the tokens the diagnostics average over. Real tokens have
    segment id > 0; last_only keeps the last token of each segment (document) in a row;
    `valid` [B] zeroes whole padding rows."""
    seg = segment_ids
    mask = seg > 0
    if last_only:
        nxt = jnp.concatenate([seg[:, 1:], jnp.zeros_like(seg[:, :1])], axis=1)
        mask = mask & (nxt != seg)
    mask = mask.astype(jnp.float32)
    if valid is not None:
        mask = mask * valid.astype(jnp.float32)[:, None]
    return mask


def pairwise_sums(hidden, mask):
    """hidden [K, B, S, H], mask [B, S] -> (cos_sum [K, K], angle_sum [K, K], count): sums
    over masked tokens of cos(h_i, h_j) and of arccos(cos)/pi."""
    h = hidden.astype(jnp.float32)
    u = h / jnp.maximum(jnp.linalg.norm(h, axis=-1, keepdims=True), 1e-30)

    def row(ui):
        plus = jnp.sum(jnp.square(ui[None] + u), axis=-1)  # [K, B, S]
        minus = jnp.sum(jnp.square(ui[None] - u), axis=-1)
        cos = (plus - minus) / 4.0
        angle = 2.0 * jnp.arctan2(jnp.sqrt(minus), jnp.sqrt(plus)) / jnp.pi
        return jnp.sum(cos * mask, axis=(1, 2)), jnp.sum(angle * mask, axis=(1, 2))

    cos_sum, angle_sum = jax.lax.map(row, u)
    return cos_sum, angle_sum, jnp.sum(mask)


@functools.lru_cache(maxsize=8)
def _similarity_fn(config: ModelConfig, last_only: bool):
    def fn(params, batch):
        model = bind(config, params)
        _, hidden = model.hidden_states(batch["input_ids"], batch["segment_ids"],
                                        batch["positions"], collect=True)
        mask = token_mask(batch["segment_ids"], batch.get("valid"), last_only=last_only)
        return pairwise_sums(hidden, mask)
    return jax.jit(fn)


def layer_similarity(config: ModelConfig, params: dict, batches, *, last_only: bool = False,
                     place=None) -> dict:
    """Token-averaged similarity matrices of h_0 .. h_n over `batches` (dicts with
    input_ids, segment_ids, positions and optionally valid [B]); `place` puts a host batch
    on the devices (default: as is). Returns numpy float64:
    {"angular_distance": D [n+1, n+1], "cosine": C [n+1, n+1],
     "block_influence": BI [n], "tokens": count}."""
    fn = _similarity_fn(config, last_only)
    k = config.num_layers + 1
    cos_sum, angle_sum, count = np.zeros((k, k)), np.zeros((k, k)), 0.0
    for batch in batches:
        keys = ("input_ids", "segment_ids", "positions", "valid")
        batch = {key: batch[key] for key in keys if key in batch}
        if place is not None:
            batch = place(batch)
        c, a, t = jax.device_get(fn(params, batch))
        cos_sum += np.asarray(c, np.float64)
        angle_sum += np.asarray(a, np.float64)
        count += float(t)
    if count == 0:
        raise SolarError("the calibration set has no tokens to average the diagnostics over")
    cos, angle = cos_sum / count, angle_sum / count
    return {"angular_distance": angle, "cosine": cos,
            "block_influence": 1.0 - np.diagonal(cos, offset=1), "tokens": int(count)}


def seam_distance(angular_distance, a: int, b: int) -> float:
    """d(h_a, h_b) in the original model: the seam of [0, a) of copy A + [b, n) of copy B."""
    return float(np.asarray(angular_distance)[a, b])


def block_distances(angular_distance) -> np.ndarray:
    """Gromov's layout: out[k, l] = D[l, l + k] for blocks of k = 1..n layers starting at
    l = 0..n-k (NaN elsewhere), an [n + 1, n + 1] array indexed by (block size, start)."""
    d = np.asarray(angular_distance)
    size = d.shape[0]
    out = np.full((size, size), np.nan)
    for k in range(1, size):
        for start in range(size - k):
            out[k, start] = d[start, start + k]
    return out
