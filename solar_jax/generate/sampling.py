"""Next-token selection: greedy, or sampling with temperature, top-k and top-p.

The filters follow transformers' logits warpers in the same order (temperature, then top-k,
then top-p) and with the same tie and edge rules, so a seeded run differs from theirs only
by the random stream:

* top-k keeps every token whose logit is >= the k-th largest (ties at the boundary stay);
* top-p keeps the smallest set of most likely tokens whose mass reaches p, and always the
  most likely one.

`Sampler` is a frozen dataclass so it can be a static argument of the jitted decode step:
each distinct setting compiles once and greedy pays nothing for the sampling code.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from solar_jax.errors import SolarError

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class Sampler:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0            # 0 = no top-k filter
    top_p: float = 1.0        # 1 = no nucleus filter

    def __post_init__(self):
        if not self.temperature >= 0:
            raise SolarError(f"temperature must be >= 0, got {self.temperature}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise SolarError(f"top-k must be a non-negative integer, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise SolarError(f"top-p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def filter(self, logits: jax.Array) -> jax.Array:
        """Logits [batch, vocab] scaled by temperature, with filtered-out tokens at -inf."""
        logits = logits.astype(jnp.float32) / self.temperature
        vocab = logits.shape[-1]
        if 0 < self.top_k < vocab:
            kth = jax.lax.top_k(logits, self.top_k)[0][..., -1:]
            logits = jnp.where(logits < kth, NEG_INF, logits)
        if self.top_p < 1.0:
            # Sort descending; a token is kept when the mass strictly before it is < p,
            # which keeps the top token always and stops right after reaching p.
            order = jnp.argsort(-logits, axis=-1)
            sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
            probs = jax.nn.softmax(sorted_logits, axis=-1)
            before = jnp.cumsum(probs, axis=-1) - probs
            drop_sorted = before >= self.top_p
            drop = jnp.zeros_like(drop_sorted).at[
                jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
            logits = jnp.where(drop, NEG_INF, logits)
        return logits

    def __call__(self, logits: jax.Array, key: jax.Array) -> jax.Array:
        """Token ids [batch] from logits [batch, vocab]."""
        if self.greedy:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return jax.random.categorical(key, self.filter(logits), axis=-1).astype(jnp.int32)
