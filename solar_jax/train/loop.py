"""`train(cfg)`: the loop behind `solar-jax train`, the same on one CPU, a GPU node or a
TPU pod slice (every host runs it; each reads only its share of every global batch).

The steps themselves run in train/step_loop.py (shared with the ablation's healing).
Faults: SIGTERM/SIGINT (preemption) finish the current step, write a checkpoint of it and
return normally (exit 0); a non-finite loss or gradient stops the run with an error and
leaves the last good checkpoint as the latest; a restart on the same run_dir resumes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax

from solar_jax.chat_template import record_template
from solar_jax.destination import write_text_atomic
from solar_jax.errors import SolarError
from solar_jax.sharding import make_mesh
from solar_jax.tokenizer import run_tokenizer
from solar_jax.train import state as state_lib
from solar_jax.train.checkpoints import RunCheckpointer
from solar_jax.train.config import TrainConfig
from solar_jax.train.eval_config import evaluation_due
from solar_jax.train.evaluation import Evaluator, build_eval_sets, last_evaluation
from solar_jax.train.metrics import (
    MetricsWriter,
    flops_per_token,
    peak_flops_per_device,
)
from solar_jax.train.objectives import build_dataset, build_objective
from solar_jax.train.optimizer import make_optimizer, make_schedule
from solar_jax.train.run_config import RunConfig
from solar_jax.train.run_dir import check_run_dir
from solar_jax.train.step import compile_train_step
from solar_jax.train.step_loop import StepLoop, resume


def init_distributed(cfg: RunConfig) -> None:
    """Join the multi-host run `cfg.distributed` describes (no-op for one process)."""
    d = cfg.distributed
    if d.auto:
        jax.distributed.initialize()
    elif d.num_processes and d.num_processes > 1:
        if not d.coordinator_address or d.process_id is None:
            raise SolarError("distributed.num_processes > 1 needs distributed.coordinator_address "
                             "and distributed.process_id")
        jax.distributed.initialize(d.coordinator_address, d.num_processes, d.process_id,
                                   local_device_ids=d.local_device_ids)


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training; returns the last step's metrics."""
    check_run_dir(cfg)
    init_distributed(cfg)
    mesh = make_mesh(cfg.mesh)
    config, model_source = state_lib.model_config_for(cfg)
    tokenizer = run_tokenizer(cfg.tokenizer, model_source)
    if len(tokenizer) > config.vocab_size:
        raise SolarError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab is "
                         f"{config.vocab_size}")
    if cfg.batch_size % jax.process_count():
        raise SolarError(f"batch_size {cfg.batch_size} is not divisible by the "
                         f"{jax.process_count()} processes")
    dataset = build_dataset(cfg, tokenizer)
    eval_sets = build_eval_sets(cfg, tokenizer)

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0 and "://" not in cfg.run_dir:
        # The run directory is loadable as a model (RunSource): keep its tokenizer with it,
        # recording the chat format SFT/DPO trains on, so chat and exports use that format.
        if cfg.objective in ("sft", "dpo"):
            record_template(tokenizer, cfg.data.chat_template)
        tokenizer.save_pretrained(str(run_dir))
    checkpointer = RunCheckpointer(cfg.run_dir, keep=cfg.keep_checkpoints,
                                   async_save=cfg.async_checkpoint)
    optimizer, schedule = make_optimizer(cfg), make_schedule(cfg)
    rules = state_lib.rules_for(cfg)
    params = state_lib.create_params(config, model_source, mesh, rules, cfg.seed)
    state = state_lib.create_state(params, optimizer, mesh)
    shardings = state_lib.state_shardings(state)
    run_record = {"config": dataclasses.asdict(cfg), "model_config": config.to_dict()}

    # Before any restore: a DPO reference is the initial model, never the resumed policy.
    objective = build_objective(cfg, config, dataset, optimizer, schedule, mesh, rules,
                                state["params"], run_dir,
                                eval_sets=[(s.name or "data", s.dataset) for s in eval_sets])

    start = 0
    state, data_state, latest = resume(checkpointer, state)
    if latest is not None:
        start = dataset.restore(data_state)
        if start != latest:
            raise SolarError(f"checkpoint {latest} holds data position {start}; refusing to resume")
        print(f"resumed from step {latest} in {cfg.run_dir}", flush=True)

    batch_sharding = state_lib.batch_sharding(mesh, rules)
    step_fn = compile_train_step(objective.step_fn, shardings, batch_sharding,
                                 keys=objective.batch_keys, extra=objective.extra_shardings,
                                 rules=rules)
    evaluator = Evaluator(cfg, config, tokenizer, objective, eval_sets, shardings,
                          batch_sharding, rules)
    evaluated, logged = last_evaluation(run_dir)  # a resumed run does not repeat these
    writer = MetricsWriter(run_dir, tensorboard=cfg.tensorboard, progress=cfg.progress,
                           total_steps=cfg.steps, start_step=start,
                           is_main=jax.process_index() == 0)
    evaluation: dict = logged if logged.get("step") == cfg.steps else {}

    def evaluate(state, done):
        # Before the checkpoint: a kill during evaluation resumes before this step and
        # evaluates it then; an evaluation logged before a kill is not run again.
        nonlocal evaluation
        if evaluation_due(cfg, done) and done > evaluated:
            evaluation = evaluator.run(state, done)
            writer.write_eval(evaluation)

    loop = StepLoop(step_fn, objective.host_batch, objective.batch_keys, batch_sharding,
                    cfg.steps, checkpointer=checkpointer, checkpoint_every=cfg.checkpoint_every,
                    data_state=dataset.state, run_record=run_record, writer=writer,
                    log_every=cfg.log_every, labels={"objective": cfg.objective},
                    extra_args=objective.extra_args,
                    flops_per_token=flops_per_token(config, cfg.seq_len),
                    peak_flops=peak_flops_per_device(cfg.peak_tflops),
                    notes=getattr(dataset, "notes", None),
                    record_extra=getattr(dataset, "token_shares", None), after_step=evaluate)
    try:
        result = loop.run(state, start)
        if result.stopped:
            print(f"received signal: checkpoint written at step {result.done}; exiting",
                  flush=True)
        record = result.record
        checkpointer.wait()
        if jax.process_index() == 0 and record.get("step") == cfg.steps:
            final = {**record, **{k: v for k, v in evaluation.items() if k != "step"}}
            write_text_atomic(run_dir / "final_metrics.json", json.dumps(final, indent=2) + "\n")
    finally:
        writer.close()
        checkpointer.close()
    return record
