"""Next-token cross-entropy computed in sequence chunks.

The [batch, seq, vocab] fp32 logits of a 32k-49k vocabulary at long sequences would be the
largest tensor of the step. Each chunk's logits are built, reduced to a log-sum-exp and a
target logit, and dropped; `jax.checkpoint` makes the backward pass rebuild them per chunk
instead of keeping all of them alive.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def lm_head_weight(params: dict, tied: bool):
    """[hidden, vocab] view of the output projection."""
    return params["embed"]["embedding"].T if tied else params["lm_head"]["kernel"]


def chunked_cross_entropy(hidden, head, targets, weights, *, chunk: int, z_loss: float = 0.0):
    """Sums over tokens: (weighted NLL, weighted z-loss term, weighted correct predictions).

    hidden [B, S, H], head [H, V], targets [B, S] int, weights [B, S] float.
    """
    b, s, h = hidden.shape
    chunk = min(chunk, s)
    pad = -s % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        weights = jnp.pad(weights, ((0, 0), (0, pad)))
    n = (s + pad) // chunk
    split = lambda x: x.reshape(b, n, chunk, *x.shape[2:]).swapaxes(0, 1)  # noqa: E731
    head = head.astype(hidden.dtype)

    @jax.checkpoint
    def one_chunk(h_c, t_c, w_c):
        logits = jnp.einsum("bch,hv->bcv", h_c, head, preferred_element_type=jnp.float32)
        lse = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, t_c[..., None], axis=-1)[..., 0]
        nll = jnp.sum((lse - target_logit) * w_c)
        z = jnp.sum(z_loss * jnp.square(lse) * w_c)
        correct = jnp.sum((jnp.argmax(logits, axis=-1) == t_c) * w_c)
        return nll, z, correct

    def body(carry, xs):
        out = one_chunk(*xs)
        return tuple(c + o for c, o in zip(carry, out)), None

    zero = jnp.zeros((), jnp.float32)
    totals, _ = jax.lax.scan(body, (zero, zero, zero),
                             (split(hidden), split(targets), split(weights.astype(jnp.float32))))
    return totals
