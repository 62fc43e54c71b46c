"""One declarative table between solar-jax parameter paths and Hugging Face tensor names.

Each row: our leaf path, the HF name (with `{i}` for the layer of stacked leaves), and how
a single HF tensor becomes our per-layer array. Only transposes and reshapes are needed
because our rotary embedding keeps HF's rotate-half layout; the inverse is derived from
the same row, so both directions come from one table.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from solar_jax.config import ModelConfig

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
    path: Path
    hf_name: str
    # How our per-layer array is laid out relative to the HF 2-D weight [out, in]:
    # "copy" (same), "t" (transpose: [in, out]), "t_split_out" ([in, n, d] from [n*d, in]),
    # "t_split_in" ([n, d, out] from [out, n*d]).
    kind: str

    @property
    def stacked(self) -> bool:
        return self.path[0] == "layers"


RULES: tuple[Rule, ...] = (
    Rule(("embed", "embedding"), "model.embed_tokens.weight", "copy"),
    Rule(("layers", "attn_norm", "scale"), "model.layers.{i}.input_layernorm.weight", "copy"),
    Rule(("layers", "attn", "q_proj", "kernel"), "model.layers.{i}.self_attn.q_proj.weight", "t_split_out"),
    Rule(("layers", "attn", "k_proj", "kernel"), "model.layers.{i}.self_attn.k_proj.weight", "t_split_out"),
    Rule(("layers", "attn", "v_proj", "kernel"), "model.layers.{i}.self_attn.v_proj.weight", "t_split_out"),
    Rule(("layers", "attn", "o_proj", "kernel"), "model.layers.{i}.self_attn.o_proj.weight", "t_split_in"),
    Rule(("layers", "mlp_norm", "scale"), "model.layers.{i}.post_attention_layernorm.weight", "copy"),
    Rule(("layers", "mlp", "gate_proj", "kernel"), "model.layers.{i}.mlp.gate_proj.weight", "t"),
    Rule(("layers", "mlp", "up_proj", "kernel"), "model.layers.{i}.mlp.up_proj.weight", "t"),
    Rule(("layers", "mlp", "down_proj", "kernel"), "model.layers.{i}.mlp.down_proj.weight", "t"),
    Rule(("final_norm", "scale"), "model.norm.weight", "copy"),
    Rule(("lm_head", "kernel"), "lm_head.weight", "t"),
)


def rules_for(config: ModelConfig) -> list[Rule]:
    return [r for r in RULES if not (r.path[0] == "lm_head" and config.tie_word_embeddings)]


def hf_names(rule: Rule, config: ModelConfig) -> list[str]:
    if rule.stacked:
        return [rule.hf_name.format(i=i) for i in range(config.num_layers)]
    return [rule.hf_name]


def hf_shape(rule: Rule, ours: tuple[int, ...]) -> tuple[int, ...]:
    """HF shape of one tensor given our per-layer shape (no leading layer axis)."""
    if rule.kind == "copy":
        return ours
    if rule.kind == "t":
        return (ours[1], ours[0])
    if rule.kind == "t_split_out":  # ours [in, n, d]
        return (ours[1] * ours[2], ours[0])
    if rule.kind == "t_split_in":  # ours [n, d, out]
        return (ours[2], ours[0] * ours[1])
    raise ValueError(rule.kind)


def from_hf(rule: Rule, tensor: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
    """One HF tensor -> our per-layer layout `ours` (a transpose view, then reshape)."""
    if rule.kind == "copy":
        return tensor
    return tensor.T.reshape(ours)


def to_hf(rule: Rule, array: np.ndarray) -> np.ndarray:
    """Our per-layer array -> the HF tensor (contiguous)."""
    if rule.kind == "copy":
        return np.ascontiguousarray(array)
    if rule.kind == "t":
        return np.ascontiguousarray(array.T)
    if rule.kind == "t_split_out":
        return np.ascontiguousarray(array.reshape(array.shape[0], -1).T)
    if rule.kind == "t_split_in":
        return np.ascontiguousarray(array.reshape(-1, array.shape[-1]).T)
    raise ValueError(rule.kind)


def get_leaf(tree: dict, path: Path):
    for key in path:
        tree = tree[key]
    return tree


def set_leaf(tree: dict, path: Path, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def leaf_name(path: Path) -> str:
    return "/".join(path)
