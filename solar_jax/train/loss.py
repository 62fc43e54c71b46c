"""Next-token cross-entropy computed in sequence chunks.

The [batch, seq, vocab] fp32 logits of a 32k-49k vocabulary at long sequences would be the
largest tensor of the step. Each chunk's logits are built, reduced to a log-sum-exp and a
target logit, and dropped. Two versions compute the same sums:

* `chunked_cross_entropy`: plain autodiff, `jax.checkpoint` per chunk so the backward pass
  rebuilds each chunk's logits instead of keeping all of them alive (the reference);
* `fused_cross_entropy`: what the train step uses, a custom VJP that forms the gradient
  while the logits exist, so they are built once per step instead of twice.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from solar_jax.platform import target


def sequence_chunks(hidden, targets, weights, chunk: int):
    """(hidden, targets, weights) padded along the sequence to a multiple of `chunk` and
    split into [n_chunks, batch, chunk, ...] for a scan; padding carries weight 0."""
    b, s = targets.shape
    chunk = min(chunk, s)
    pad = -s % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        weights = jnp.pad(weights, ((0, 0), (0, pad)))
    n = (s + pad) // chunk
    return tuple(x.reshape(b, n, chunk, *x.shape[2:]).swapaxes(0, 1)
                 for x in (hidden, targets, weights))


def _chunk_sums(logits, targets, weights, z_loss: float):
    """((weighted NLL, z-loss term, correct predictions) summed over a chunk, its lse)."""
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    sums = (jnp.sum((lse - target_logit) * weights), jnp.sum(z_loss * jnp.square(lse) * weights),
            jnp.sum((jnp.argmax(logits, axis=-1) == targets) * weights))
    return sums, lse


def chunked_cross_entropy(hidden, head, targets, weights, *, chunk: int, z_loss: float = 0.0):
    """Sums over tokens: (weighted NLL, weighted z-loss term, weighted correct predictions).

    hidden [B, S, H], head [H, V], targets [B, S] int, weights [B, S] float.
    """
    head = head.astype(hidden.dtype)

    @jax.checkpoint
    def one_chunk(h_c, t_c, w_c):
        logits = jnp.einsum("bch,hv->bcv", h_c, head, preferred_element_type=jnp.float32)
        return _chunk_sums(logits, t_c, w_c, z_loss)[0]

    def body(carry, xs):
        out = one_chunk(*xs)
        return tuple(c + o for c, o in zip(carry, out)), None

    zero = jnp.zeros((), jnp.float32)
    chunks = sequence_chunks(hidden, targets, weights.astype(jnp.float32), chunk)
    totals, _ = jax.lax.scan(body, (zero, zero, zero), chunks)
    return totals


def fused_cross_entropy(hidden, head, targets, weights, *, chunk: int, z_loss: float = 0.0):
    """(objective, (nll, z, correct)): the same sums as `chunked_cross_entropy`, with
    objective = nll + z differentiable (w.r.t. hidden and head) and the three statistics
    for metrics only (their cotangents are ignored, like `jax.grad(..., has_aux=True)`).

    The gradient is built in the forward pass: each chunk's d objective / d logits
    (softmax − one-hot, scaled by the weights and the z-loss factor) is contracted with
    the head and with the chunk's hidden states right away, and the backward pass only
    scales the results by the incoming cotangent. Autodiff of the chunked loss must build
    every chunk's [batch, chunk, vocab] logits twice (forward, then again in the backward
    pass, since they are never stored); this builds them once, which removes a third of
    the LM head's FLOPs from a train step. Peak memory is unchanged: the head gradient
    accumulated here is the one the backward pass would allocate anyway.
    """
    return _fused(hidden, head, targets, weights.astype(jnp.float32), chunk, z_loss)


def _fused_forward(hidden, head, targets, weights, chunk, z_loss):
    head_c = head.astype(hidden.dtype)

    def body(carry, xs):
        sums, d_head = carry
        h_c, t_c, w_c = xs
        logits = jnp.einsum("bch,hv->bcv", h_c, head_c, preferred_element_type=jnp.float32)
        stats, lse = _chunk_sums(logits, t_c, w_c, z_loss)
        # d/dlogits of w·(lse − logit[t]) + z·w·lse²  =  p·w·(1 + 2z·lse) − w·onehot(t)
        probs = jnp.exp(logits - lse[..., None])
        vocab = jnp.arange(logits.shape[-1], dtype=t_c.dtype)
        d_logits = (probs * (w_c * (1.0 + 2.0 * z_loss * lse))[..., None]
                    - jnp.where(vocab == t_c[..., None], w_c[..., None], 0.0))
        d_low = d_logits.astype(hidden.dtype)
        d_h = jnp.einsum("bcv,hv->bch", d_low, head_c, preferred_element_type=jnp.float32)
        d_head = d_head + head_grad(h_c, d_logits, d_low)
        return (tuple(a + x for a, x in zip(sums, stats)), d_head), d_h.astype(hidden.dtype)

    zero = jnp.zeros((), jnp.float32)
    init = ((zero, zero, zero), jnp.zeros(head.shape, jnp.float32))
    b, s, h = hidden.shape
    chunks = sequence_chunks(hidden, targets, weights, chunk)
    (sums, d_head), d_hidden = jax.lax.scan(body, init, chunks)
    d_hidden = d_hidden.swapaxes(0, 1).reshape(b, -1, h)[:, :s]
    nll, z, correct = sums
    return (nll + z, (nll, z, correct)), (d_hidden, d_head.astype(head.dtype))


def head_grad(h_c, d_logits, d_low):
    """d objective / d head [H, V] of one chunk, in fp32: h_c [B, C, H] contracted with
    d_logits [B, C, V] over the tokens.

    On GPU and TPU the operands are the compute dtype's (`d_low`, bf16 under bf16 compute)
    with fp32 accumulation. On CPU this product contracts the LHS's major axis, which
    XLA:CPU leaves outside its YNNPACK fusions; its fallback dot thunk has no
    bf16 x bf16 -> fp32 kernel (`UNIMPLEMENTED ... DotThunk::Execute: BF16 x BF16 = F32`)
    and runs bf16 dots in fp32 anyway. So on CPU both operands are fp32: the same cost
    as XLA's own fallback, and d_logits is not rounded to bf16 first."""
    if h_c.dtype != jnp.float32 and target().platform == "cpu":
        return jnp.einsum("bch,bcv->hv", h_c.astype(jnp.float32), d_logits)
    return jnp.einsum("bch,bcv->hv", h_c, d_low, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _fused(hidden, head, targets, weights, chunk, z_loss):
    return _fused_forward(hidden, head, targets, weights, chunk, z_loss)[0]


def _fused_fwd(hidden, head, targets, weights, chunk, z_loss):
    out, grads = _fused_forward(hidden, head, targets, weights, chunk, z_loss)
    return out, (grads, targets, weights)


def _fused_bwd(chunk, z_loss, residuals, cotangents):
    (d_hidden, d_head), targets, weights = residuals
    g = cotangents[0]
    d_targets = np.zeros(targets.shape, jax.dtypes.float0)
    return ((g * d_hidden).astype(d_hidden.dtype), (g * d_head).astype(d_head.dtype),
            d_targets, jnp.zeros_like(weights))


_fused.defvjp(_fused_fwd, _fused_bwd)
