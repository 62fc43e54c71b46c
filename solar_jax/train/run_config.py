"""The keys every run of a model shares — `solar-jax train` and `solar-jax ablate` alike:
which model (and tokenizer), how it is placed on the devices (mesh, logical-axis rules,
attention implementation), the processes of a multi-host run, and the seed.

TrainConfig and AblateConfig inherit these fields, so the YAML keys stay flat and spelled
the same in both (model, model_overrides, tokenizer, attention_impl, seed, mesh,
logical_axis_rules, distributed.*); each config may give `model` its own default.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class DistributedConfig:
    """jax.distributed.initialize arguments; all null = single process (or auto on TPU pods,
    where JAX discovers the coordinator itself)."""
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: list[int] | None = None
    auto: bool = False  # call jax.distributed.initialize() with no arguments (TPU/SLURM)


@dataclasses.dataclass
class RunConfig:
    model: str = ""  # a checkpoint path load_model accepts, or a preset name
    model_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # preset fields
    tokenizer: str | None = None  # defaults to the model's own tokenizer files
    attention_impl: str = "auto"
    seed: int = 0
    mesh: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"data": -1, "fsdp": 1, "tensor": 1})
    logical_axis_rules: dict[str, list[str]] | None = None  # overrides of sharding.DEFAULT_RULES
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)

    def run_settings(self) -> dict[str, Any]:
        """These keys' values, to hand to another config of the family."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(RunConfig)}
