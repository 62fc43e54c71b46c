"""What differs between objectives: the dataset, the step function, the batch keys, and
(for DPO) the reference. `lm` and `sft` share the LM step — SFT differs only in its data,
whose loss weights are zero on prompt tokens."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from solar_jax.config import ModelConfig
from solar_jax.errors import SolarError
from solar_jax.sharding import MeshJit
from solar_jax.train import state as state_lib
from solar_jax.train.config import TrainConfig
from solar_jax.train.step import BATCH_KEYS, make_train_step

REFERENCE_FILE = "reference_logps.npz"


@dataclasses.dataclass
class Objective:
    dataset: Any
    batch_keys: tuple[str, ...]
    step_fn: Callable
    extra_args: tuple = ()  # device arguments after the batch (a live reference's params)
    extra_shardings: tuple = ()
    host_batch: Callable[[int], dict] | None = None


def build_dataset(cfg: TrainConfig, tokenizer):
    kwargs = dict(seq_len=cfg.seq_len, global_batch_size=cfg.batch_size, seed=cfg.seed,
                  process_index=jax.process_index(), process_count=jax.process_count())
    if cfg.objective == "sft":
        from solar_jax.data.sft import build_sft_dataset
        return build_sft_dataset(cfg.data, tokenizer, **kwargs)
    if cfg.objective == "dpo":
        from solar_jax.data.preference import build_preference_dataset
        return build_preference_dataset(cfg.data, tokenizer, **kwargs)
    from solar_jax.data import build_pretrain_dataset
    if cfg.data.format not in ("text", "jsonl", "parquet"):
        raise SolarError(f"objective lm reads data.format text, jsonl or parquet, got "
                         f"{cfg.data.format!r} (use objective: sft or dpo for it)")
    return build_pretrain_dataset(cfg.data, tokenizer, **kwargs)


def dpo_keys() -> tuple[str, ...]:
    from solar_jax.data.preference import SIDES
    from solar_jax.train.dpo import SIDE_KEYS
    return tuple(f"{s}_{k}" for s in SIDES for k in SIDE_KEYS)


REFERENCE_KEYS = ("ref_chosen_logps", "ref_rejected_logps")


def make_step(cfg: TrainConfig, config: ModelConfig, optimizer, schedule):
    """(step_fn, batch keys) of the run's objective: the exact function `train` jits, and
    `solar_jax.aot` compiles from shapes."""
    if cfg.objective in ("lm", "sft"):
        return make_train_step(config, optimizer, schedule, grad_accum=cfg.grad_accum,
                               chunk=cfg.loss_chunk, z_loss=cfg.z_loss), BATCH_KEYS
    from solar_jax.train.dpo import make_dpo_step
    live = cfg.dpo.reference == "live"
    step = make_dpo_step(config, optimizer, schedule, beta=cfg.dpo.beta, loss=cfg.dpo.loss,
                         label_smoothing=cfg.dpo.label_smoothing, chunk=cfg.loss_chunk,
                         live_reference=live)
    return step, dpo_keys() + (() if live else REFERENCE_KEYS)


def build_objective(cfg: TrainConfig, config: ModelConfig, dataset, optimizer, schedule,
                    mesh, rules, params, run_dir: Path) -> Objective:
    step, keys = make_step(cfg, config, optimizer, schedule)
    if cfg.objective in ("lm", "sft"):
        return Objective(dataset, keys, step, host_batch=dataset.batch)
    live = cfg.dpo.reference == "live"
    ref_params = params
    if cfg.reference_model and Path(cfg.reference_model) != Path(cfg.model):
        ref_config, ref_source = state_lib.model_config_for(
            dataclasses.replace(cfg, model=cfg.reference_model, model_overrides={}))
        if state_lib.abstract_shapes(ref_config) != state_lib.abstract_shapes(config):
            raise SolarError(f"reference_model {cfg.reference_model} has another architecture "
                             f"than model {cfg.model}")
        ref_params = state_lib.create_params(config, ref_source, mesh, rules, cfg.seed)
    if live:
        # A separate frozen copy: the policy's buffers are donated and updated every step.
        frozen = jax.tree.map(lambda x: x.copy(), ref_params)
        shardings = jax.tree.map(lambda x: x.sharding, frozen)
        return Objective(dataset, keys, step, (frozen,), (shardings,), host_batch=dataset.batch)

    table = reference_table(cfg, config, dataset, ref_params, mesh, rules, run_dir)

    def host_batch(i: int) -> dict:
        batch = dataset.batch(i)
        batch["ref_chosen_logps"] = table[batch["index"], 0]
        batch["ref_rejected_logps"] = table[batch["index"], 1]
        return batch

    return Objective(dataset, keys, step, host_batch=host_batch)


def reference_table(cfg: TrainConfig, config: ModelConfig, dataset, ref_params, mesh, rules,
                    run_dir: Path) -> np.ndarray:
    """[num_pairs, 2] summed reference log-probs (chosen, rejected): computed in one pass
    before training and stored with the run, so a resumed run reuses it."""
    path = run_dir / REFERENCE_FILE
    if path.is_file():
        stored = np.load(path)
        if str(stored["fingerprint"]) == dataset.fingerprint:
            return stored["logps"]
    from jax.experimental import multihost_utils

    from solar_jax.train.dpo import make_reference_fn
    ref_fn = MeshJit(jax.jit(make_reference_fn(config, chunk=cfg.loss_chunk)), mesh, rules)
    sharding = state_lib.batch_sharding(mesh, rules)
    keys = dpo_keys()
    n, gb, local = dataset.num_rows, dataset.global_batch_size, dataset.local_batch_size
    table = np.zeros((n, 2), np.float32)
    for start in range(0, n, gb):
        ids = (start + np.arange(gb)) % n  # wrap the last batch; duplicates are harmless
        mine = ids[jax.process_index() * local:(jax.process_index() + 1) * local]
        batch = state_lib.global_batch({k: v for k, v in dataset.gather(mine).items() if k in keys},
                                       sharding)
        c, r = ref_fn(ref_params, batch)
        c, r = (np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in (c, r))
        table[ids, 0], table[ids, 1] = c, r
    if jax.process_index() == 0:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, logps=table, fingerprint=np.array(dataset.fingerprint))
        tmp.replace(path)
    return table
