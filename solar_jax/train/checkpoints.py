"""Run checkpoints with orbax's CheckpointManager: the train state (params, optimizer
state, step), the data-iterator state and the run config, every N steps, keeping the last
K, written asynchronously. A run restarted on the same run_dir resumes from the latest.

Local paths and gs:// paths both work (orbax writes through tensorstore/etils.epath).
"""

from __future__ import annotations


import jax
import orbax.checkpoint as ocp

from solar_jax.errors import SolarError
from solar_jax.orbax_util import quiet_orbax as _quiet
import os


def _directory(run_dir: str) -> str:
    if "://" in run_dir:
        return run_dir.rstrip("/") + "/checkpoints"
    return os.path.abspath(os.path.join(run_dir, "checkpoints"))


class RunCheckpointer:
    def __init__(self, run_dir: str, *, keep: int, async_save: bool):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        with _quiet():
            self.manager = ocp.CheckpointManager(_directory(run_dir), options=options,
                                                 item_names=("state", "data", "run"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict, data_state: dict, run: dict, *, wait: bool = False):
        with _quiet():
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                run=ocp.args.JsonSave(run)), force=True)
            if wait:
                self.manager.wait_until_finished()

    def restore(self, step: int, abstract_state: dict) -> tuple[dict, dict, dict]:
        """Restore into arrays with the shardings of `abstract_state`."""
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state)
        try:
            with _quiet():
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
                    run=ocp.args.JsonRestore()))
        except (ValueError, KeyError) as e:
            raise SolarError(f"cannot resume from checkpoint {step}: the run's model or optimizer "
                             f"differs from the one saved ({str(e).splitlines()[0]})") from None
        return out["state"], out["data"], out["run"]

    def wait(self) -> None:
        with _quiet():
            self.manager.wait_until_finished()

    def close(self) -> None:
        with _quiet():
            self.manager.wait_until_finished()
            self.manager.close()
