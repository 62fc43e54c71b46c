"""The pretraining input pipeline: a grain MapDataset whose batch `step` is a pure function
of (corpus, seed, step).

    row ids ─ shuffle(seed; reshuffled per epoch) ─ repeat ─▶ global row stream
      ─ this process's slice of each global batch ─ batch ─ pack_rows ─▶ ds.batch(step)

Because the stream is index-addressable, the iterator state is just how many global rows
have been consumed: it restores under any process count (or any global batch size that
divides it), and a resumed run reads exactly the batches an uninterrupted one would have.
Process p reads rows [p*B/P, (p+1)*B/P) of each global batch and gathers only those rows'
tokens; every process does tokenize the whole corpus (packing needs every document's
length), which data.cache_dir turns into a one-time cost per host.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from solar_jax.data.config import DataConfig
from solar_jax.data.packing import PACKERS, PackedLayout, pack_rows
from solar_jax.data.sources import expand_paths, iter_documents, subset_options, take_subset
from solar_jax.data.tokenize import TokenStream, build_token_stream, corpus_fingerprint
from solar_jax.errors import SolarError

STATE_VERSION = 1


class _ProcessShard(grain.MapDataset):
    """Local row j of process p = global row (j // b) * B + p * b + j % b, with b = B / P:
    process p's contiguous share of every global batch, the layout that
    jax.make_array_from_process_local_data expects for a batch sharded over processes."""

    def __init__(self, parent: grain.MapDataset, global_batch: int, index: int, count: int):
        super().__init__(parent)
        self._global, self._local, self._index = global_batch, global_batch // count, index

    def __len__(self) -> int:
        return len(self._parent) // self._global * self._local

    def __getitem__(self, j):
        if isinstance(j, slice):
            return self.slice(j)
        step, i = divmod(j, self._local)
        return self._parent[step * self._global + self._index * self._local + i]


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise SolarError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class PretrainDataset:
    """Packed, shuffled, per-process batches of a token stream. See the module docstring."""

    def __init__(self, stream: TokenStream, *, seq_len: int, global_batch_size: int, seed: int,
                 shuffle: bool = True, packing: str = "greedy", process_index: int = 0,
                 process_count: int = 1):
        self.seq_len = _positive_int("seq_len", seq_len)
        self.global_batch_size = _positive_int("batch_size (global)", global_batch_size)
        process_count = _positive_int("process_count", process_count)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise SolarError(f"seed must be a non-negative integer, got {seed!r}")
        if not 0 <= process_index < process_count:
            raise SolarError(f"process_index {process_index} is outside 0..{process_count - 1}")
        if self.global_batch_size % process_count:
            raise SolarError(f"global batch size {global_batch_size} is not divisible by the "
                             f"process count {process_count}")
        if stream.num_tokens == 0:
            raise SolarError("the dataset has no tokens (every document is empty)")
        if packing not in PACKERS:
            raise SolarError(f"unknown packing {packing!r}; use one of {', '.join(PACKERS)}")
        self.stream, self.seed, self.shuffle, self.packing = stream, int(seed), shuffle, packing
        self.process_index, self.process_count = process_index, process_count
        self.local_batch_size = self.global_batch_size // process_count

        # Two independent seeds from one: which documents share a row, and the row order.
        pack_seed, order_seed = np.random.SeedSequence(self.seed).generate_state(2)
        docs = np.arange(stream.num_documents)
        if shuffle:
            docs = np.random.default_rng(pack_seed).permutation(docs)
        self.layout: PackedLayout = PACKERS[packing](stream.doc_offsets, docs, self.seq_len)

        rows = grain.MapDataset.range(self.layout.num_rows)
        if shuffle:  # grain reseeds its shuffle per epoch (seed + epoch) once repeated
            rows = rows.shuffle(seed=int(order_seed))
        self.row_order = rows.repeat()  # epoch after epoch; a mixture reads this directly
        shard = _ProcessShard(self.row_order, self.global_batch_size, process_index,
                              process_count)
        # Batch the row ids, then pack: the gather is vectorized over the whole local batch.
        self._batches = shard.batch(self.local_batch_size, drop_remainder=True).map(
            lambda ids: pack_rows(stream, self.layout, ids))
        # Everything the global row stream depends on; a checkpoint's state must match it.
        key = [stream.fingerprint, self.seq_len, self.seed, shuffle, packing]
        self.fingerprint = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]

    # -- reading ---------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        """Packed rows in one epoch."""
        return self.layout.num_rows

    @property
    def num_tokens(self) -> int:
        return self.stream.num_tokens

    @property
    def num_documents(self) -> int:
        return self.stream.num_documents

    def epoch(self, step: int) -> float:
        """Epochs completed after `step` batches."""
        return step * self.global_batch_size / self.num_rows

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's share of global batch `step` (0-based): arrays [B / P, seq_len]."""
        if step < 0:
            raise SolarError(f"batch step must be >= 0, got {step}")
        return self._batches[step]

    def iterator(self, start_step: int = 0, *, num_threads: int = 1,
                 prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
        """batch(start_step), batch(start_step + 1), ... prepared ahead by a background thread
        (more threads only fight over the GIL: packing is many small numpy calls)."""
        options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
        return iter(self._batches[start_step:].to_iter_dataset(options))

    # -- checkpointing ---------------------------------------------------------------------
    def state(self, step: int) -> dict[str, Any]:
        """JSON-serializable state after `step` batches have been consumed."""
        return {"version": STATE_VERSION, "step": int(step),
                "rows_consumed": int(step) * self.global_batch_size,
                "global_batch_size": self.global_batch_size, "seq_len": self.seq_len,
                "seed": self.seed, "num_rows": self.num_rows, "fingerprint": self.fingerprint}

    def restore(self, state: dict[str, Any], *, strict: bool = True) -> int:
        """The next step to read after `state`; any process count. strict=False accepts a
        changed corpus or options (the row stream then differs from the saved run's)."""
        try:
            version, rows = state["version"], int(state["rows_consumed"])
        except (KeyError, TypeError, ValueError):
            raise SolarError(f"not a data iterator state: {state!r:.200}") from None
        if version != STATE_VERSION:
            raise SolarError(f"data iterator state version {version} is not {STATE_VERSION}")
        if strict:
            for key in ("seq_len", "seed"):
                if state.get(key) != getattr(self, key):
                    raise SolarError(f"data state was saved with {key}={state.get(key)}, this run "
                                     f"has {key}={getattr(self, key)}")
            if state.get("fingerprint") != self.fingerprint:
                raise SolarError("the data files, tokenizer or data options changed since the "
                                 "checkpoint; the saved data order cannot be resumed")
        if rows % self.global_batch_size:
            raise SolarError(f"the checkpoint consumed {rows} rows, not a multiple of the global "
                             f"batch size {self.global_batch_size}")
        return rows // self.global_batch_size

    def __repr__(self) -> str:
        return (f"PretrainDataset({self.num_documents} documents, {self.num_tokens} tokens, "
                f"{self.num_rows} rows of {self.seq_len}, batch {self.global_batch_size} "
                f"= {self.process_count} x {self.local_batch_size})")


def build_pretrain_dataset(cfg: DataConfig, tokenizer, *, seq_len: int, global_batch_size: int,
                           seed: int, process_index: int = 0,
                           process_count: int = 1) -> PretrainDataset:
    """Read, tokenize (or load the cached stream), pack and shard the corpus of `cfg`."""
    if not isinstance(cfg, DataConfig):
        cfg = DataConfig.from_dict(cfg)
    # Cheap argument errors first, before reading or tokenizing anything.
    _positive_int("seq_len", seq_len)
    if _positive_int("process_count", process_count) and \
            _positive_int("batch_size (global)", global_batch_size) % process_count:
        raise SolarError(f"global batch size {global_batch_size} is not divisible by the "
                         f"process count {process_count}")
    files = expand_paths(cfg.paths)
    options = {k: getattr(cfg, k) for k in ("format", "field", "text_split", "add_bos", "add_eos")}
    options.update(subset_options(cfg))
    fingerprint = corpus_fingerprint(files, options, tokenizer)
    texts = take_subset(lambda: iter_documents(files, cfg.format, cfg.field, cfg.text_split),
                        cfg.limit, cfg.fraction)
    stream = build_token_stream(texts, tokenizer, add_bos=cfg.add_bos, add_eos=cfg.add_eos,
                                fingerprint=fingerprint, cache_dir=cfg.cache_dir)
    # A pretraining corpus shorter than one row would be mostly padding, repeated: surely a
    # wrong path or seq_len. (PretrainDataset itself allows it; SFT sets may be tiny.)
    if 0 < stream.num_tokens < seq_len:
        raise SolarError(f"the dataset has {stream.num_tokens} tokens, fewer than one row of "
                         f"seq_len={seq_len}; lower seq_len or add data")
    return PretrainDataset(stream, seq_len=seq_len, global_batch_size=global_batch_size, seed=seed,
                           shuffle=cfg.shuffle, packing=cfg.packing, process_index=process_index,
                           process_count=process_count)
