"""One optimizer step: forward/backward over `grad_accum` micro-batches, AdamW update.

The loss is the token-weighted mean over the whole global batch: micro-batches contribute
summed NLL and summed weights, divided once at the end, so 4 x B/4 equals one batch of B.
A non-finite loss or gradient leaves params and optimizer state untouched (the loop then
stops the run), so the state in memory is always the last good one.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from solar_jax.config import ModelConfig
from solar_jax.model.transformer import bind
from solar_jax.sharding import MeshJit
from solar_jax.train.loss import fused_cross_entropy

BATCH_KEYS = ("input_ids", "targets", "loss_weights", "segment_ids", "positions")


def batch_loss_sums(config: ModelConfig, params: dict, batch: dict, *, chunk: int,
                    z_loss: float):
    """(objective_sum, (nll_sum, z_sum, correct_sum, weight_sum)) for one micro-batch."""
    model = bind(config, params)
    hidden = model.hidden_states(batch["input_ids"], batch["segment_ids"], batch["positions"])
    head = model.head_weight()
    objective, (nll, z, correct) = fused_cross_entropy(
        hidden, head, batch["targets"], batch["loss_weights"], chunk=chunk, z_loss=z_loss)
    weight = jnp.sum(batch["loss_weights"].astype(jnp.float32))
    return objective, (nll, z, correct, weight)


def make_accumulated_grads(config: ModelConfig, *, grad_accum: int, chunk: int, z_loss: float):
    """(params, batch) -> (summed grads, (nll, z, correct, weight) sums) over micro-batches."""
    grad_fn = jax.grad(lambda p, b: batch_loss_sums(config, p, b, chunk=chunk, z_loss=z_loss),
                       has_aux=True)

    def accumulated(params, batch):
        if grad_accum == 1:
            return grad_fn(params, batch)
        micro = jax.tree.map(
            lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:]), batch)

        def body(carry, mb):
            g, s = grad_fn(params, mb)
            return (jax.tree.map(jnp.add, carry[0], g),
                    tuple(a + b for a, b in zip(carry[1], s))), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        zero = jnp.zeros((), jnp.float32)
        (grads, sums), _ = jax.lax.scan(body, (zeros, (zero,) * 4), micro)
        return grads, sums

    return accumulated


def guarded_update(state: dict, grads, loss, optimizer: optax.GradientTransformation,
                   schedule: Callable):
    """Apply the optimizer unless the loss or the gradient norm is non-finite, in which
    case the state is returned unchanged (the loop then stops the run)."""
    params = state["params"]
    grad_norm = optax.tree.norm(grads) if hasattr(optax, "tree") else optax.global_norm(grads)
    updates, new_opt = optimizer.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    new_state = {"params": keep(new_params, params), "opt_state": keep(new_opt, state["opt_state"]),
                 "step": state["step"] + finite.astype(jnp.int32)}
    return new_state, {"grad_norm": grad_norm, "lr": schedule(state["step"]), "finite": finite}


def make_train_step(config: ModelConfig, optimizer: optax.GradientTransformation,
                    schedule: Callable, *, grad_accum: int, chunk: int, z_loss: float):
    accumulated = make_accumulated_grads(config, grad_accum=grad_accum, chunk=chunk,
                                         z_loss=z_loss)

    def step(state: dict, batch: dict):
        params = state["params"]
        grads, sums = accumulated(params, batch)
        nll, z, correct, weight = sums
        denom = jnp.maximum(weight, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        loss = nll / denom
        new_state, update_metrics = guarded_update(state, grads, loss, optimizer, schedule)
        metrics = {"loss": loss, "z_loss": z / denom, "accuracy": correct / denom,
                   "tokens": weight, **update_metrics}
        return new_state, metrics

    return step


def compile_train_step(step_fn, state_shardings, batch_sharding, *, keys=BATCH_KEYS, extra=(),
                       rules=None):
    """jit with explicit shardings; the state is donated (updated in place), extra
    arguments (a frozen reference model) are not. Traced and called with the batch's mesh
    in context, so the Pallas attention kernels run per device (solar_jax/kernels/sharded.py)
    instead of gathered and replicated, split by the run's `rules`."""
    batch_shardings = {k: batch_sharding for k in keys}
    jitted = jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings, *extra),
                     out_shardings=(state_shardings, None), donate_argnums=(0,))
    return MeshJit(jitted, batch_sharding.mesh, rules)
