"""The destination guard for a training run's directory.

run_dir is written (checkpoints, tokenizer files, metrics, the DPO reference table), so,
after resolving symlinks and `..`, it must not be, hold or lie inside any input: the model,
the tokenizer, the DPO reference model, the data files. One exception: run_dir may be the
model when it already is a run (it has checkpoints/), which is a resume of that run.
"""

from __future__ import annotations

import glob
from pathlib import Path

from solar_jax.checkpoint.solar_format import is_run_dir
from solar_jax.destination import check_overlap, resolved
from solar_jax.train.config import TrainConfig


def _data_inputs(cfg: TrainConfig) -> list[str]:
    out = []
    for pattern in cfg.data.paths:
        if "://" in pattern:
            continue
        if any(ch in pattern for ch in "*?["):
            out += glob.glob(pattern, recursive=True)
        elif pattern:
            out.append(pattern)
    return out


def check_run_dir(cfg: TrainConfig) -> None:
    if "://" in cfg.run_dir:
        return
    run_dir = cfg.run_dir
    models = [m for m in (cfg.model, cfg.reference_model) if m and Path(m).exists()]
    resume = [m for m in models if resolved(m) == resolved(run_dir) and is_run_dir(Path(m))]
    inputs = [m for m in models if m not in resume] + _data_inputs(cfg)
    if cfg.tokenizer and Path(cfg.tokenizer).exists() and not (
            resume and resolved(cfg.tokenizer) == resolved(run_dir)):
        inputs.append(cfg.tokenizer)
    check_overlap(run_dir, inputs, what="run_dir")
