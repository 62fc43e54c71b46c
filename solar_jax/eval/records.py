"""Reading task data: JSON lines / JSON arrays / CSV into records that remember their
file and line, so every malformed record is reported as a one-line error naming it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from solar_jax.errors import SolarError


class Record(dict):
    """A parsed record that remembers where it came from, for error messages."""
    where = ""


def read_text(path: Path) -> str:
    if not path.is_file():
        raise SolarError(f"data file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise SolarError(f"data file {path} is empty")
    return text


def read_jsonl(path: Path) -> list[Record]:
    """JSON lines; a .json file may instead hold one JSON array of records."""
    text = read_text(path)
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise SolarError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        lines = [(i + 1, item) for i, item in enumerate(items)]
        unit = "record"
    else:
        lines = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                lines.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise SolarError(f"{path} line {n}: not valid JSON ({e.msg})") from None
        unit = "line"
    out = []
    for n, item in lines:
        if not isinstance(item, dict):
            raise SolarError(f"{path} {unit} {n}: expected a JSON object")
        rec = Record(item)
        rec.where = f"{path} {unit} {n}"
        out.append(rec)
    return out


def read_csv(path: Path, header: tuple[str, ...] | None = None) -> list[Record]:
    """CSV rows as records keyed by the header row (or by `header` when it has none).
    Errors name the physical line a row starts on (quoted fields may span lines)."""
    reader = csv.reader(read_text(path).splitlines(keepends=True))
    out, line = [], 1
    for row in reader:
        start, line = line, reader.line_num + 1
        if not row:
            continue
        if header is None:
            header = tuple(c.strip() for c in row)
            continue
        if len(row) != len(header):
            raise SolarError(f"{path} line {start}: expected {len(header)} columns, "
                             f"got {len(row)}")
        rec = Record(zip(header, row))
        rec.where = f"{path} line {start}"
        out.append(rec)
    return out


def field(rec: Record, *path, kind=None):
    """rec[path[0]][path[1]]..., checked, or a SolarError naming the record's line."""
    value = rec
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            raise SolarError(f"{rec.where}: missing field {'.'.join(map(str, path))}") from None
    if kind is not None and not isinstance(value, kind):
        raise SolarError(f"{rec.where}: field {'.'.join(map(str, path))} has the wrong type")
    return value


def bad(rec: Record, message: str) -> SolarError:
    return SolarError(f"{rec.where}: {message}")
