"""Direct Preference Optimization with TRL's losses and metrics.

With logits = (π_c − π_r) − (ref_c − ref_r) over summed completion log-probs:
  sigmoid  −logσ(βx)(1−ε) − logσ(−βx)ε                      (DPO; ε = label_smoothing)
  robust   (−logσ(βx)(1−ε) + logσ(−βx)ε) / (1 − 2ε)         (Chowdhury et al.)
  hinge    relu(1 − βx)                                       (SLiC)
  ipo      (x − 1/(2β))²  on length-averaged log-probs        (Azar et al.; as TRL)
rewards = β (π − ref) per side; TRL's metric names are kept for metrics.jsonl.
The reference-free losses `simpo` and `orpo` (train/preference_losses.py) share the
forward and the metrics here and take no reference at all.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from solar_jax.config import ModelConfig
from solar_jax.model.transformer import bind
from solar_jax.train import preference_losses as ref_free
from solar_jax.train.loss import sequence_chunks
from solar_jax.train.step import guarded_update

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
    head = model.head_weight().astype(hidden.dtype)
    chunks = sequence_chunks(hidden, batch["targets"],
                             batch["loss_weights"].astype(jnp.float32), chunk)

    @jax.checkpoint
    def one(h_c, t_c, w_c):
        logits = jnp.einsum("bch,hv->bcv", h_c, head, preferred_element_type=jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        tok = jnp.take_along_axis(logp, t_c[..., None], axis=-1)[..., 0]
        return (jnp.sum(tok * w_c, -1), jnp.sum(w_c, -1),
                jnp.sum(jnp.mean(logits, -1) * w_c, -1))

    def body(carry, xs):
        return tuple(c + o for c, o in zip(carry, one(*xs))), None

    zero = jnp.zeros((hidden.shape[0],), jnp.float32)
    sums, _ = jax.lax.scan(body, (zero, zero, zero), chunks)
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


def preference_loss(pc, pr, nc, nr, ref_c=None, ref_r=None, *, beta: float, loss: str,
                    label_smoothing: float = 0.0, simpo_gamma: float = 0.5,
                    cpo_alpha: float = 0.0):
    """The scalar loss of a batch from per-row summed completion log-probs (pc, pr), their
    token counts (nc, nr) and, for the DPO family, the summed reference log-probs; returns
    (loss, metrics) with TRL's names (rewards/*, logps/*, and nll_loss, log_odds_ratio,
    log_odds_chosen for the reference-free losses)."""
    aux = {}
    if loss in ref_free.REFERENCE_FREE_LOSSES:
        nll = -pc.sum() / jnp.maximum(nc.sum(), 1)  # token mean over chosen completions
        pc, pr = pc / jnp.maximum(nc, 1), pr / jnp.maximum(nr, 1)  # length-averaged
        if loss == "simpo":
            losses, (rc, rr) = ref_free.simpo_losses(pc, pr, beta=beta, gamma=simpo_gamma,
                                                     label_smoothing=label_smoothing)
            value = losses.mean() + (cpo_alpha * nll if cpo_alpha else 0.0)
        else:
            value, aux = ref_free.orpo_loss(pc, pr, nll, beta=beta)
            rc, rr = ref_free.orpo_rewards(pc, pr, beta=beta)
        aux["nll_loss"] = jax.lax.stop_gradient(nll)
    else:
        if loss == "ipo":  # TRL averages log-probs over completion tokens for IPO
            pc, pr = pc / jnp.maximum(nc, 1), pr / jnp.maximum(nr, 1)
            ref_c, ref_r = ref_c / jnp.maximum(nc, 1), ref_r / jnp.maximum(nr, 1)
        losses, (rc, rr) = dpo_losses(pc, pr, ref_c, ref_r, beta=beta, loss=loss,
                                      label_smoothing=label_smoothing)
        value = losses.mean()
    aux.update({"rewards/chosen": rc.mean(), "rewards/rejected": rr.mean(),
                "rewards/accuracies": (rc > rr).astype(jnp.float32).mean(),
                "rewards/margins": (rc - rr).mean(),
                "logps/chosen": jax.lax.stop_gradient(pc).mean(),
                "logps/rejected": jax.lax.stop_gradient(pr).mean()})
    return value, aux


def make_preference_objective(config: ModelConfig, *, chunk: int, **loss_kwargs):
    """objective(params, batch, ref_c=None, ref_r=None) -> (scalar loss, metrics) for one
    preference batch (train or held-out); `loss_kwargs` are `preference_loss`'s. ref_c/ref_r
    are ignored, and may be None, for the reference-free losses."""

    def objective(params, batch, ref_c=None, ref_r=None):
        (pc, pr), (nc, nr), (lc, lr) = pair_logps(config, params, batch, chunk=chunk)
        value, aux = preference_loss(pc, pr, nc, nr, ref_c, ref_r, **loss_kwargs)
        aux.update({"logits/chosen": lc.sum() / jnp.maximum(nc.sum(), 1),
                    "logits/rejected": lr.sum() / jnp.maximum(nr.sum(), 1),
                    "tokens": nc.sum() + nr.sum()})
        return value, aux

    return objective


def make_dpo_step(config: ModelConfig, optimizer: optax.GradientTransformation,
                  schedule: Callable, *, beta: float, loss: str, label_smoothing: float,
                  chunk: int, live_reference: bool, simpo_gamma: float = 0.5,
                  cpo_alpha: float = 0.0):
    """step(state, batch[, ref_params]) -> (state, metrics). With a DPO-family loss the
    batch carries `ref_chosen_logps`/`ref_rejected_logps` unless the reference is computed
    live; the reference-free losses (simpo, orpo) read neither."""
    objective = make_preference_objective(config, chunk=chunk, beta=beta, loss=loss,
                                          label_smoothing=label_smoothing,
                                          simpo_gamma=simpo_gamma, cpo_alpha=cpo_alpha)
    grad_fn = jax.value_and_grad(objective, has_aux=True)
    needs_reference = ref_free.uses_reference(loss)

    def step(state, batch, ref_params=None):
        params = state["params"]
        ref_c = ref_r = None
        if needs_reference and live_reference:
            (ref_c, ref_r), _, _ = pair_logps(config, jax.lax.stop_gradient(ref_params), batch,
                                              chunk=chunk)
        elif needs_reference:
            ref_c, ref_r = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        (loss_value, aux), grads = grad_fn(params, batch, ref_c, ref_r)
        new_state, update_metrics = guarded_update(state, grads, loss_value, optimizer, schedule)
        return new_state, {"loss": loss_value, **update_metrics, **aux}

    return step
