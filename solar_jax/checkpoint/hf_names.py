"""Between solar-jax parameter paths and Hugging Face tensor names, read from the family's
parameter table (solar_jax/arch/): each row names our leaf, the HF tensor (with `{i}` for
the layer of stacked leaves) and the layout transform between them. Only transposes and
reshapes are needed because our rotary embedding keeps HF's rotate-half layout; the
inverse comes from the same row, so both directions come from one table.
"""

from __future__ import annotations

import numpy as np

from solar_jax.arch.base import Param
from solar_jax.config import ModelConfig
Rule = Param  # a row of the parameter table


def rules_for(config: ModelConfig) -> list[Rule]:
    """The rows of config's family present under config (no lm_head when tied)."""
    return config.arch.params_for(config)


def hf_names(rule: Rule, config: ModelConfig) -> list[str]:
    return rule.hf_names(config)


def hf_shape(rule: Rule, ours: tuple[int, ...]) -> tuple[int, ...]:
    """HF shape of one tensor given our per-layer shape (no leading layer axis)."""
    return rule.hf_shape(tuple(ours))


def from_hf(rule: Rule, tensor: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
    """One HF tensor -> our per-layer layout `ours` (a transpose view, then reshape)."""
    return rule.from_hf(tensor, ours)


def to_hf(rule: Rule, array: np.ndarray) -> np.ndarray:
    """Our per-layer array -> the HF tensor (contiguous)."""
    return rule.to_hf(array)


