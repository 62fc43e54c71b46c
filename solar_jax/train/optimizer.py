"""optax AdamW with a weight-decay mask read from the parameter tables (norm scales and
biases get none), warmup + decay schedules, and global-norm clipping."""

from __future__ import annotations

import jax
import optax

from solar_jax import arch
from solar_jax.train.config import TrainConfig


def make_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to learning_rate, then constant, cosine or linear decay to
    learning_rate * min_lr_ratio at the last step."""
    peak = cfg.learning_rate
    decay_steps = max(cfg.steps - cfg.warmup_steps, 1)
    if cfg.schedule == "constant":
        after = optax.constant_schedule(peak)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.min_lr_ratio)
    else:
        after = optax.linear_schedule(peak, peak * cfg.min_lr_ratio, decay_steps)
    if cfg.warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, peak, cfg.warmup_steps)
    return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def decay_mask(params) -> dict:
    """True for leaves that get weight decay: the rows of the architecture tables whose
    role is "weight" (kernels, embeddings); norm scales and biases get none, as in
    transformers' and TRL's usual no-decay groups."""
    def keep(path, _):
        return arch.param_role(tuple(str(getattr(k, "key", k)) for k in path)) == "weight"
    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(make_schedule(cfg), b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)
