"""Rotary position embeddings in Hugging Face's rotate-half layout.

HF rotates the pair (x[i], x[i + d/2]) rather than (x[2i], x[2i+1]), so keeping that layout
means converted q/k weights need no permutation. Llama-3 and linear frequency scaling
follow transformers' `_compute_llama3_parameters` / `_compute_linear_scaling_rope_parameters`.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from solar_jax.config import ModelConfig


def inverse_frequencies(config: ModelConfig) -> np.ndarray:
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    scaling = config.rope_scaling or {}
    rope_type = scaling.get("rope_type", "default")
    if rope_type == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif rope_type == "llama3":
        inv_freq = _llama3_scaling(inv_freq, scaling)
    return inv_freq.astype(np.float32)


def _llama3_scaling(inv_freq: np.ndarray, s: dict) -> np.ndarray:
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(is_medium, smoothed, scaled)


def rotary_tables(positions, config: ModelConfig):
    """cos and sin of shape [batch, seq, head_dim] (fp32) for integer positions [batch, seq]."""
    inv_freq = jnp.asarray(inverse_frequencies(config))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x, cos, sin):
    """x: [batch, seq, heads, head_dim]; rotation computed in fp32, returned in x.dtype."""
    half = x.shape[-1] // 2
    xf = x.astype(jnp.float32)
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)
