"""Greedy decoding without a KV cache: a full forward over a fixed-size buffer per token.

Quadratic, but exact and compiled once per buffer size; it is the reference the demo and
the parity tests use. Fast batched decoding with a KV cache belongs to `generate`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from solar_jax.handle import Model


def greedy_continue(model: Model, prompt_ids: list[int], max_new_tokens: int,
                    stop_ids: tuple[int, ...] = ()) -> list[int]:
    """The next `max_new_tokens` greedy tokens (fewer if a stop id is produced)."""
    n = len(prompt_ids)
    size = n + max_new_tokens
    buffer = np.zeros((1, size), np.int32)
    buffer[0, :n] = prompt_ids

    @jax.jit
    def next_token(params, ids, t):
        logits = model._forward(params, ids, None, None)
        return jnp.argmax(logits[0, t - 1]).astype(jnp.int32)

    out = []
    for t in range(n, size):
        token = int(next_token(model.params, jnp.asarray(buffer), t))
        out.append(token)
        if token in stop_ids:
            break
        buffer[0, t] = token
    return out
