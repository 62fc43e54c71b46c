"""A small safetensors reader and writer working one tensor at a time.

The format is an 8-byte little-endian header length, a JSON header of
{name: {dtype, shape, data_offsets}}, then raw little-endian bytes. Doing it ourselves
(no torch, numpy + ml_dtypes for bf16) lets us validate every file from its header before
reading any data, read exactly one tensor into memory, and write a shard whose header is
computed from shapes alone, streaming the tensors after it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

from solar_jax.errors import SolarError

ST_TO_NUMPY = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
NUMPY_TO_ST = {v: k for k, v in ST_TO_NUMPY.items()}
MAX_HEADER = 100 * 1024 * 1024
COPY_BLOCK = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    """A tensor's bytes where they lie in a safetensors file, handed to the writer in place
    of an array when the output needs exactly these bytes: the copy then runs in the kernel
    (copy_file_range) with no decode, no transpose and no buffer in this process."""
    path: Path
    offset: int
    nbytes: int
    dtype: np.dtype
    shape: tuple[int, ...]


class SafetensorsFile:
    """Header of one .safetensors file, validated against the file size."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                raw_len = f.read(8)
                if len(raw_len) < 8:
                    raise SolarError(f"{self.path} is truncated (no safetensors header)")
                (header_len,) = struct.unpack("<Q", raw_len)
                if header_len > min(MAX_HEADER, size - 8):
                    raise SolarError(f"{self.path} is truncated or not a safetensors file")
                header = json.loads(f.read(header_len))
        except FileNotFoundError:
            raise SolarError(f"missing safetensors file {self.path}") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SolarError(f"{self.path} has a corrupt safetensors header") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + header_len
        self.entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            dtype = ST_TO_NUMPY.get(info.get("dtype"))
            if dtype is None:
                raise SolarError(f"{self.path}: tensor {name} has unsupported dtype {info.get('dtype')}")
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
            if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise SolarError(f"{self.path}: tensor {name} has a size that does not match its shape")
            if self.data_start + end > size:
                raise SolarError(f"{self.path} is truncated: tensor {name} ends past the end of the file")
            self.entries[name] = (dtype, shape, begin, end)

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def dtype(self, name: str) -> np.dtype:
        return self.entries[name][0]

    def stored(self, name: str) -> StoredTensor:
        dtype, shape, begin, end = self.entries[name]
        return StoredTensor(self.path, self.data_start + begin, end - begin, dtype, shape)

    def read(self, name: str) -> np.ndarray:
        dtype, shape, begin, end = self.entries[name]
        out = np.empty(shape, dtype)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            view = memoryview(out.reshape(-1).view(np.uint8))
            got = f.readinto(view)
        if got != end - begin:
            raise SolarError(f"{self.path} is truncated while reading {name}")
        return out


def write_safetensors(path: str | Path, specs: list[tuple[str, tuple[int, ...], np.dtype]],
                      fetch: Callable[[str], np.ndarray | StoredTensor],
                      metadata: dict[str, str] | None = None, *, sync: bool = True) -> None:
    """Write tensors `specs` (name, shape, dtype), fetching each only when it is written.
    `fetch` returns an array or a StoredTensor to copy byte for byte. With sync=False the
    caller fsyncs the file later (so the disk writes it back while the next is produced)."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, shape, dtype in specs:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": NUMPY_TO_ST[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
    # The next tensor is fetched (read, laid out: numpy copies release the GIL) on a thread
    # while this one is written: ~the transposes' time off a solar -> HF export at one more
    # layer-sized tensor of memory (benchmarks/RESULTS.md, 2026-12-02).
    with open(path, "wb") as f, ThreadPoolExecutor(1) as pool:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        pending = pool.submit(fetch, specs[0][0]) if specs else None
        for k, (name, shape, dtype) in enumerate(specs):
            item = pending.result()
            pending = pool.submit(fetch, specs[k + 1][0]) if k + 1 < len(specs) else None
            if isinstance(item, StoredTensor):
                _check(name, item.dtype, item.shape, dtype, shape)
                f.flush()
                copy_range(item, f)
                continue
            array = np.ascontiguousarray(item)
            _check(name, array.dtype, array.shape, dtype, shape)
            f.write(array.reshape(-1).view(np.uint8).data)
            del array, item
        f.flush()
        if sync:
            os.fsync(f.fileno())


def _check(name, got_dtype, got_shape, dtype, shape) -> None:
    if tuple(got_shape) != tuple(shape) or np.dtype(got_dtype) != np.dtype(dtype):
        raise SolarError(f"internal: tensor {name} is {np.dtype(got_dtype)}{tuple(got_shape)}, "
                         f"expected {np.dtype(dtype)}{tuple(shape)}")


def copy_range(item: StoredTensor, out) -> None:
    """Append item's bytes to the open binary file `out` (its position is kept in step)."""
    with open(item.path, "rb") as src:
        done = 0
        try:
            while done < item.nbytes:
                n = os.copy_file_range(src.fileno(), out.fileno(), item.nbytes - done,
                                       item.offset + done)
                if n == 0:
                    break
                done += n
        except (AttributeError, OSError):  # no copy_file_range here (or across these files)
            src.seek(item.offset + done)
            while done < item.nbytes:
                block = src.read(min(COPY_BLOCK, item.nbytes - done))
                if not block:
                    break
                out.write(block)
                done += len(block)
            out.flush()
        if done != item.nbytes:
            raise SolarError(f"{item.path} is truncated while copying a tensor")
    out.seek(0, os.SEEK_END)


def plan_shards(specs: Iterable[tuple[str, tuple[int, ...], np.dtype]],
                max_shard_bytes: int) -> list[list[tuple[str, tuple[int, ...], np.dtype]]]:
    """Greedy split in order, as transformers does: a tensor larger than the limit gets
    a shard of its own."""
    shards: list[list] = [[]]
    size = 0
    for spec in specs:
        nbytes = int(np.prod(spec[1], dtype=np.int64)) * np.dtype(spec[2]).itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += nbytes
    return [s for s in shards if s]


def parse_size(text: str | int) -> int:
    """'5GB' / '500MB' / '2GiB' / 1000 -> bytes (decimal units as transformers)."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper()
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
             "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}
    for unit, factor in units.items():
        if s.endswith(unit):
            try:
                value = float(s[: -len(unit)])
            except ValueError:
                break
            if value > 0:
                return int(value * factor)
    if s.isdigit() and int(s) > 0:
        return int(s)
    raise SolarError(f"bad size {text!r}; use e.g. 5GB, 500MB or 2GiB")
