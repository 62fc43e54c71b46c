"""Reference-free preference losses, as TRL defines them (CPOTrainer's `simpo`, ORPOTrainer).

Both score each answer by its *length-averaged* completion log-prob (p_c, p_r), never by
a reference model, so a run with them has no reference pass at all.

  simpo  logits = (p_c − p_r) − γ/β;  −logσ(β·logits)(1−ε) − logσ(−β·logits)ε
         (Meng et al. 2024, = β p_c − β p_r − γ; ε = label_smoothing, as TRL's CPO)
         + cpo_alpha · NLL(chosen)  when cpo_alpha > 0 (TRL's "CPO-SimPO")
  orpo   log_odds = (p_c − p_r) − (log(1 − e^{p_c}) − log(1 − e^{p_r}))
         loss = NLL(chosen) − β · mean(logσ(log_odds))   (Hong et al. 2024; β is λ)

rewards = β p per side (TRL's); NLL(chosen) is the token-mean cross-entropy over the
batch's chosen completion tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

REFERENCE_FREE_LOSSES = ("simpo", "orpo")
# log(1 - e^p) is -inf at p = 0 (a probability of exactly 1); keep p a hair below it so
# the loss and its gradient stay finite where TRL's torch code would give inf.
_MAX_LOGP = -1e-7


def uses_reference(loss: str) -> bool:
    """Whether `dpo.loss` compares against a reference model (DPO family) or not."""
    return loss not in REFERENCE_FREE_LOSSES


def log1mexp(x):
    """log(1 − e^x) for x < 0, accurate at both ends (Mächler's switch at −ln 2)."""
    x = jnp.minimum(x, _MAX_LOGP)
    return jnp.where(x > -0.6931471805599453, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def simpo_losses(avg_c, avg_r, *, beta: float, gamma: float, label_smoothing: float = 0.0):
    """Per-pair SimPO losses from length-averaged log-probs, and (rewards_c, rewards_r)."""
    logits = (avg_c - avg_r) - gamma / beta
    ls = label_smoothing
    losses = (-jax.nn.log_sigmoid(beta * logits) * (1 - ls)
              - jax.nn.log_sigmoid(-beta * logits) * ls)
    return losses, _rewards(avg_c, avg_r, beta)


def orpo_odds(avg_c, avg_r):
    """(logσ(log_odds), log_odds) per pair: the odds-ratio term and the log odds ratio."""
    log_odds = (avg_c - avg_r) - (log1mexp(avg_c) - log1mexp(avg_r))
    return jax.nn.log_sigmoid(log_odds), log_odds


def orpo_loss(avg_c, avg_r, nll_chosen, *, beta: float):
    """ORPO's scalar loss NLL − β·mean(logσ(log_odds)), and TRL's extra metrics."""
    ratio, log_odds = orpo_odds(avg_c, avg_r)
    loss = nll_chosen - beta * ratio.mean()
    return loss, {"log_odds_ratio": jax.lax.stop_gradient(ratio.mean()),
                  "log_odds_chosen": jax.lax.stop_gradient(log_odds.mean())}


def _rewards(avg_c, avg_r, beta):
    return beta * jax.lax.stop_gradient(avg_c), beta * jax.lax.stop_gradient(avg_r)


def orpo_rewards(avg_c, avg_r, *, beta: float):
    return _rewards(avg_c, avg_r, beta)
