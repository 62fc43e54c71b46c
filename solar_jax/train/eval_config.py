"""The validation keys of a run config: eval_data, eval_every, eval_batches, eval_tasks.

    eval_data: {path: heldout.jsonl}          # or a path, a list of paths, or a mixture
    eval_every: 100                           # and at the last step; 0 = the last step only
    eval_batches: 20                          # per source; default: the whole held-out set
    eval_tasks:
      - {task: gsm8k, data: gsm8k_test.jsonl, limit: 64, num_fewshot: 5}

`eval_data` takes the `data:` section's keys (format, field, chat_template, ...) as its
defaults and overrides them with its own, like the ablation's eval_data (a path, a list of
paths, or a data mapping), so `eval_data: heldout.jsonl` reads the training format.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from solar_jax.data import DataConfig
from solar_jax.data.builders import check_formats
from solar_jax.errors import SolarError
from solar_jax.eval.tasks import task_spec


@dataclasses.dataclass
class EvalTaskConfig:
    """One solar_jax.eval task run on the current params (the arguments of `evaluate`)."""
    task: str = ""
    data: str = ""
    limit: int | None = None
    num_fewshot: int | None = None
    fewshot_data: str | None = None
    batch_size: int = 8
    max_length: int | None = None  # default: seq_len's model context (the model's)
    max_gen_tokens: int = 256
    name: str | None = None  # metric prefix eval/<name>/...; default: the task

    @property
    def label(self) -> str:
        return self.name or self.task


def eval_data_config(cfg) -> Any:
    """cfg.eval_data as a DataConfig (inheriting cfg.data's keys), or None."""
    value = cfg.eval_data
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, DataConfig):
        return value
    if isinstance(value, (str, list)):
        if isinstance(value, list) and not all(isinstance(p, str) for p in value):
            raise SolarError("eval_data must be a path, a list of paths or a data mapping")
        value = {"path": value}
    if not isinstance(value, dict):
        raise SolarError(f"eval_data must be a path, a list of paths or a data mapping, "
                         f"got {value!r}")
    inherited = {k: v for k, v in dataclasses.asdict(cfg.data).items()
                 if k not in ("path", "mixture", "limit", "fraction")}
    known = set(inherited) | {"path", "mixture", "limit", "fraction"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise SolarError(f"unknown config key(s): {', '.join('eval_data.' + k for k in unknown)}")
    try:
        return DataConfig(**{**inherited, **value})
    except SolarError as e:
        raise SolarError(f"eval_data: {e}") from None


def validate_eval(cfg) -> None:
    """The eval keys, without reading any file (data formats against the objective too)."""
    check_formats(cfg.objective, cfg.data)
    data = eval_data_config(cfg)
    if data is not None:
        check_formats(cfg.objective, data, key="eval_data")
    if cfg.eval_every < 0:
        raise SolarError(f"config key eval_every must be >= 0 (0 = at the last step only), "
                         f"got {cfg.eval_every}")
    if cfg.eval_batches is not None and cfg.eval_batches <= 0:
        raise SolarError(f"config key eval_batches must be positive (or null = the whole "
                         f"held-out set), got {cfg.eval_batches}")
    labels = set()
    for i, task in enumerate(cfg.eval_tasks):
        where = f"eval_tasks[{i}]"
        if not task.task:
            raise SolarError(f"{where}: task is not set")
        try:
            task_spec(task.task)
        except SolarError as e:
            raise SolarError(f"{where}: {e}") from None
        if not task.data:
            raise SolarError(f"{where} ({task.task}): data is not set")
        for key in ("data", "fewshot_data"):
            path = getattr(task, key)
            if path and "://" not in path and not Path(path).is_file():
                raise SolarError(f"{where} ({task.task}): {key} file {path} does not exist")
        for key in ("limit", "batch_size", "max_gen_tokens", "max_length"):
            value = getattr(task, key)
            if value is not None and value <= 0:
                raise SolarError(f"{where} ({task.task}): {key} must be positive, got {value}")
        if task.num_fewshot is not None and task.num_fewshot < 0:
            raise SolarError(f"{where} ({task.task}): num_fewshot must be >= 0")
        if task.label in labels:
            raise SolarError(f"{where}: two eval tasks log as eval/{task.label}/...; give one "
                             f"a distinct name")
        labels.add(task.label)


def evaluation_due(cfg, done: int) -> bool:
    """Evaluate after step `done`: every eval_every steps and at the last one."""
    if not cfg.eval_data and not cfg.eval_tasks:
        return False
    return done == cfg.steps or (cfg.eval_every > 0 and done % cfg.eval_every == 0)
