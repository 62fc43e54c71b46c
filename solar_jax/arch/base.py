"""The architecture record: everything solar-jax knows about one model family, in one place.

A record (`Architecture`) holds the family's Hugging Face `model_type`s and class name, the
mapping between its HF config.json and our ModelConfig (both directions), its llama.cpp
(GGUF) architecture name, the optional parts of its decoder block (q/k/v biases, per-head
q/k RMSNorm, how a sliding window is spelled), and ONE parameter table: a `Param` row per
leaf of our params tree, naming the leaf, its HF tensor, its GGUF tensor, the layout
transform between them, its logical axes and whether weight decay applies.

Conversion (checkpoint/hf_names.py), GGUF import and export, DUS and merge recipes, the
optimizer's decay mask, the logical axes used for sharding, and the benchmarks all read
these records; the decoder (model/llama.py) builds the optional parts a record declares.
This module imports nothing from solar_jax, so config.py can read records without a cycle:
records turn an HF config into ModelConfig *keyword arguments* and read any object with
ModelConfig's attributes back.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from solar_jax.errors import SolarError

LeafPath = tuple[str, ...]

# Logical axis -> the ModelConfig field giving its size. A row's per-layer shape is its axes'
# sizes, so the table alone gives every leaf's shape (the model is checked against it).
AXIS_SIZES = {"vocab": "vocab_size", "embed": "hidden_size", "heads": "num_heads",
              "kv_heads": "num_kv_heads", "head_dim": "head_dim", "mlp": "intermediate_size"}
LAYOUTS = ("copy", "t", "t_split_out", "t_split_in", "split")
ROLES = ("weight", "norm", "bias")  # norms and biases get no weight decay
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
# Config fields two models must share for their layers to be interchangeable (merge, DUS).
INTERCHANGE_FIELDS = ("model_type", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                      "intermediate_size", "vocab_size")


@dataclasses.dataclass(frozen=True)
class Param:
    """One leaf of the params tree and the same tensor in HF and GGUF files.

    layout: how our per-layer array relates to the HF tensor ([out, in] for weights):
    "copy" (same), "t" (transpose: [in, out]), "t_split_out" ([in, n, d] from [n*d, in]),
    "t_split_in" ([n, d, out] from [out, n*d]), "split" ([n, d] from [n*d], a bias).
    Only transposes and reshapes: our rotary embedding keeps HF's rotate-half layout.
    rotary: "q" or "k" for tensors whose rows rotary embeddings pair (per head, in HF's
    rotate-half order); GGUF architectures whose graph pairs rows 2i, 2i+1 permute these.
    """
    path: LeafPath
    hf_name: str            # `{i}` = the layer, for stacked leaves
    gguf_name: str          # llama.cpp's name, `{i}` = the layer
    layout: str
    axes: tuple[str, ...]   # logical axes of one layer (the stack adds "layers" in front)
    role: str = "weight"
    rotary: str | None = None

    def __post_init__(self):
        if self.layout not in LAYOUTS or self.role not in ROLES:
            raise ValueError(f"bad parameter row {self}")

    @property
    def stacked(self) -> bool:
        return self.path[0] == "layers"

    @property
    def decay(self) -> bool:
        return self.role == "weight"

    @property
    def name(self) -> str:
        return "/".join(self.path)

    def shape(self, config) -> tuple[int, ...]:
        """Our per-layer shape (no layer axis) under `config`."""
        return tuple(int(getattr(config, AXIS_SIZES[a])) for a in self.axes)

    def logical_axes(self) -> tuple[str, ...]:
        return ("layers", *self.axes) if self.stacked else self.axes

    def hf_names(self, config) -> list[str]:
        if self.stacked:
            return [self.hf_name.format(i=i) for i in range(config.num_layers)]
        return [self.hf_name]

    def hf_shape(self, ours: tuple[int, ...]) -> tuple[int, ...]:
        """HF shape of one tensor given our per-layer shape."""
        if self.layout == "copy":
            return tuple(ours)
        if self.layout == "t":
            return (ours[1], ours[0])
        if self.layout == "t_split_out":  # ours [in, n, d]
            return (ours[1] * ours[2], ours[0])
        if self.layout == "t_split_in":  # ours [n, d, out]
            return (ours[2], ours[0] * ours[1])
        return (math.prod(ours),)  # split

    def from_hf(self, tensor: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
        """One HF tensor -> our per-layer layout `ours` (a view where possible)."""
        if self.layout == "copy":
            return tensor
        if self.layout == "split":
            return tensor.reshape(ours)
        return tensor.T.reshape(ours)

    def to_hf(self, array: np.ndarray) -> np.ndarray:
        """Our per-layer array -> the HF tensor (contiguous)."""
        if self.layout == "copy":
            return np.ascontiguousarray(array)
        if self.layout == "t":
            return np.ascontiguousarray(array.T)
        if self.layout == "t_split_out":
            return np.ascontiguousarray(array.reshape(array.shape[0], -1).T)
        if self.layout == "t_split_in":
            return np.ascontiguousarray(array.reshape(-1, array.shape[-1]).T)
        return np.ascontiguousarray(array.reshape(-1))  # split

    def rotary_heads(self, config) -> int | None:
        return {"q": config.num_heads, "k": config.num_kv_heads}.get(self.rotary)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One model family. `config_from_hf(hf)` gives ModelConfig keyword arguments;
    `config_to_hf(config)` the family's config.json keys (beside the shared ones)."""
    name: str                          # our model_type
    hf_model_types: tuple[str, ...]    # HF model_types read as this family
    hf_class: str                      # what `architectures` says in an exported config.json
    gguf_arch: str                     # llama.cpp architecture written on export
    gguf_read_archs: tuple[str, ...]   # llama.cpp architectures read as this family
    # How llama.cpp's graph for gguf_arch pairs rotary dimensions: "interleaved" (rows 2i,
    # 2i+1: its converter permutes Q/K rows, undone on import) or "half" (HF's rotate-half).
    gguf_rotary: str
    params: tuple[Param, ...]          # the parameter table
    # Optional parts of the decoder block (model/llama.py builds what is declared here).
    qkv_bias: bool = False             # q/k/v projections carry biases (Qwen2)
    qk_norm: bool = False              # per-head RMSNorm on q and k before RoPE (Qwen3)
    sliding_window: bool = False       # config.json can express a window on every layer
    # Family-specific config.json keys, both ways (see hf_sliding_* below for windows).
    hf_extra_from: Callable[[dict], dict] = lambda hf: {}
    hf_extra_to: Callable[[Any], dict] = lambda config: {}
    hf_refused: tuple[str, ...] = ()   # config.json flags that must be absent or false
    default_rms_norm_eps: float = 1e-6
    interchange_fields: tuple[str, ...] = INTERCHANGE_FIELDS

    def params_for(self, config) -> list[Param]:
        """The rows present under `config` (no lm_head when embeddings are tied)."""
        return [p for p in self.params
                if not (p.path[0] == "lm_head" and config.tie_word_embeddings)]

    def param(self, path: LeafPath) -> Param:
        for p in self.params:
            if p.path == tuple(path):
                return p
        raise SolarError(f"unknown parameter {'/'.join(path)} for {self.name}")

    def by_hf_layer_name(self) -> dict[str, Param]:
        return {p.hf_name: p for p in self.params}

    def by_gguf_name(self) -> dict[str, Param]:
        return {p.gguf_name: p for p in self.params}

    # ---- config.json ----------------------------------------------------------------

    def config_from_hf(self, hf: dict) -> dict[str, Any]:
        for flag in self.hf_refused:
            if hf.get(flag):
                raise SolarError(f"unsupported option {flag}=true for {hf.get('model_type')} "
                                 f"(solar-jax's {self.name} table has no such tensors)")
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise SolarError(f"unsupported hidden_act {act!r}; only silu (SwiGLU) is supported")
        rope_theta, rope_scaling = rope_from_hf(hf)
        heads = hf["num_attention_heads"]
        try:
            kwargs = dict(
                vocab_size=hf["vocab_size"],
                hidden_size=hf["hidden_size"],
                intermediate_size=hf["intermediate_size"],
                num_layers=hf["num_hidden_layers"],
                num_heads=heads,
                num_kv_heads=hf.get("num_key_value_heads") or heads,
                head_dim=hf.get("head_dim") or 0,
                max_position_embeddings=hf.get("max_position_embeddings", 4096),
                rms_norm_eps=hf.get("rms_norm_eps", self.default_rms_norm_eps),
                rope_theta=rope_theta,
                rope_scaling=rope_scaling,
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                sliding_window=None,
                model_type=self.name,
                bos_token_id=hf.get("bos_token_id"),
                eos_token_id=hf.get("eos_token_id"),
                pad_token_id=hf.get("pad_token_id"),
                initializer_range=hf.get("initializer_range", 0.02),
            )
        except KeyError as e:
            raise SolarError(f"config.json lacks required key {e.args[0]!r}") from None
        kwargs.update(self.hf_extra_from(hf))
        return kwargs

    def config_to_hf(self, config, torch_dtype: str | None = None) -> dict[str, Any]:
        rope_parameters = {"rope_type": "default", "rope_theta": config.rope_theta}
        if config.rope_scaling:
            rope_parameters = {**config.rope_scaling, "rope_theta": config.rope_theta}
        out = {
            "architectures": [self.hf_class],
            "model_type": self.hf_model_types[0],
            "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_layers,
            "num_attention_heads": config.num_heads,
            "num_key_value_heads": config.num_kv_heads,
            "head_dim": config.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": config.max_position_embeddings,
            "rms_norm_eps": config.rms_norm_eps,
            # transformers 4.x reads these two; 5.x reads rope_parameters.
            "rope_theta": config.rope_theta,
            "rope_scaling": dict(config.rope_scaling) if config.rope_scaling else None,
            "rope_parameters": rope_parameters,
            "tie_word_embeddings": config.tie_word_embeddings,
            "attention_dropout": 0.0,
            "initializer_range": config.initializer_range,
            "bos_token_id": config.bos_token_id,
            "eos_token_id": config.eos_token_id,
            "pad_token_id": config.pad_token_id,
            "use_cache": True,
            "torch_dtype": torch_dtype or config.param_dtype,
        }
        out.update(self.hf_extra_to(config))
        return out


# ---- the table rows every Llama-like decoder shares --------------------------------------

def layer_param(path: str, hf: str, gguf: str, layout: str, axes: tuple[str, ...],
                **kw) -> Param:
    """A per-layer row: `path` below layers/, HF and GGUF names below the layer prefix."""
    return Param(("layers", *path.split("/")), f"model.layers.{{i}}.{hf}",
                 f"blk.{{i}}.{gguf}", layout, axes, **kw)


EMBED = Param(("embed", "embedding"), "model.embed_tokens.weight", "token_embd.weight",
              "copy", ("vocab", "embed"))
FINAL_NORM = Param(("final_norm", "scale"), "model.norm.weight", "output_norm.weight",
                   "copy", ("embed",), role="norm")
LM_HEAD = Param(("lm_head", "kernel"), "lm_head.weight", "output.weight", "t",
                ("embed", "vocab"))
ATTN_NORM = layer_param("attn_norm/scale", "input_layernorm.weight", "attn_norm.weight", "copy",
                   ("embed",), role="norm")
Q_PROJ = layer_param("attn/q_proj/kernel", "self_attn.q_proj.weight", "attn_q.weight",
                "t_split_out", ("embed", "heads", "head_dim"), rotary="q")
K_PROJ = layer_param("attn/k_proj/kernel", "self_attn.k_proj.weight", "attn_k.weight",
                "t_split_out", ("embed", "kv_heads", "head_dim"), rotary="k")
V_PROJ = layer_param("attn/v_proj/kernel", "self_attn.v_proj.weight", "attn_v.weight",
                "t_split_out", ("embed", "kv_heads", "head_dim"))
O_PROJ = layer_param("attn/o_proj/kernel", "self_attn.o_proj.weight", "attn_output.weight",
                "t_split_in", ("heads", "head_dim", "embed"))
MLP_NORM = layer_param("mlp_norm/scale", "post_attention_layernorm.weight", "ffn_norm.weight",
                  "copy", ("embed",), role="norm")
GATE_PROJ = layer_param("mlp/gate_proj/kernel", "mlp.gate_proj.weight", "ffn_gate.weight", "t",
                   ("embed", "mlp"))
UP_PROJ = layer_param("mlp/up_proj/kernel", "mlp.up_proj.weight", "ffn_up.weight", "t",
                 ("embed", "mlp"))
DOWN_PROJ = layer_param("mlp/down_proj/kernel", "mlp.down_proj.weight", "ffn_down.weight", "t",
                   ("mlp", "embed"))


def decoder_params(*attention_extras: Param) -> tuple[Param, ...]:
    """The Llama decoder's table, with a family's extra attention rows (biases, norms)
    placed after the attention projections (the order tensors are written in)."""
    return (EMBED, ATTN_NORM, Q_PROJ, K_PROJ, V_PROJ, O_PROJ, *attention_extras, MLP_NORM,
            GATE_PROJ, UP_PROJ, DOWN_PROJ, FINAL_NORM, LM_HEAD)


# ---- config.json helpers -------------------------------------------------------------------

def rope_from_hf(hf: dict) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from either transformers 4.x or 5.x spelling."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and params:
        theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = hf.get("rope_theta", 10000.0)
        scaling = dict(hf.get("rope_scaling") or {})
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    scaling.pop("type", None)
    if not scaling or scaling.get("rope_type", "default") == "default":
        return float(theta), None
    check_rope_scaling(scaling)
    return float(theta), scaling


def check_rope_scaling(scaling: dict | None) -> None:
    if not scaling:
        return
    rope_type = scaling.get("rope_type")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise SolarError(f"unsupported rope type {rope_type!r}; "
                         f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    needed = {"linear": ("factor",),
              "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                         "original_max_position_embeddings")}.get(rope_type, ())
    missing = [k for k in needed if k not in scaling]
    if missing:
        raise SolarError(f"rope type {rope_type!r} needs {', '.join(missing)}")


def window_from_layer_types(hf: dict) -> dict:
    """Qwen-style windows: `use_sliding_window`, `max_window_layers` and (transformers 5)
    a per-layer `layer_types` list. Our stack applies one window to every layer, so a
    config whose layers mix full and sliding attention is refused."""
    n = hf.get("num_hidden_layers", 0)
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    types = hf.get("layer_types")
    if types is None:  # transformers' own default for these families
        first = hf.get("max_window_layers", n)
        types = ["sliding_attention" if window is not None and i >= first else "full_attention"
                 for i in range(n)]
    if len(types) != n:
        raise SolarError(f"config.json has {len(types)} layer_types for {n} layers")
    kinds = set(types)
    if not kinds <= {"full_attention", "sliding_attention"}:
        raise SolarError(f"unsupported layer_types {sorted(kinds)}")
    if len(kinds) > 1:
        raise SolarError("config.json mixes full and sliding-window attention layers "
                         "(layer_types / max_window_layers); solar-jax applies one attention "
                         "kind to every layer")
    if kinds == {"sliding_attention"}:
        if not hf.get("sliding_window"):
            raise SolarError("layer_types asks for sliding attention but sliding_window is unset")
        return {"sliding_window": int(hf["sliding_window"])}
    return {"sliding_window": None}


def window_to_layer_types(config) -> dict:
    """Every per-layer field for this stack of config.num_layers layers (a DUS output must
    not keep its source's list: transformers refuses a layer_types of another length)."""
    sliding = config.sliding_window is not None
    kind = "sliding_attention" if sliding else "full_attention"
    return {"use_sliding_window": sliding, "sliding_window": config.sliding_window,
            "max_window_layers": 0 if sliding else config.num_layers,
            "layer_types": [kind] * config.num_layers}
