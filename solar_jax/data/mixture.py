"""Weighted mixtures of row sources, index-addressable: global row j is a pure function of
(sources, weights, seed, j), so batch k is too, and a run resumes exactly with any process
count.

Unit: rows. Each source is packed (or, for DPO, paired) on its own, so a row holds one
source's documents only; with packing a row is about seq_len tokens whatever the source,
so row weights are close to input-token weights. The loss-token share of each source in
each step (prompt tokens are not loss tokens) is reported as `data/<name>/tokens`.

Schedule: weights are rounded to counts n_s over a period of P rows (largest remainder,
sum P; P >= 4096 grows until every source gets a row), and the period is laid out by smooth
weighted round robin (nginx's): at every prefix each source is within one row of its share.
Global row j = period j // P, offset r = j % P: source s = sched[r], and it is that
source's row (j // P) * n_s + rank[r] of its own order (shuffled by its seed, reshuffled
each epoch). A source that runs out starts its next epoch (re-shuffled) and the loop logs
a note; other sources are unaffected.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from typing import Any

import numpy as np

from solar_jax.data.packing import pack_rows, row_loss_tokens
from solar_jax.errors import SolarError

STATE_VERSION = 1
MIN_PERIOD, MAX_PERIOD = 4096, 1 << 22


def period_counts(weights: list[float], period: int) -> np.ndarray:
    """Rows per period for each source: largest remainder of w_s / sum(w) x period."""
    w = np.asarray(weights, np.float64)
    exact = w / w.sum() * period
    counts = np.floor(exact).astype(np.int64)
    order = sorted(range(len(w)), key=lambda i: (-(exact[i] - counts[i]), i))
    counts[order[:period - int(counts.sum())]] += 1
    return counts


def smooth_schedule(counts: np.ndarray) -> np.ndarray:
    """[sum(counts)] source ids: smooth weighted round robin (ties to the lower id)."""
    total = int(counts.sum())
    current = np.zeros(len(counts), np.int64)
    out = np.empty(total, np.int32)
    for r in range(total):
        current += counts
        s = int(np.argmax(current))  # first maximum: deterministic
        out[r] = s
        current[s] -= total
    return out


class MixtureSchedule:
    """Global row index -> (source, that source's row number), vectorized."""

    def __init__(self, weights: list[float]):
        period = MIN_PERIOD
        counts = period_counts(weights, period)
        while counts.min() == 0 and period < MAX_PERIOD:
            period *= 2
            counts = period_counts(weights, period)
        if counts.min() == 0:
            raise SolarError(f"a mixture weight is below 1/{MAX_PERIOD} of the total")
        self.period, self.counts = period, counts
        self.sched = smooth_schedule(counts)
        onehot = self.sched[None, :] == np.arange(len(counts))[:, None]
        # prefix[s, r] = rows of source s among the first r of a period
        self.prefix = np.concatenate([np.zeros((len(counts), 1), np.int64),
                                      np.cumsum(onehot, axis=1)], axis=1)
        self.rank = self.prefix[self.sched, np.arange(period)]

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, np.int64)
        q, r = np.divmod(rows, self.period)
        source = self.sched[r]
        return source, q * self.counts[source] + self.rank[r]

    def consumed(self, rows: int) -> np.ndarray:
        """Rows of each source among the first `rows` global rows."""
        q, r = divmod(int(rows), self.period)
        return q * self.counts + self.prefix[:, r]


def source_seed(seed: int, name: str) -> int:
    """Each source's own seed, from the run's seed and the source's name (not its place in
    the list, so adding a source leaves the others' orders alone)."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]).generate_state(1)[0])


class RowSource:
    """One source as the mixture reads it: its row order (an indexable, endless stream of
    row ids: epoch after epoch), how to gather rows, and each row's loss tokens."""

    def __init__(self, name: str, weight: float, dataset, order, gather, row_tokens):
        self.name, self.weight, self.dataset = name, weight, dataset
        self.order, self.gather, self.row_tokens = order, gather, np.asarray(row_tokens)
        self.num_rows = len(self.row_tokens)
        self.fingerprint = dataset.fingerprint


def packed_source(name: str, weight: float, dataset) -> RowSource:
    """A PretrainDataset (lm or sft) as a mixture source."""
    return RowSource(name, weight, dataset, dataset.row_order,
                     lambda ids: pack_rows(dataset.stream, dataset.layout, ids),
                     row_loss_tokens(dataset.stream, dataset.layout))


def pair_source(name: str, weight: float, dataset) -> RowSource:
    """A PreferenceDataset (dpo) as a mixture source; loss tokens are both completions'."""
    arrays = dataset.arrays
    tokens = sum(arrays[f"{side}_mask"][:, 1:].sum(1) for side in ("chosen", "rejected"))
    return RowSource(name, weight, dataset, dataset.row_order, dataset.gather, tokens)


class MixtureDataset:
    """Batches of a weighted mixture; the same interface as PretrainDataset (batch, state,
    restore) plus the global-row-id space of every source's rows (gather, num_rows: for
    DPO's reference table), `token_shares(step)` and `notes(step)`. Batches carry `source`
    (each row's source id) beside the model's keys."""

    def __init__(self, sources: list[RowSource], *, global_batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1):
        if global_batch_size % process_count:
            raise SolarError(f"global batch size {global_batch_size} is not divisible by the "
                             f"process count {process_count}")
        self.sources, self.seed = sources, int(seed)
        self.names = [s.name for s in sources]
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.process_index, self.process_count = process_index, process_count
        self.schedule = MixtureSchedule([s.weight for s in sources])
        self.offsets = np.concatenate([[0], np.cumsum([s.num_rows for s in sources])])
        self.num_rows = int(self.offsets[-1])
        self.seq_len = getattr(sources[0].dataset, "seq_len", None)
        key = [[s.name, s.weight, s.fingerprint] for s in sources] + [self.seed]
        self.fingerprint = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]

    # -- rows ---------------------------------------------------------------------------
    def global_rows(self, step: int, local: bool = True) -> np.ndarray:
        """Ids (in the concatenated id space of all sources' rows) of batch `step`'s rows:
        this process's share, or the whole global batch."""
        start = step * self.global_batch_size
        if local:
            start += self.process_index * self.local_batch_size
        n = self.local_batch_size if local else self.global_batch_size
        source, position = self.schedule.locate(start + np.arange(n))
        ids = np.empty(n, np.int64)
        for s in np.unique(source):
            at = np.flatnonzero(source == s)
            order = self.sources[s].order
            ids[at] = self.offsets[s] + np.array([order[int(p)] for p in position[at]], np.int64)
        return ids

    def gather(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        ids = np.asarray(ids, np.int64)
        source = np.searchsorted(self.offsets, ids, side="right") - 1
        parts, out = {}, {}
        for s in np.unique(source):
            at = np.flatnonzero(source == s)
            parts[int(s)] = (at, self.sources[s].gather(ids[at] - self.offsets[s]))
        for s, (at, batch) in parts.items():
            for key, value in batch.items():
                if key not in out:
                    out[key] = np.zeros((len(ids), *value.shape[1:]), value.dtype)
                out[key][at] = value
        if "index" in out:  # DPO: pair ids across the whole mixture (the reference table)
            out["index"] = ids.astype(np.int32)
        out["source"] = source.astype(np.int32)
        return out

    def batch(self, step: int) -> dict[str, np.ndarray]:
        if step < 0:
            raise SolarError(f"batch step must be >= 0, got {step}")
        return self.gather(self.global_rows(step))

    # -- reporting ----------------------------------------------------------------------
    def token_shares(self, step: int) -> dict[str, float]:
        """Each source's share of the loss tokens of global batch `step` (all processes)."""
        ids = self.global_rows(step, local=False)
        source = np.searchsorted(self.offsets, ids, side="right") - 1
        tokens = np.zeros(len(self.sources), np.float64)
        for s, rows in enumerate(self.sources):
            mine = ids[source == s] - self.offsets[s]
            tokens[s] = rows.row_tokens[mine].sum()
        total = max(tokens.sum(), 1.0)
        return {f"data/{name}/tokens": float(t / total) for name, t in zip(self.names, tokens)}

    def notes(self, step: int) -> list[str]:
        """A line for every source that starts a new epoch within batch `step`."""
        before = self.schedule.consumed(step * self.global_batch_size)
        after = self.schedule.consumed((step + 1) * self.global_batch_size)
        out = []
        for s, src in enumerate(self.sources):
            # rows numbered k * num_rows (k >= 1) start epochs; any among [before, after)?
            last = (int(after[s]) - 1) // src.num_rows
            if after[s] > before[s] and last > (max(int(before[s]), 1) - 1) // src.num_rows:
                out.append(f"data source '{src.name}' ({src.num_rows} rows) is exhausted; "
                           f"epoch {last + 1} begins at step {step + 1}")
        return out

    def epoch(self, step: int) -> float:
        """Epochs of the mixture's rows (all sources) consumed after `step` batches."""
        return step * self.global_batch_size / self.num_rows

    # -- checkpointing ------------------------------------------------------------------
    def state(self, step: int) -> dict[str, Any]:
        consumed = self.schedule.consumed(int(step) * self.global_batch_size)
        return {"version": STATE_VERSION, "kind": "mixture", "step": int(step),
                "rows_consumed": int(step) * self.global_batch_size,
                "global_batch_size": self.global_batch_size, "seed": self.seed,
                "fingerprint": self.fingerprint,
                "sources": {n: int(c) for n, c in zip(self.names, consumed)}}

    def restore(self, state: dict[str, Any], *, strict: bool = True) -> int:
        if not isinstance(state, dict) or state.get("kind") != "mixture" or \
                state.get("version") != STATE_VERSION or "rows_consumed" not in state:
            raise SolarError("the checkpoint's data state is not a mixture's: the run was "
                             "started with another data section")
        if strict and state.get("fingerprint") != self.fingerprint:
            raise SolarError("the mixture's sources, weights, files, options or seed changed "
                             "since the checkpoint; its data order cannot be resumed")
        rows = int(state["rows_consumed"])
        if rows % self.global_batch_size:
            raise SolarError(f"the checkpoint consumed {rows} rows, not a multiple of the global "
                             f"batch size {self.global_batch_size}")
        return rows // self.global_batch_size

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.name} {s.weight:g} ({s.num_rows} rows)" for s in self.sources)
        return f"MixtureDataset({parts}; batch {self.global_batch_size})"
