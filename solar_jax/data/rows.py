"""Fixed rows of a PretrainDataset's packed layout, for a study that splits one corpus
into parts by row: held-out rows read once in order (RowSet), training rows read as an
endless reshuffled stream (RowStream). Both give each process its contiguous share of
every global batch, the layout PretrainDataset.batch and
jax.make_array_from_process_local_data use.

    evals = build_pretrain_dataset(cfg, tokenizer, seq_len=..., global_batch_size=B, seed=0)
    held_out = RowSet(evals, np.arange(n), B)            # .batches(): every row once
    train = RowStream(evals, np.arange(n, evals.num_rows), B, seed=0)   # .batch(step)
"""

from __future__ import annotations

import numpy as np

from solar_jax.data.packing import pack_rows
from solar_jax.data.pipeline import PretrainDataset


class RowSet:
    """Fixed packed rows in batches of `batch_size` (the last padded with zero-weight
    copies, marked valid=0), each process getting its contiguous share of every global
    batch."""

    def __init__(self, dataset: PretrainDataset, rows, batch_size: int, process_index: int = 0,
                 process_count: int = 1):
        self.dataset, self.rows = dataset, np.asarray(rows, np.int64)
        self.batch_size = batch_size
        self.process_index, self.process_count = process_index, process_count

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    def batches(self) -> list[dict]:
        out = []
        b, local = self.batch_size, self.batch_size // self.process_count
        for start in range(0, len(self.rows), b):
            ids = self.rows[start:start + b]
            valid = np.ones(b, np.float32)
            if len(ids) < b:
                valid[len(ids):] = 0
                ids = np.concatenate([ids, np.full(b - len(ids), ids[0])])
            lo = self.process_index * local
            ids, valid = ids[lo:lo + local], valid[lo:lo + local]
            batch = pack_rows(self.dataset.stream, self.dataset.layout, ids)
            batch["loss_weights"] = batch["loss_weights"] * valid[:, None]
            batch["valid"] = valid
            out.append(batch)
        return out

    @property
    def num_tokens(self) -> int:
        """Target tokens (loss weights) in the set."""
        return int(sum(b["loss_weights"].sum() for b in self.batches()))


class RowStream:
    """Training batches over fixed rows: batch `step` is a pure function of (seed, step),
    reshuffled each epoch, this process's share of each global batch (the same interface
    as PretrainDataset.batch, so a training loop reads either)."""

    def __init__(self, dataset: PretrainDataset, rows, batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1):
        self.dataset, self.rows = dataset, np.asarray(rows, np.int64)
        self.batch_size, self.seed = batch_size, seed
        self.process_index, self.process_count = process_index, process_count

    def batch(self, step: int) -> dict:
        n, b = len(self.rows), self.batch_size
        local = b // self.process_count
        index = step * b + self.process_index * local + np.arange(local)
        epoch, pos = np.divmod(index, n)
        ids = np.empty(local, np.int64)
        for e in np.unique(epoch):
            order = np.random.default_rng([self.seed, int(e)]).permutation(n)
            ids[epoch == e] = self.rows[order[pos[epoch == e]]]
        return pack_rows(self.dataset.stream, self.dataset.layout, ids)
