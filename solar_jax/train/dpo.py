"""Direct Preference Optimization with TRL's losses and metrics.

With logits = (π_c − π_r) − (ref_c − ref_r) over summed completion log-probs:
  sigmoid  −logσ(βx)(1−ε) − logσ(−βx)ε                      (DPO; ε = label_smoothing)
  robust   (−logσ(βx)(1−ε) + logσ(−βx)ε) / (1 − 2ε)         (Chowdhury et al.)
  hinge    relu(1 − βx)                                       (SLiC)
  ipo      (x − 1/(2β))²  on length-averaged log-probs        (Azar et al.; as TRL)
rewards = β (π − ref) per side; TRL's metric names are kept for metrics.jsonl.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from solar_jax.config import ModelConfig
from solar_jax.model.transformer import bind
from solar_jax.train.loss import lm_head_weight
from solar_jax.train.step import guarded_update

DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust")
SIDE_KEYS = ("input_ids", "targets", "loss_weights", "segment_ids", "positions")


def dpo_losses(policy_c, policy_r, ref_c, ref_r, *, beta: float, loss: str,
               label_smoothing: float = 0.0):
    """Per-pair losses, and (chosen_rewards, rejected_rewards)."""
    x = (policy_c - policy_r) - (ref_c - ref_r)
    ls = label_smoothing
    if loss == "sigmoid":
        losses = -jax.nn.log_sigmoid(beta * x) * (1 - ls) - jax.nn.log_sigmoid(-beta * x) * ls
    elif loss == "robust":
        losses = (-jax.nn.log_sigmoid(beta * x) * (1 - ls)
                  + jax.nn.log_sigmoid(-beta * x) * ls) / (1 - 2 * ls)
    elif loss == "hinge":
        losses = jax.nn.relu(1 - beta * x)
    elif loss == "ipo":
        losses = (x - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(loss)
    rewards_c = beta * jax.lax.stop_gradient(policy_c - ref_c)
    rewards_r = beta * jax.lax.stop_gradient(policy_r - ref_r)
    return losses, (rewards_c, rewards_r)


def sequence_logps(config: ModelConfig, params: dict, batch: dict, *, chunk: int):
    """Per row: (sum of completion-token log-probs, completion token count, sum over
    completion tokens of the mean logit) — logits built chunk by chunk, never all at once."""
    model = bind(config, params)
    hidden = model.hidden_states(batch["input_ids"], batch["segment_ids"], batch["positions"])
    head = lm_head_weight(params, config.tie_word_embeddings).astype(hidden.dtype)
    b, s, h = hidden.shape
    chunk = min(chunk, s)
    pad = -s % chunk
    targets, weights = batch["targets"], batch["loss_weights"].astype(jnp.float32)
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets, weights = (jnp.pad(x, ((0, 0), (0, pad))) for x in (targets, weights))
    n = (s + pad) // chunk
    split = lambda x: x.reshape(b, n, chunk, *x.shape[2:]).swapaxes(0, 1)  # noqa: E731

    @jax.checkpoint
    def one(h_c, t_c, w_c):
        logits = jnp.einsum("bch,hv->bcv", h_c, head, preferred_element_type=jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        tok = jnp.take_along_axis(logp, t_c[..., None], axis=-1)[..., 0]
        return (jnp.sum(tok * w_c, -1), jnp.sum(w_c, -1),
                jnp.sum(jnp.mean(logits, -1) * w_c, -1))

    def body(carry, xs):
        return tuple(c + o for c, o in zip(carry, one(*xs))), None

    zero = jnp.zeros((b,), jnp.float32)
    sums, _ = jax.lax.scan(body, (zero, zero, zero), (split(hidden), split(targets), split(weights)))
    return sums


def pair_logps(config: ModelConfig, params: dict, batch: dict, *, chunk: int):
    """Chosen and rejected sequences scored in one forward ([2B, S])."""
    both = {k: jnp.concatenate([batch[f"chosen_{k}"], batch[f"rejected_{k}"]], 0)
            for k in SIDE_KEYS}
    logps, counts, logit_sums = sequence_logps(config, params, both, chunk=chunk)
    half = batch["chosen_input_ids"].shape[0]
    return (logps[:half], logps[half:]), (counts[:half], counts[half:]), \
        (logit_sums[:half], logit_sums[half:])


def make_reference_fn(config: ModelConfig, *, chunk: int):
    """(params, batch) -> (ref_chosen_logps, ref_rejected_logps): summed, as stored."""
    def ref(params, batch):
        (c, r), _, _ = pair_logps(config, params, batch, chunk=chunk)
        return c, r
    return ref


def make_dpo_step(config: ModelConfig, optimizer: optax.GradientTransformation,
                  schedule: Callable, *, beta: float, loss: str, label_smoothing: float,
                  chunk: int, live_reference: bool):
    """step(state, batch[, ref_params]) -> (state, metrics). The batch carries
    `ref_chosen_logps`/`ref_rejected_logps` unless the reference is computed live."""

    def objective(params, batch, ref_c, ref_r):
        (pc, pr), (nc, nr), (lc, lr) = pair_logps(config, params, batch, chunk=chunk)
        if loss == "ipo":  # TRL averages log-probs over completion tokens for IPO
            pc, pr = pc / jnp.maximum(nc, 1), pr / jnp.maximum(nr, 1)
            ref_c, ref_r = ref_c / jnp.maximum(nc, 1), ref_r / jnp.maximum(nr, 1)
        losses, (rc, rr) = dpo_losses(pc, pr, ref_c, ref_r, beta=beta, loss=loss,
                                      label_smoothing=label_smoothing)
        aux = {"rewards/chosen": rc.mean(), "rewards/rejected": rr.mean(),
               "rewards/accuracies": (rc > rr).astype(jnp.float32).mean(),
               "rewards/margins": (rc - rr).mean(),
               "logps/chosen": pc.mean(), "logps/rejected": pr.mean(),
               "logits/chosen": lc.sum() / jnp.maximum(nc.sum(), 1),
               "logits/rejected": lr.sum() / jnp.maximum(nr.sum(), 1),
               "tokens": nc.sum() + nr.sum()}
        return losses.mean(), aux

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def step(state, batch, ref_params=None):
        params = state["params"]
        if live_reference:
            (ref_c, ref_r), _, _ = pair_logps(config, jax.lax.stop_gradient(ref_params), batch,
                                              chunk=chunk)
        else:
            ref_c, ref_r = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        (loss_value, aux), grads = grad_fn(params, batch, ref_c, ref_r)
        new_state, update_metrics = guarded_update(state, grads, loss_value, optimizer, schedule)
        return new_state, {"loss": loss_value, **update_metrics, **aux}

    return step
