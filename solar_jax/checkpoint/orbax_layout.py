"""Orbax's on-disk pytree layout, read and written with tensorstore alone.

A solar-jax checkpoint's params/ is an orbax checkpoint: params/state/ is one OCDBT
database holding one zarr3 array per leaf (key "a.b.c" for the tree path (a, b, c)), plus
orbax's _METADATA naming the leaves. Conversion needs nothing else of orbax, and importing
orbax (which imports jax) costs a conversion process ~3 s of its ~10 (benchmarks/RESULTS.md,
2026-12-02, issue 19), so the converter writes and reads that layout here: the arrays with
the metadata orbax writes for an uncompressed numpy leaf (one chunk in a sharding_indexed
shard, crc32c index) and the OCDBT config orbax uses, and the same _METADATA and
_CHECKPOINT_METADATA files. orbax restores the result whole or leaf by leaf
(tests/test_orbax_layout.py); a directory this module does not recognise (another
orbax version's metadata, a compressed or zarr2 checkpoint) is left to orbax.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import tensorstore as ts

# Orbax's own settings for the databases it writes (orbax.checkpoint tensorstore_utils):
# metadata inline, data in separate files, one manifest file.
_OCDBT_CONFIG = {"max_inline_value_bytes": 1024, "max_decoded_node_bytes": 100000000,
                 "manifest_kind": "single"}
_HANDLER = ("orbax.checkpoint.experimental.v1._src.handlers."
            "stateful_checkpointable_handler.StatefulCheckpointableHandler")
_ZARR_DTYPES = {"bfloat16": "bfloat16", "float32": "float32", "float16": "float16",
                "int32": "int32", "int64": "int64", "uint8": "uint8"}
# Each write is fsynced by tensorstore by default; the writer instead syncs every file once
# at the end (like the HF writer's shards), so the disk writes a leaf back while the next is
# made. The directory is staged, so nothing is visible before that sync.
_CONTEXT = {"file_io_sync": False}


def _spec(state_dir: Path, key: str) -> dict:
    return {"driver": "zarr3", "kvstore": {"driver": "ocdbt", "base": f"file://{state_dir}",
                                           "path": key}}


def leaf_key(path: tuple[str, ...]) -> str:
    return ".".join(path)


def open_leaves(state_dir: Path, prefix: tuple[str, ...] = ()) -> dict | None:
    """{leaf path below `prefix`: tensorstore array} for an orbax pytree directory of
    numpy/jax arrays in zarr3 + OCDBT; None where the directory is anything else."""
    try:
        meta = json.loads((Path(state_dir) / "_METADATA").read_text())
        if not (meta.get("use_ocdbt") and meta.get("use_zarr3")):
            return None
        entries = [(tuple(k["key"] for k in e["key_metadata"]),
                    e["value_metadata"]["value_type"]) for e in meta["tree_metadata"].values()]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    context = ts.Context(_CONTEXT)
    pending = {}
    for keys, value_type in entries:
        if keys[:len(prefix)] != prefix or not all(isinstance(k, str) for k in keys):
            continue
        if value_type not in ("np.ndarray", "jax.Array"):
            return None
        pending[keys[len(prefix):]] = ts.open(_spec(state_dir, leaf_key(keys)), open=True,
                                              read=True, context=context)
    try:  # opened together: each open reads the OCDBT tree and the array's zarr.json
        return {path: future.result() for path, future in pending.items()} or None
    except ValueError:
        return None


class DirectLeafWriter:
    """Adds numpy leaves to an orbax pytree checkpoint at `params_dir` one at a time."""

    def __init__(self, params_dir: Path):
        self._dir = Path(params_dir)
        self._state = self._dir / "state"
        self._state.mkdir(parents=True, exist_ok=False)
        self._context = ts.Context(_CONTEXT)
        self._paths: list[tuple[str, ...]] = []
        self._started = time.time_ns()

    def add(self, path: tuple[str, ...], array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        dtype = _ZARR_DTYPES.get(array.dtype.name)
        if dtype is None:
            raise TypeError(f"internal: no zarr3 dtype for {array.dtype}")
        shape = list(array.shape)
        metadata = {
            "shape": shape, "data_type": dtype, "fill_value": 0,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": shape}},
            "chunk_key_encoding": {"name": "default"},
            "codecs": [{"name": "sharding_indexed", "configuration": {
                "chunk_shape": shape,
                "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
                "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                                 {"name": "crc32c"}]}}]}
        spec = _spec(self._state, leaf_key(path))
        spec["kvstore"].update(config=_OCDBT_CONFIG, assume_config=True)
        spec["metadata"] = metadata
        store = ts.open(spec, create=True, context=self._context).result()
        # the caller keeps `array` unchanged until this returns, so tensorstore may encode
        # from it instead of taking a copy first (a copy is one more leaf of peak memory)
        store.write(array, can_reference_source_data_indefinitely=True).result()
        self._paths.append(tuple(path))

    def finish(self) -> None:
        tree = {str(path): {"key_metadata": [{"key": k, "key_type": 2} for k in path],
                            "value_metadata": {"value_type": "np.ndarray",
                                               "skip_deserialize": False}}
                for path in self._paths}
        meta = {"tree_metadata": tree, "use_ocdbt": True, "use_zarr3": True,
                "store_array_data_equal_to_fill_value": True, "custom_metadata": None}
        (self._state / "_METADATA").write_text(json.dumps(meta))
        ckpt = {"item_handlers": {"state": _HANDLER}, "metrics": {}, "performance_metrics": {},
                "init_timestamp_nsecs": self._started, "commit_timestamp_nsecs": time.time_ns(),
                "custom_metadata": {}}
        (self._dir / "_CHECKPOINT_METADATA").write_text(json.dumps(ckpt))
        (self._dir / "orbax.checkpoint").write_text("")
        sync_tree(self._dir)


def sync_tree(root: Path) -> None:
    """fsync every file below root, then the directories (deepest first)."""
    dirs = []
    for here, _, files in os.walk(root):
        dirs.append(here)
        for name in files:
            _fsync(os.path.join(here, name))
    for here in reversed(dirs):
        _fsync(here)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
