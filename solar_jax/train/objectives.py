"""What differs between objectives: the dataset, the step function, the batch keys, and
(for DPO) the reference. `lm` and `sft` share the LM step — SFT differs only in its data,
whose loss weights are zero on prompt tokens."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from solar_jax.config import ModelConfig
from solar_jax.data.builders import build_dataset_for, check_formats
from solar_jax.data.preference import SIDES
from solar_jax.destination import staged_file
from solar_jax.errors import SolarError
from solar_jax.sharding import MeshJit
from solar_jax.train import state as state_lib
from solar_jax.train.config import TrainConfig
from solar_jax.train.dpo import SIDE_KEYS, make_dpo_step, make_reference_fn
from solar_jax.train.preference_losses import uses_reference
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
    # (held-out dataset, i) -> its host batch i (a DPO eval set's batch gets its reference)
    eval_batch: Callable[[Any, int], dict] = lambda dataset, i: dataset.batch(i)


def build_dataset(cfg: TrainConfig, tokenizer, data=None):
    """The objective's dataset of `data` (default: cfg.data): one source or a mixture."""
    data = cfg.data if data is None else data
    check_formats(cfg.objective, data)
    return build_dataset_for(cfg.objective, data, tokenizer, seq_len=cfg.seq_len,
                             global_batch_size=cfg.batch_size, seed=cfg.seed,
                             process_index=jax.process_index(),
                             process_count=jax.process_count())


def dpo_keys() -> tuple[str, ...]:
    return tuple(f"{s}_{k}" for s in SIDES for k in SIDE_KEYS)


REFERENCE_KEYS = ("ref_chosen_logps", "ref_rejected_logps")


def make_step(cfg: TrainConfig, config: ModelConfig, optimizer, schedule):
    """(step_fn, batch keys) of the run's objective: the exact function `train` jits, and
    `solar_jax.aot` compiles from shapes."""
    if cfg.objective in ("lm", "sft"):
        return make_train_step(config, optimizer, schedule, grad_accum=cfg.grad_accum,
                               chunk=cfg.loss_chunk, z_loss=cfg.z_loss), BATCH_KEYS
    live = cfg.dpo.reference == "live"
    step = make_dpo_step(config, optimizer, schedule, beta=cfg.dpo.beta, loss=cfg.dpo.loss,
                         label_smoothing=cfg.dpo.label_smoothing, chunk=cfg.loss_chunk,
                         live_reference=live, simpo_gamma=cfg.dpo.simpo_gamma,
                         cpo_alpha=cfg.dpo.cpo_alpha)
    precomputed = uses_reference(cfg.dpo.loss) and not live
    return step, dpo_keys() + (REFERENCE_KEYS if precomputed else ())


def build_objective(cfg: TrainConfig, config: ModelConfig, dataset, optimizer, schedule,
                    mesh, rules, params, run_dir: Path, eval_sets=()) -> Objective:
    """eval_sets: held-out datasets whose DPO reference log-probs are precomputed too."""
    step, keys = make_step(cfg, config, optimizer, schedule)
    if cfg.objective in ("lm", "sft") or not uses_reference(cfg.dpo.loss):
        # lm/sft, and simpo/orpo: no reference model is loaded, copied, scored or stored.
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
    eval_tables = {id(ds): reference_table(cfg, config, ds, ref_params, mesh, rules, run_dir,
                                           filename=f"eval_{name}_{REFERENCE_FILE}")
                   for name, ds in eval_sets}

    def with_reference(batch: dict, logps: np.ndarray) -> dict:
        batch["ref_chosen_logps"] = logps[batch["index"], 0]
        batch["ref_rejected_logps"] = logps[batch["index"], 1]
        return batch

    return Objective(dataset, keys, step,
                     host_batch=lambda i: with_reference(dataset.batch(i), table),
                     eval_batch=lambda ds, i: with_reference(ds.batch(i), eval_tables[id(ds)]))


def reference_table(cfg: TrainConfig, config: ModelConfig, dataset, ref_params, mesh, rules,
                    run_dir: Path, filename: str = REFERENCE_FILE) -> np.ndarray:
    """[num_pairs, 2] summed reference log-probs (chosen, rejected): computed in one pass
    before training and stored with the run, so a resumed run reuses it."""
    path = run_dir / filename
    if path.is_file():
        stored = np.load(path)
        if str(stored["fingerprint"]) == dataset.fingerprint:
            return stored["logps"]

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
        with staged_file(path) as stage, open(stage, "wb") as f:
            np.savez(f, logps=table, fingerprint=np.array(dataset.fingerprint))
    return table
