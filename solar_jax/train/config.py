"""The run config of `solar-jax train CONFIG.yaml [key=value ...]`.

Key names are the public interface scripts use: model, tokenizer, data.*, seq_len,
batch_size (global, in sequences), steps, learning_rate, warmup_steps, seed, mesh,
run_dir, checkpoint_every, log_every, and the optimizer/precision keys below.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from solar_jax.config import REMAT_POLICIES, list_presets
from solar_jax.config_io import apply_overrides, from_dict, load_yaml, rebase_paths
from solar_jax.data import DataConfig
from solar_jax.errors import SolarError
from solar_jax.train.eval_config import EvalTaskConfig, validate_eval
from solar_jax.train.preference_losses import uses_reference
from solar_jax.train.run_config import RunConfig


@dataclasses.dataclass
class DPOConfig:
    beta: float = 0.1  # DPO's/SimPO's beta; ORPO's lambda (weight of the odds-ratio term)
    # sigmoid/ipo/hinge/robust compare with a reference model; simpo and orpo are
    # reference-free (train/preference_losses.py): no reference pass at all.
    loss: Literal["sigmoid", "ipo", "hinge", "robust", "simpo", "orpo"] = "sigmoid"
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5  # SimPO's target reward margin (TRL's default)
    cpo_alpha: float = 0.0  # simpo only: weight of an NLL term on chosen (TRL's CPO-SimPO)
    # precomputed: one pass of the reference over the data before training, stored in
    # run_dir/reference_logps.npz; live: a frozen reference model scored every step.
    # Unused by the reference-free losses.
    reference: Literal["precomputed", "live"] = "precomputed"


@dataclasses.dataclass
class TrainConfig(RunConfig):
    # model, model_overrides, tokenizer, attention_impl, seed, mesh, logical_axis_rules and
    # distributed are RunConfig's (shared with `solar-jax ablate`).
    model: str = "tiny-llama"  # a checkpoint path load_model accepts, or a preset name
    # The preset `model` has, for `solar-jax compile` where the checkpoint is not readable
    # from the compiling machine (gs://, not trained yet). train ignores it.
    architecture: str | None = None
    # The slice the config is sized for (a Cloud TPU accelerator type, or h100-N/h200-N):
    # `solar-jax compile`'s default --topology. train ignores it.
    topology: str | None = None
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    objective: Literal["lm", "sft", "dpo"] = "lm"
    dpo: DPOConfig = dataclasses.field(default_factory=DPOConfig)
    reference_model: str | None = None  # DPO reference; defaults to `model`
    seq_len: int = 256
    batch_size: int = 8  # global, in sequences
    grad_accum: int = 1  # micro-batches per step (batch_size must divide evenly)
    steps: int = 100
    learning_rate: float = 3e-4
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    min_lr_ratio: float = 0.1  # final lr = learning_rate * min_lr_ratio (cosine/linear)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clipping; 0 disables
    z_loss: float = 0.0
    loss_chunk: int = 512  # sequence positions per cross-entropy chunk
    param_dtype: Literal["float32", "bfloat16"] = "float32"  # master weights
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    remat: Literal[tuple(REMAT_POLICIES)] = "none"
    run_dir: str = "runs/default"
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    async_checkpoint: bool = True
    log_every: int = 10  # progress/TensorBoard cadence; metrics.jsonl gets every step
    tensorboard: bool = True
    progress: bool = True
    peak_tflops: float | None = None  # per device, for MFU; default from the device kind
    # Validation during training (train/eval_config.py, docs/training_data.md).
    eval_data: Any = None  # a path, a list of paths, or a data mapping / mixture
    eval_every: int = 0  # evaluate every N steps and at the last; 0 = the last step only
    eval_batches: int | None = None  # batches per held-out source; null = all of it
    eval_tasks: list[EvalTaskConfig] = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        positive = ("seq_len", "batch_size", "grad_accum", "steps", "checkpoint_every",
                    "keep_checkpoints", "log_every", "loss_chunk")
        for key in positive:
            if getattr(self, key) <= 0:
                raise SolarError(f"config key {key} must be positive, got {getattr(self, key)}")
        if self.warmup_steps < 0 or self.warmup_steps > self.steps:
            raise SolarError(f"config key warmup_steps must be in [0, steps], got "
                             f"{self.warmup_steps} with steps={self.steps}; when lowering "
                             f"steps, lower warmup_steps too (e.g. "
                             f"warmup_steps={max(self.steps // 10, 0)})")
        if self.learning_rate <= 0:
            raise SolarError(f"config key learning_rate must be positive, got {self.learning_rate}")
        if self.batch_size % self.grad_accum:
            raise SolarError(f"batch_size {self.batch_size} is not divisible by grad_accum "
                             f"{self.grad_accum}")
        for key in ("weight_decay", "grad_clip", "z_loss", "min_lr_ratio"):
            if getattr(self, key) < 0:
                raise SolarError(f"config key {key} must be >= 0")
        if self.dpo.beta <= 0:
            raise SolarError(f"config key dpo.beta must be positive, got {self.dpo.beta}")
        if not 0 <= self.dpo.label_smoothing < 0.5:
            raise SolarError("config key dpo.label_smoothing must be in [0, 0.5)")
        self._validate_preference_loss()
        if self.objective == "dpo" and self.grad_accum != 1:
            raise SolarError("grad_accum > 1 is not supported with objective dpo")
        if not 0 <= self.beta1 < 1 or not 0 <= self.beta2 < 1:
            raise SolarError("config keys beta1 and beta2 must be in [0, 1)")
        validate_eval(self)

    def _validate_preference_loss(self) -> None:
        loss = self.dpo.loss
        if self.dpo.cpo_alpha < 0:
            raise SolarError(f"config key dpo.cpo_alpha must be >= 0, got {self.dpo.cpo_alpha}")
        if self.dpo.cpo_alpha and loss != "simpo":
            raise SolarError(f"config key dpo.cpo_alpha applies to dpo.loss simpo only "
                             f"(CPO-SimPO), not {loss}")
        if loss == "orpo" and self.dpo.label_smoothing:
            raise SolarError("config key dpo.label_smoothing does not apply to dpo.loss orpo "
                             "(TRL's ORPO has none); set it to 0")
        if (self.objective == "dpo" and not uses_reference(loss)
                and self.reference_model is not None):
            raise SolarError(f"dpo.loss {loss} is reference-free: remove reference_model "
                             f"({self.reference_model}), it would not be used")


# Config keys holding paths: relative ones are relative to the config file (config_io).
PATH_KEYS = ("model", "tokenizer", "reference_model", "data.path", "data.cache_dir",
             "data.mixture", "eval_data", "eval_tasks", "run_dir")


def load_train_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    data = load_yaml(path) if path else {}
    if path:
        data = rebase_paths(data, path, PATH_KEYS, names=list_presets())
    data = apply_overrides(data, list(overrides))
    config = from_dict(TrainConfig, data)
    config.validate()
    return config
