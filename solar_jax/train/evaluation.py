"""Validation during training: held-out loss on `eval_data` and solar_jax.eval tasks on the
current params, every `eval_every` steps and at the last one.

* Held-out sets are built like the training data (same objective, seq_len, batch size and
  seed), and each evaluation reads the same first batches of each: `eval_batches` of them,
  or the whole set (its last batch wraps around to its first rows).
* lm/sft: a forward-only jitted step on the training mesh (the train state's param
  shardings, the batch sharding, grad_accum micro-batches) sums next-token NLL, correct
  predictions and loss tokens; `eval/loss` is the token-weighted mean, `eval/perplexity`
  its exp, `eval/accuracy` the top-1 rate.
* dpo: the training step's own metrics (loss, rewards/*, logps/*, logits/*) without the
  update, jitted with the same shardings; whatever preference loss the run trains with is
  what is evaluated. Means over batches (every batch holds batch_size pairs).
* A mixture as eval_data: each source is evaluated on its own (`eval/<name>/<metric>`),
  and `eval/<metric>` is the mean over sources weighted by the mixture's weights
  (`eval/perplexity` = exp of that loss).
* eval_tasks: `solar_jax.eval.evaluate` on a Model holding the live params (no checkpoint
  round trip); every numeric result goes to `eval/<task>/<metric>`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from solar_jax.data.builders import build_dataset_for, build_source_datasets
from solar_jax.errors import SolarError
from solar_jax.eval import evaluate
from solar_jax.handle import Model
from solar_jax.model.transformer import bind
from solar_jax.sharding import MeshJit
from solar_jax.train import state as state_lib
from solar_jax.train.eval_config import eval_data_config
from solar_jax.train.loss import chunked_cross_entropy
from solar_jax.train.step import BATCH_KEYS

# Settings echoed in an eval results dict: not results, so not logged.
_TASK_SETTINGS = ("task", "data", "limit", "num_fewshot", "batch_size", "max_length", "samples",
                  "model")
_UPDATE_METRICS = ("grad_norm", "lr", "finite")


@dataclasses.dataclass
class EvalSet:
    name: str  # "" for a single held-out section
    weight: float
    dataset: Any
    num_batches: int


def build_eval_sets(cfg, tokenizer) -> list[EvalSet]:
    """The held-out sets of cfg.eval_data (one per mixture source), built like the data."""
    data = eval_data_config(cfg)
    if data is None:
        return []
    kwargs = dict(seq_len=cfg.seq_len, global_batch_size=cfg.batch_size, seed=cfg.seed,
                  process_index=jax.process_index(), process_count=jax.process_count())

    def sized(name, weight, ds):
        whole = math.ceil(ds.num_rows / cfg.batch_size)
        return EvalSet(name, weight, ds, min(whole, cfg.eval_batches or whole))

    try:
        if data.mixture is None:
            return [sized("", 1.0, build_dataset_for(cfg.objective, data, tokenizer, **kwargs))]
        return [sized(source.name, source.weight, ds)
                for source, ds in build_source_datasets(cfg.objective, data, tokenizer, **kwargs)]
    except SolarError as e:
        raise SolarError(f"eval_data: {e}") from None


def make_lm_eval(config, *, grad_accum: int, chunk: int):
    """(params, batch) -> [nll_sum, correct_sum, weight_sum], forward only."""
    def sums(params, batch):
        model = bind(config, params)
        hidden = model.hidden_states(batch["input_ids"], batch["segment_ids"],
                                     batch["positions"])
        head = model.head_weight()
        weights = batch["loss_weights"].astype(jnp.float32)
        nll, _, correct = chunked_cross_entropy(hidden, head, batch["targets"], weights,
                                                chunk=chunk)
        return jnp.stack([nll, correct, jnp.sum(weights)])

    def fn(params, batch):
        if grad_accum == 1:
            return sums(params, batch)
        micro = jax.tree.map(
            lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:]), batch)
        return jax.lax.map(lambda mb: sums(params, mb), micro).sum(0)

    return fn


def last_evaluation(run_dir: Path) -> tuple[int, dict]:
    """(step, record) of the last evaluation metrics.jsonl holds ((0, {}) if none): a
    resumed run does not evaluate up to that step again. Every process agrees on the step
    (process 0 reads the file); the record is process 0's, the one that writes."""
    last, found = 0, {}
    path = run_dir / "metrics.jsonl"
    if jax.process_index() == 0 and path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if any(k.startswith("eval/") for k in record) and int(record.get("step", 0)) >= last:
                last, found = int(record.get("step", 0)), record
    if jax.process_count() > 1:
        last = int(multihost_utils.broadcast_one_to_all(np.int64(last)))
    return last, found


class Evaluator:
    """Runs every evaluation of a run on the live train state (see the module docstring)."""

    def __init__(self, cfg, config, tokenizer, objective, eval_sets: list[EvalSet],
                 state_shardings, batch_sharding, rules=None):
        self.cfg, self.objective, self.sets = cfg, objective, eval_sets
        self.batch_sharding = batch_sharding
        self.is_lm = cfg.objective in ("lm", "sft")
        if self.is_lm:
            self.keys = BATCH_KEYS
            fn = make_lm_eval(config, grad_accum=cfg.grad_accum, chunk=cfg.loss_chunk)
            in_shardings = (state_shardings["params"], {k: batch_sharding for k in self.keys})
        else:
            self.keys = objective.batch_keys
            step_fn = objective.step_fn

            def fn(state, batch, *extra):
                metrics = step_fn(state, batch, *extra)[1]
                # The update and the gradient are not outputs, so XLA drops the backward pass.
                return {k: v for k, v in metrics.items() if k not in _UPDATE_METRICS}

            in_shardings = (state_shardings, {k: batch_sharding for k in self.keys},
                            *objective.extra_shardings)
        self.fn = MeshJit(jax.jit(fn, in_shardings=in_shardings, out_shardings=None),
                          batch_sharding.mesh, rules)
        if cfg.eval_tasks and jax.process_count() > 1:
            raise SolarError("eval_tasks run on one process only (their scoring reads every "
                             "output on the host); drop them from multi-host runs or evaluate "
                             "the checkpoints with `solar-jax eval`")
        self.model = None
        if cfg.eval_tasks:
            self.model = Model(config, None, tokenizer)

    # -- held-out loss ------------------------------------------------------------------
    def _set_metrics(self, state, eval_set: EvalSet) -> dict[str, float]:
        totals: dict[str, float] = {}
        for i in range(eval_set.num_batches):
            local = self.objective.eval_batch(eval_set.dataset, i)
            batch = state_lib.global_batch({k: local[k] for k in self.keys}, self.batch_sharding)
            if self.is_lm:
                out = self.fn(state["params"], batch)
            else:
                out = self.fn(state, batch, *self.objective.extra_args)
            out = jax.device_get(out)
            named = out.items() if isinstance(out, dict) else zip(("nll", "correct", "tokens"),
                                                                  np.asarray(out))
            for k, v in named:
                totals[k] = totals.get(k, 0.0) + float(v)
        if self.is_lm:
            tokens = max(totals["tokens"], 1.0)
            loss = totals["nll"] / tokens
            return {"loss": loss, "perplexity": _exp(loss), "accuracy": totals["correct"] / tokens,
                    "tokens": totals["tokens"]}
        n = eval_set.num_batches
        return {k: (v if k == "tokens" else v / n) for k, v in totals.items()}

    def held_out(self, state) -> dict[str, float]:
        if not self.sets:
            return {}
        if len(self.sets) == 1 and not self.sets[0].name:
            return {f"eval/{k}": v for k, v in self._set_metrics(state, self.sets[0]).items()}
        out, per_set = {}, []
        for s in self.sets:
            metrics = self._set_metrics(state, s)
            per_set.append((s.weight, metrics))
            out.update({f"eval/{s.name}/{k}": v for k, v in metrics.items()})
        total = sum(w for w, _ in per_set)
        for key in per_set[0][1]:
            if key == "tokens":
                out["eval/tokens"] = sum(m[key] for _, m in per_set)
            elif key != "perplexity":
                out[f"eval/{key}"] = sum(w * m[key] for w, m in per_set) / total
        if self.is_lm:
            out["eval/perplexity"] = _exp(out["eval/loss"])
        return out

    # -- benchmark tasks ----------------------------------------------------------------
    def tasks(self, state) -> dict[str, float]:
        out = {}
        if self.model is None:
            return out
        self.model.params = state["params"]
        try:
            for task in self.cfg.eval_tasks:
                results = evaluate(self.model, task.task, task.data, limit=task.limit,
                                   num_fewshot=task.num_fewshot, fewshot_data=task.fewshot_data,
                                   batch_size=task.batch_size, max_length=task.max_length,
                                   max_gen_tokens=task.max_gen_tokens,
                                   tokenizer=self.model.tokenizer)
                for key, value in results.items():
                    if key in _TASK_SETTINGS or isinstance(value, bool) or \
                            not isinstance(value, (int, float)):
                        continue
                    out[f"eval/{task.label}/{key}"] = float(value)
        finally:
            self.model.params = None  # the next step donates these buffers
        return out

    def run(self, state, step: int) -> dict:
        t0 = time.perf_counter()
        record = {"step": step, **self.held_out(state), **self.tasks(state)}
        record["eval/seconds"] = time.perf_counter() - t0
        return record


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")
