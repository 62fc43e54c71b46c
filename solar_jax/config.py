"""ModelConfig: the architecture of a Llama/Mistral decoder, and its HF config.json mapping.

Reads transformers 4.x configs (`rope_theta` / `rope_scaling` at top level) and 5.x configs
(`rope_parameters`), and writes both spellings so either version loads what we export.
Anything we cannot reproduce exactly (biases, other activations, unknown rope types) is
refused with a one-line error instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from solar_jax.errors import SolarError
from solar_jax.resources import presets_dir

SUPPORTED_MODEL_TYPES = ("llama", "mistral")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
DTYPES = ("float32", "bfloat16", "float16")
DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "float32": "float32",
                 "bf16": "bfloat16", "bfloat16": "bfloat16",
                 "fp16": "float16", "f16": "float16", "float16": "float16"}
REMAT_POLICIES = ("none", "full", "save_dots", "save_qkv")


def canonical_dtype(name: str) -> str:
    try:
        return DTYPE_ALIASES[str(name).lower()]
    except KeyError:
        raise SolarError(f"unknown dtype {name!r}; use one of fp32, bf16, fp16") from None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int = 0  # 0 = hidden_size // num_heads
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # None, or {"rope_type": "linear"|"llama3", ...} with HF's field names.
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    model_type: str = "llama"
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    # Runtime choices, not architecture: how the same weights are stored and computed.
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    attention_impl: str = "auto"
    remat: str = "none"

    def __post_init__(self):
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden_size // max(self.num_heads, 1))
        object.__setattr__(self, "param_dtype", canonical_dtype(self.param_dtype))
        object.__setattr__(self, "compute_dtype", canonical_dtype(self.compute_dtype))
        self.validate()

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SolarError(f"config {name} must be a positive integer, got {value!r}")
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise SolarError(f"unsupported model_type {self.model_type!r}; "
                             f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        if self.num_heads % self.num_kv_heads:
            raise SolarError(f"num_heads ({self.num_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise SolarError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise SolarError(f"sliding_window must be positive or null, got {self.sliding_window}")
        if self.remat not in REMAT_POLICIES:
            raise SolarError(f"unknown remat policy {self.remat!r}; "
                             f"use one of {', '.join(REMAT_POLICIES)}")
        _check_rope_scaling(self.rope_scaling)

    @property
    def num_params(self) -> int:
        """Parameter count of the architecture (tied head counted once)."""
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        attn = h * d * (self.num_heads * 2 + self.num_kv_heads * 2)
        per_layer = attn + 3 * h * i + 2 * h
        head = 0 if self.tie_word_embeddings else h * self.vocab_size
        return self.vocab_size * h + self.num_layers * per_layer + h + head

    def __hash__(self):
        # rope_scaling is a dict; hash the canonical JSON so configs can be static jit args.
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SolarError(f"unknown model config key(s): {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as e:
            raise SolarError(f"bad model config: {e}") from None

    # ---- Hugging Face config.json -------------------------------------------------

    @classmethod
    def from_hf(cls, hf: dict[str, Any] | str | Path) -> "ModelConfig":
        if not isinstance(hf, dict):
            hf = _read_json(Path(hf))
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise SolarError(f"unsupported model_type {model_type!r} in config.json; "
                             f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        for flag in ("attention_bias", "mlp_bias"):
            if hf.get(flag):
                raise SolarError(f"unsupported option {flag}=true (Llama/Mistral without biases only)")
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise SolarError(f"unsupported hidden_act {act!r}; only silu (SwiGLU) is supported")
        rope_theta, rope_scaling = _rope_from_hf(hf)
        heads = hf["num_attention_heads"]
        sliding = hf.get("sliding_window") if model_type == "mistral" else None
        try:
            return cls(
                vocab_size=hf["vocab_size"],
                hidden_size=hf["hidden_size"],
                intermediate_size=hf["intermediate_size"],
                num_layers=hf["num_hidden_layers"],
                num_heads=heads,
                num_kv_heads=hf.get("num_key_value_heads") or heads,
                head_dim=hf.get("head_dim") or 0,
                max_position_embeddings=hf.get("max_position_embeddings", 4096),
                rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
                rope_theta=rope_theta,
                rope_scaling=rope_scaling,
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                sliding_window=sliding,
                model_type=model_type,
                bos_token_id=hf.get("bos_token_id"),
                eos_token_id=hf.get("eos_token_id"),
                pad_token_id=hf.get("pad_token_id"),
                initializer_range=hf.get("initializer_range", 0.02),
            )
        except KeyError as e:
            raise SolarError(f"config.json lacks required key {e.args[0]!r}") from None

    def to_hf(self, torch_dtype: str | None = None) -> dict[str, Any]:
        arch = "MistralForCausalLM" if self.model_type == "mistral" else "LlamaForCausalLM"
        rope_parameters = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope_parameters = {**self.rope_scaling, "rope_theta": self.rope_theta}
        out = {
            "architectures": [arch],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            # transformers 4.x reads these two; 5.x reads rope_parameters.
            "rope_theta": self.rope_theta,
            "rope_scaling": dict(self.rope_scaling) if self.rope_scaling else None,
            "rope_parameters": rope_parameters,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "use_cache": True,
            "torch_dtype": torch_dtype or self.param_dtype,
        }
        if self.model_type == "llama":
            out["mlp_bias"] = False
        else:
            out["sliding_window"] = self.sliding_window
        return out

    # ---- presets --------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ModelConfig":
        path = presets_dir() / f"{name}.yaml"
        if not path.is_file():
            raise SolarError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
        data = yaml.safe_load(path.read_text()) or {}
        data.update(overrides)
        return cls.from_dict(data)


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise SolarError(f"missing {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SolarError(f"{path} is not valid JSON: {e}") from None


def _rope_from_hf(hf: dict) -> tuple[float, dict | None]:
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
    _check_rope_scaling(scaling)
    return float(theta), scaling


def _check_rope_scaling(scaling: dict | None) -> None:
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
