"""ModelConfig: the architecture of a decoder of one of the families in solar_jax.arch.

What a family's config.json looks like (both directions), which HF class it names and which
of its options are refused lives in that family's record (solar_jax/arch/<family>.py).
Reads transformers 4.x configs (`rope_theta` / `rope_scaling` at top level) and 5.x configs
(`rope_parameters`), and writes both spellings so either version loads what we export.
Anything we cannot reproduce exactly (unsupported biases, other activations, unknown rope
types) is refused with a one-line error instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import yaml

from solar_jax import arch
from solar_jax.arch.base import check_rope_scaling
from solar_jax.errors import SolarError
from solar_jax.resources import presets_dir

DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "float32": "float32",
                 "bf16": "bfloat16", "bfloat16": "bfloat16",
                 "fp16": "float16", "f16": "float16", "float16": "float16"}
# Remat policies of the layer scan: what the backward pass may keep rather than recompute,
# as a jax.checkpoint_policies member and its arguments (looked up where the model applies
# it, solar_jax.model.llama.remat_policy, so configs load without jax). "none": no remat.
REMAT_POLICIES = {"none": None, "full": ("nothing_saveable",),
                  "save_dots": ("checkpoint_dots_with_no_batch_dims",),
                  "save_qkv": ("save_only_these_names", "qkv")}


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
        arch.get(self.model_type)  # a known family
        if self.num_heads % self.num_kv_heads:
            raise SolarError(f"num_heads ({self.num_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise SolarError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise SolarError(f"sliding_window must be positive or null, got {self.sliding_window}")
        if self.sliding_window is not None and not arch.get(self.model_type).sliding_window:
            raise SolarError(f"model_type {self.model_type} has no sliding window (its HF "
                             f"config cannot express one); use one of "
                             f"{', '.join(n for n in arch.names() if arch.get(n).sliding_window)}")
        if self.remat not in REMAT_POLICIES:
            raise SolarError(f"unknown remat policy {self.remat!r}; "
                             f"use one of {', '.join(REMAT_POLICIES)}")
        check_rope_scaling(self.rope_scaling)

    @property
    def arch(self) -> arch.Architecture:
        """This family's record: parameter table, HF/GGUF names, optional block parts."""
        return arch.get(self.model_type)

    @property
    def num_params(self) -> int:
        """Parameter count of the architecture (tied head counted once), from its table."""
        total = 0
        for p in self.arch.params_for(self):
            size = math.prod(p.shape(self))
            total += size * self.num_layers if p.stacked else size
        return total

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
        return cls(**arch.for_hf(hf.get("model_type")).config_from_hf(hf))

    def to_hf(self, torch_dtype: str | None = None) -> dict[str, Any]:
        return self.arch.config_to_hf(self, torch_dtype)

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
