"""Healing: continued pretraining of one candidate through the training core, the same
state, step, optimizer, schedule, checkpointer, non-finite guard and step loop as
`solar-jax train` (train/step_loop.py), with the study's heal.* settings (a TrainConfig
from AblateConfig.train_config).

With heal_checkpoint_every > 0 the state is checkpointed every N steps in the candidate's
own directory (orbax, RunCheckpointer) next to a settings.json; a later call with the same
settings resumes from the latest step, a stale checkpoint is discarded. SIGTERM/SIGINT
finish the current step and checkpoint it (when checkpointing), then end the sweep as any
interrupted command ends (`interrupted`, exit 130/143; solar_jax.interrupts).
"""

from __future__ import annotations

import dataclasses
import json
import signal

import jax
from etils import epath
from jax.experimental import multihost_utils

from solar_jax.ablate.records import jsonable
from solar_jax.ablate.runtime import Runtime
from solar_jax.interrupts import Interrupted
from solar_jax.train import state as state_lib
from solar_jax.train.checkpoints import RunCheckpointer
from solar_jax.train.objectives import make_step
from solar_jax.train.optimizer import make_optimizer, make_schedule
from solar_jax.train.step import compile_train_step
from solar_jax.train.step_loop import NonFiniteStep, StepLoop, resume

_STEP_FNS: dict = {}


def _train_state(rt: Runtime, config, params, tc):
    """(state, batch keys, compiled step). The step is compiled once per (architecture,
    settings, mesh): candidates with the same layer count, and a repeated sweep in one
    process, reuse it."""
    key = (config, json.dumps(dataclasses.asdict(tc), sort_keys=True, default=str), rt.mesh)
    if key not in _STEP_FNS:
        optimizer = make_optimizer(tc)
        state = state_lib.create_state(params, optimizer, rt.mesh)
        step, keys = make_step(tc, config, optimizer, make_schedule(tc))
        step_fn = compile_train_step(step, state_lib.state_shardings(state),
                                     rt.batch_sharding, keys=keys, rules=rt.rules)
        _STEP_FNS[key] = (optimizer, keys, step_fn)
        return state, keys, step_fn
    optimizer, keys, step_fn = _STEP_FNS[key]
    return state_lib.create_state(params, optimizer, rt.mesh), keys, step_fn


def _checkpointer(ckpt_dir: str, config, settings: dict | None, log) -> RunCheckpointer:
    """The candidate's RunCheckpointer, after discarding a checkpoint of another setup."""
    root = epath.Path(ckpt_dir)
    stamp = json.dumps(jsonable({"settings": settings, "config": config.to_dict()}),
                       sort_keys=True)
    if root.exists() and (not (root / "settings.json").exists()
                          or (root / "settings.json").read_text() != stamp):
        log(f"    discarding a healing checkpoint of another setup in {ckpt_dir}")
        if jax.process_index() == 0:
            root.rmtree()
    if jax.process_index() == 0 and not root.exists():
        root.mkdir(parents=True, exist_ok=True)
        (root / "settings.json").write_text(stamp)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("solar-jax ablate: heal checkpoint dir")
    return RunCheckpointer(ckpt_dir, keep=1, async_save=False)


def heal(rt: Runtime, config, params, tc, stream, *, ckpt_dir: str | None, log,
         settings: dict | None = None) -> tuple:
    """Train `params` for tc.steps steps on stream.batch(step); returns (params, info) with
    info's heal_status, heal_final_train_loss and heal_steps. A non-finite step ends
    healing at the last good state, recorded in heal_status."""
    state, keys, step_fn = _train_state(rt, config, params, tc)
    every = rt.cfg.heal_checkpoint_every
    checkpointer = (_checkpointer(ckpt_dir, config, settings, log)
                    if ckpt_dir is not None and every else None)
    try:
        state, data_state, latest = resume(checkpointer, state)
        start = 0
        if latest is not None:
            start = int(data_state["step"])
            log(f"    resumed healing at step {start} from {ckpt_dir}")
        # Healing checkpoints only mid-candidate: the finished candidate's record replaces
        # them. Its record is not a metrics log: the sweep keeps only the last loss.
        loop = StepLoop(step_fn, stream.batch, keys, rt.batch_sharding, tc.steps,
                        checkpointer=checkpointer, checkpoint_every=every,
                        checkpoint_last=False)
        try:
            result = loop.run(state, start)
        except NonFiniteStep as e:
            return e.state["params"], {
                "heal_status": f"non-finite loss/gradient at step {e.step}; stopped",
                "heal_final_train_loss": e.last_record.get("loss"), "heal_steps": e.step - 1}
        if result.stopped and result.done < tc.steps:
            log(f"    healing stopped by a signal after step {result.done}: "
                + ("checkpoint written, a restart resumes it" if checkpointer is not None
                   else "not checkpointed (heal_checkpoint_every=0), a restart heals anew"))
            raise Interrupted(result.signum or signal.SIGTERM)
    finally:
        if checkpointer is not None:
            checkpointer.close()
    return result.state["params"], {"heal_status": "ok",
                                    "heal_final_train_loss": result.record.get("loss"),
                                    "heal_steps": result.done}
