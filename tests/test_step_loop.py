"""The step loop `train` and the ablation's healing share (train/step_loop.py), driven by a
stand-in step: which steps read a batch, when it checkpoints, the non-finite guard's last
good state, the stop flag."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from solar_jax.train.step_loop import NonFiniteStep, StepLoop


class Checkpoints:
    def __init__(self):
        self.saved = []

    def save(self, step, state, data_state, run, *, wait=False):
        self.saved.append((step, int(state["step"]), data_state, wait))

    def wait(self):
        pass

    def latest_step(self):
        return self.saved[-1][0] if self.saved else None


def _loop(bad_step=None, on_batch=None, **kwargs):
    """state["step"] counts good steps; the batch of step `bad_step` (0-based) is NaN."""
    sharding = NamedSharding(Mesh(np.array(jax.devices()[:1]), ("data",)), PartitionSpec("data"))
    read = []

    def host_batch(step):
        read.append(step)
        if on_batch:
            on_batch(step)
        return {"x": np.full((2, 3), np.nan if step == bad_step else step, np.float32)}

    def step_fn(state, batch):
        loss = jnp.mean(batch["x"])
        finite = jnp.isfinite(loss)
        return ({"step": state["step"] + finite.astype(jnp.int32)},
                {"loss": loss, "grad_norm": loss, "tokens": jnp.float32(6), "lr": 0.1,
                 "finite": finite})

    loop = StepLoop(step_fn, host_batch, ("x",), sharding, kwargs.pop("steps", 6), **kwargs)
    return loop, read


def test_checkpoint_cadence_and_records():
    ckpt = Checkpoints()
    loop, read = _loop(checkpointer=ckpt, checkpoint_every=2, labels={"objective": "lm"})
    result = loop.run({"step": jnp.zeros((), jnp.int32)}, start=1)
    assert read == [1, 2, 3, 4, 5] and result.done == 6 and not result.stopped
    assert [s[0] for s in ckpt.saved] == [2, 4, 6] and ckpt.saved[0][2] == {"step": 2}
    assert list(result.record)[:2] == ["step", "objective"]
    assert result.record["step"] == 6 and result.record["loss"] == 5.0
    assert result.record["mfu"] is None  # no peak given

    # Healing's cadence: periodic checkpoints only, never the last step's.
    ckpt = Checkpoints()
    loop, _ = _loop(checkpointer=ckpt, checkpoint_every=3, checkpoint_last=False)
    loop.run({"step": jnp.zeros((), jnp.int32)})
    assert [s[0] for s in ckpt.saved] == [3]


def test_non_finite_step_raises_with_the_last_good_state():
    ckpt = Checkpoints()
    loop, read = _loop(bad_step=3, checkpointer=ckpt, checkpoint_every=2)
    with pytest.raises(NonFiniteStep, match=r"at step 4 .*the last good checkpoint is step 2"):
        loop.run({"step": jnp.zeros((), jnp.int32)})
    try:
        loop.run({"step": jnp.zeros((), jnp.int32)})
    except NonFiniteStep as e:
        assert e.step == 4 and int(e.state["step"]) == 3 and e.last_record["step"] == 3
    assert read[-1] == 3  # nothing read after the bad step


def test_signal_checkpoints_the_running_step_and_stops():
    ckpt = Checkpoints()
    before = signal.getsignal(signal.SIGTERM)
    loop, read = _loop(checkpointer=ckpt, checkpoint_every=100, checkpoint_last=False,
                       on_batch=lambda step: step == 1 and os.kill(os.getpid(), signal.SIGTERM))
    result = loop.run({"step": jnp.zeros((), jnp.int32)})
    assert result.stopped and result.signum == signal.SIGTERM and result.done == 2
    assert read == [0, 1] and ckpt.saved == [(2, 2, {"step": 2}, True)]
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
