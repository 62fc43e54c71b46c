"""The step loop every training run goes through: `solar-jax train` and the healing of each
`solar-jax ablate` candidate.

    for step in start..steps:  host batch ─ global batch ─ compiled step ─ non-finite guard
                               ─ metrics record ─ writer ─ (hook) ─ checkpoint ─ stop flag

Faults: SIGTERM/SIGINT (preemption) finish the current step, write a checkpoint of it and
end the loop with `stopped` set; a non-finite loss or gradient raises NonFiniteStep, which
holds the last good state (the step leaves the state untouched on such a step).
"""

from __future__ import annotations

import dataclasses
import signal
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from solar_jax.errors import SolarError
from solar_jax.train import state as state_lib
from solar_jax.train.checkpoints import RunCheckpointer


class StopFlag:
    """Set by SIGTERM/SIGINT while installed; the loop checks it between steps."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signal = signum

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def any_process(self) -> bool:
        if jax.process_count() == 1:
            return self.signal is not None
        flags = multihost_utils.process_allgather(np.int32(self.signal is not None))
        return bool(np.any(flags))


class NonFiniteStep(SolarError):
    """A step's loss or gradient was not finite: `step` is the 1-based step that failed,
    `state` the last good one and `last_record` its metrics record ({} if none ran)."""

    def __init__(self, step: int, metrics: dict, state: dict, last_record: dict,
                 last_checkpoint: int | None):
        self.step, self.state, self.last_record = step, state, last_record
        where = ("" if last_checkpoint is None
                 else f", the last good checkpoint is step {last_checkpoint}")
        super().__init__(f"non-finite loss or gradient at step {step} "
                         f"(loss={float(metrics['loss'])}, "
                         f"grad_norm={float(metrics['grad_norm'])}); stopped{where}")


class Silent:
    """A metrics writer that keeps nothing (healing: the sweep records only the last loss)."""

    def write(self, record: dict, *, show: bool) -> None:
        pass

    def note(self, text: str) -> None:
        pass


def resume(checkpointer: RunCheckpointer | None, state: dict) -> tuple[dict, dict | None,
                                                                      int | None]:
    """(state, data state, step) of the latest checkpoint; (state, None, None) if none."""
    latest = None if checkpointer is None else checkpointer.latest_step()
    if latest is None:
        return state, None, None
    state, data_state, _ = checkpointer.restore(latest, state)
    return state, data_state, latest


@dataclasses.dataclass
class LoopResult:
    state: dict
    record: dict  # the last step's metrics record ({} when no step ran)
    done: int  # steps completed (resumed ones included)
    stopped: bool  # ended early by a signal (after checkpointing the last step)
    signum: int | None = None  # that signal, when it reached this process


@dataclasses.dataclass
class StepLoop:
    """One run's loop. `step_fn` is compiled (compile_train_step); `host_batch(step)` is this
    process's rows of global batch `step`, called once per step, in order."""
    step_fn: Callable
    host_batch: Callable[[int], dict]
    batch_keys: tuple[str, ...]
    batch_sharding: Any
    steps: int
    checkpointer: RunCheckpointer | None = None
    checkpoint_every: int = 0  # 0: only at the last step (checkpoint_last) or on a signal
    checkpoint_last: bool = True
    data_state: Callable[[int], dict] = lambda done: {"step": done}
    run_record: dict = dataclasses.field(default_factory=dict)
    writer: Any = dataclasses.field(default_factory=Silent)  # .write(record, show=), .note()
    log_every: int = 1  # the writer shows (TensorBoard, progress bar) every N steps
    labels: dict = dataclasses.field(default_factory=dict)  # fixed keys of every record
    extra_args: tuple = ()  # device arguments after the batch (a live DPO reference)
    flops_per_token: float = 0.0
    peak_flops: float | None = None  # per device; None: no MFU
    notes: Callable[[int], list[str]] | None = None  # writer notes before step i
    record_extra: Callable[[int], dict] | None = None  # more record keys after step i
    after_step: Callable[[dict, int], None] | None = None  # (state, done), before the checkpoint

    def _save_due(self, done: int, stopping: bool) -> bool:
        if self.checkpointer is None:
            return False
        every = self.checkpoint_every and done % self.checkpoint_every == 0
        last = done == self.steps
        return stopping or (last and self.checkpoint_last) or (bool(every) and not last)

    def run(self, state: dict, start: int = 0) -> LoopResult:
        stop = StopFlag()
        record: dict = {}
        done = start
        try:
            for step in range(start, self.steps):
                t0 = time.perf_counter()
                if self.notes is not None:
                    for note in self.notes(step):
                        self.writer.note(note)
                local = self.host_batch(step)
                batch = state_lib.global_batch({k: local[k] for k in self.batch_keys},
                                               self.batch_sharding)
                state, metrics = self.step_fn(state, batch, *self.extra_args)
                metrics = jax.device_get(metrics)
                seconds = time.perf_counter() - t0
                if not metrics.pop("finite"):
                    last = None
                    if self.checkpointer is not None:
                        self.checkpointer.wait()
                        last = self.checkpointer.latest_step()
                    raise NonFiniteStep(step + 1, metrics, state, record, last)
                done = step + 1
                record = self._record(done, metrics, seconds)
                if self.record_extra is not None:
                    record.update(self.record_extra(step))
                self.writer.write(record, show=done % self.log_every == 0 or done == self.steps)
                if self.after_step is not None:
                    self.after_step(state, done)
                stopping = stop.any_process()
                if self._save_due(done, stopping):
                    self.checkpointer.save(done, state, self.data_state(done), self.run_record,
                                           wait=stopping)
                if stopping:
                    return LoopResult(state, record, done, True, stop.signal)
            return LoopResult(state, record, done, False)
        finally:
            stop.restore()

    def _record(self, done: int, metrics: dict, seconds: float) -> dict:
        tokens_per_sec = float(metrics["tokens"]) / seconds
        mfu = (self.flops_per_token * tokens_per_sec / (self.peak_flops * jax.device_count())
               if self.peak_flops else None)
        return {"step": done, **self.labels, **{k: float(v) for k, v in metrics.items()},
                "tokens_per_sec": tokens_per_sec, "step_time": seconds, "mfu": mfu}
