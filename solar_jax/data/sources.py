"""Files to documents: path expansion and streaming readers for text, JSONL and Parquet.

Everything here is a generator, so a corpus is never held in memory as strings; only the
batch being tokenized is. Bad input is a one-line SolarError naming the file (and line or
row), because a pretraining run that dies on record 3,000,000 must say where.
"""

from __future__ import annotations

import glob
import itertools
import math
import gzip
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from solar_jax.errors import SolarError


def expand_paths(patterns: Sequence[str]) -> list[str]:
    """Files named by `patterns`, each expanded in sorted order (so every host agrees)."""
    if not patterns or not any(patterns):
        raise SolarError("data.path is not set; give a file, directory or glob")
    files: list[str] = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if glob.has_magic(pattern):
            matched = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matched:
                raise SolarError(f"data path {pattern!r} matches no files")
            files.extend(matched)
        elif os.path.isdir(pattern):
            # Skip hidden and "_"-prefixed files: Spark/Beam markers like _SUCCESS are not data.
            matched = sorted(str(p) for p in Path(pattern).rglob("*") if p.is_file()
                             and not any(part[0] in "._" for part in p.relative_to(pattern).parts))
            if not matched:
                raise SolarError(f"data directory {pattern} has no files")
            files.extend(matched)
        elif os.path.isfile(pattern):
            files.append(pattern)
        else:
            raise SolarError(f"data path {pattern} does not exist")
    return files


def _open_text(path: str) -> io.TextIOBase:
    # newline="" would keep "\r\n"; the default universal newlines make Windows files behave.
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _guard_decode(path: str, lines: Iterator[str]) -> Iterator[str]:
    try:
        yield from lines
    except UnicodeDecodeError as e:
        raise SolarError(f"{path} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except (OSError, EOFError) as e:
        raise SolarError(f"cannot read {path}: {e}") from None


def iter_text_documents(path: str, split: str) -> Iterator[str]:
    """Documents of a plain text file: paragraphs, lines, or the whole file."""
    with _open_text(path) as f:
        if split == "file":
            text = "".join(_guard_decode(path, iter(lambda: f.read(1 << 20), "")))
            if text.strip():
                yield text
            return
        if split == "line":
            for line in _guard_decode(path, f):
                if line.strip():
                    yield line.rstrip("\n")
            return
        # Paragraphs, streamed line by line so a multi-GB file is never one string.
        lines: list[str] = []
        for line in _guard_decode(path, f):
            if line.strip():
                lines.append(line)
            elif lines:
                yield "".join(lines).rstrip("\n")
                lines = []
        if lines:
            yield "".join(lines).rstrip("\n")


def iter_jsonl_records(path: str) -> Iterator[tuple[str, dict]]:
    """(location, record) for each non-blank line of a JSONL file; location is `file:line`."""
    with _open_text(path) as f:
        for lineno, line in enumerate(_guard_decode(path, f), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise SolarError(f"{path}:{lineno}: malformed JSON line ({e.msg})") from None
            if not isinstance(record, dict):
                raise SolarError(f"{path}:{lineno}: expected a JSON object, "
                                 f"got {type(record).__name__}")
            yield f"{path}:{lineno}", record


def iter_parquet_records(path: str, columns: Sequence[str] | None = None,
                         batch_rows: int = 4096) -> Iterator[tuple[str, dict]]:
    """(location, record) for each row of a Parquet file, reading only `columns`."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SolarError("reading parquet needs pyarrow: pip install pyarrow") from None
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:  # e.g. ArrowInvalid for a non-parquet file
        raise SolarError(f"{path} is not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    missing = [c for c in (columns or ()) if c not in names]
    if missing:
        raise SolarError(f"{path} has no column {missing[0]!r}; columns: {', '.join(names)}")
    row = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=list(columns) if columns else None):
        for record in batch.to_pylist():
            yield f"{path}:row {row}", record
            row += 1


def _field_text(where: str, record: dict, field: str) -> str:
    if field not in record:
        raise SolarError(f"{where}: record has no field {field!r} "
                         f"(fields: {', '.join(map(str, record)) or 'none'})")
    value = record[field]
    if not isinstance(value, str):
        raise SolarError(f"{where}: field {field!r} is {type(value).__name__}, expected a string")
    return value


def iter_documents(files: Sequence[str], format: str, field: str = "text",
                   text_split: str = "paragraph") -> Iterator[str]:
    """Every document's text, file after file, in a fixed order. Empty texts are skipped."""
    for path in files:
        if format == "text":
            yield from iter_text_documents(path, text_split)
            continue
        if format == "jsonl":
            records = iter_jsonl_records(path)
        elif format == "parquet":
            records = iter_parquet_records(path, columns=[field])
        else:
            raise SolarError(f"unknown data format {format!r}; use one of text, jsonl, parquet")
        for where, record in records:
            text = _field_text(where, record, field)
            if text.strip():
                yield text


def take_subset(items: Callable[[], Iterator], limit: int | None = None,
                fraction: float | None = None) -> Iterator:
    """The first `limit` items of `items()`, or the first ceil(fraction x N) of its N (a
    counting pass first); everything when both are None. `items` makes a fresh iterator."""
    if limit is not None:
        return itertools.islice(items(), limit)
    if fraction is not None:
        total = sum(1 for _ in items())
        return itertools.islice(items(), math.ceil(fraction * total))
    return items()


def subset_options(cfg) -> dict:
    """The subset keys a token stream depends on (empty when unset, so the fingerprints of
    runs without a subset stay what they were)."""
    return {k: getattr(cfg, k) for k in ("limit", "fraction") if getattr(cfg, k) is not None}
