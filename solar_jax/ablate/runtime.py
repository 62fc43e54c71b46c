"""What every candidate of a sweep shares: the mesh, the batch sharding, the parameter
shardings of a layer count, and the compiled held-out evaluation (cached per architecture,
so candidates with the same layer count, and a repeated sweep in one process, reuse it)."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import multihost_utils

from solar_jax.data import RowSet
from solar_jax.errors import SolarError
from solar_jax.model.transformer import abstract_params, logical_axes
from solar_jax.sharding import param_shardings
from solar_jax.train import state as state_lib
from solar_jax.train.step import batch_loss_sums

_EVAL_FNS: dict = {}


class Runtime:
    def __init__(self, cfg, mesh, rules):
        self.cfg, self.mesh, self.rules = cfg, mesh, rules
        self.batch_sharding = state_lib.batch_sharding(mesh, rules)

    def place(self, local: dict) -> dict:
        return state_lib.global_batch(local, self.batch_sharding)

    def param_shardings(self, config):
        return param_shardings(abstract_params(config), logical_axes(config), self.mesh,
                               self.rules)

    def evaluate(self, config, params, rows: RowSet, chunk: int) -> dict:
        """Held-out loss (sum NLL / sum weights), perplexity and next-token accuracy."""
        fn = _eval_fn(config, chunk)
        nll = correct = weight = 0.0
        for local in rows.batches():
            out = jax.device_get(fn(params, self.place(local)))
            nll, correct, weight = nll + float(out[0]), correct + float(out[1]), \
                weight + float(out[2])
        if weight == 0:
            raise SolarError("the held-out set has no target tokens")
        loss = nll / weight
        return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "acc": correct / weight,
                "tokens": int(weight)}


def _eval_fn(config, chunk: int):
    key = (config, chunk)
    if key not in _EVAL_FNS:
        def fn(params, batch):
            _, (nll, _, correct, weight) = batch_loss_sums(config, params, batch, chunk=chunk,
                                                           z_loss=0.0)
            return nll, correct, weight
        _EVAL_FNS[key] = jax.jit(fn)
    return _EVAL_FNS[key]


def broadcast_flags(flags: list[bool]) -> list[bool]:
    """Process 0's view of which records exist (out_dir may be local to it)."""
    if jax.process_count() == 1:
        return flags
    arr = multihost_utils.broadcast_one_to_all(np.asarray(flags, np.int32))
    return [bool(x) for x in np.asarray(arr)]
