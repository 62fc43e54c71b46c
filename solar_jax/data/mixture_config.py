"""The `data.mixture` list: one DataConfig per source, plus its name and weight.

    data:
      chat_template: solar                 # every source's default
      mixture:
        - {path: alpaca_gpt4.jsonl, format: alpaca, weight: 0.5}
        - {path: openorca.jsonl, format: openorca, weight: 0.3, limit: 20000}
        - {path: math/sft.jsonl, format: gsm8k, weight: 0.2, name: math}

A source takes every key of a `data:` section (its own path, format, field, limit, ...)
plus `name` (default: derived from its file name) and `weight` (default 1; weights need
not sum to 1). Keys it does not give come from the section around the list. Every problem
is a one-line error naming the source.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import math
import os
import re

from solar_jax.errors import SolarError

SOURCE_KEYS = ("name", "weight")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_EXTENSIONS = (".gz", ".jsonl", ".json", ".txt", ".parquet", ".text")


@dataclasses.dataclass(frozen=True)
class MixtureSource:
    name: str
    weight: float
    data: object  # DataConfig (its own path, format, ...; no mixture)


def default_name(paths: list[str]) -> str:
    """`alpaca_gpt4.jsonl` -> `alpaca_gpt4`; `openorca/*.parquet` -> `openorca` (a glob
    names its directory, or the file-name prefix before the wildcard)."""
    first = paths[0] if paths else ""
    if glob.has_magic(first):
        prefix = re.split(r"[*?\[]", first, maxsplit=1)[0]
        first = prefix.rstrip("/") if prefix.endswith("/") else prefix.rstrip("_-.")
    base = os.path.basename(first.rstrip("/"))
    changed = True
    while changed:
        changed = False
        for ext in _EXTENSIONS:
            if base.lower().endswith(ext) and len(base) > len(ext):
                base, changed = base[:-len(ext)], True
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", base) or "source"


def _label(index: int, raw: dict) -> str:
    if isinstance(raw.get("name"), str) and raw["name"]:
        return f"data source '{raw['name']}'"
    path = raw.get("path")
    paths = [path] if isinstance(path, str) else path if isinstance(path, list) else []
    if paths and all(isinstance(p, str) for p in paths):
        return f"data source '{default_name(paths)}'"
    return f"data source {index} of the mixture"


def mixture_sources(cfg) -> list[MixtureSource]:
    """The sources of `cfg.mixture` (a DataConfig), validated; see the module docstring.
    Each source is built as another of cfg's own class: DataConfig validates its mixture by
    calling this, so the class comes with the argument rather than an import."""
    DataConfig = type(cfg)
    if not isinstance(cfg.mixture, list) or not cfg.mixture:
        raise SolarError("data.mixture must be a non-empty list of sources")
    fields = [f.name for f in dataclasses.fields(DataConfig) if f.name != "mixture"]
    shared = {k: getattr(cfg, k) for k in fields if k not in ("path", "limit", "fraction")}
    sources, names = [], {}
    for index, raw in enumerate(cfg.mixture):
        if not isinstance(raw, dict):
            raise SolarError(f"data source {index} of the mixture must be a mapping, got {raw!r}")
        label = _label(index, raw)
        allowed = [*fields, *SOURCE_KEYS]
        for key in raw:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise SolarError(f"{label}: unknown key {key!r}{hint}")
        weight = raw.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or \
                not math.isfinite(weight) or weight <= 0:
            raise SolarError(f"{label}: weight must be a positive number, got {weight!r}")
        if not raw.get("path"):
            raise SolarError(f"{label}: path is not set")
        try:
            data = DataConfig(**{**shared, **{k: v for k, v in raw.items()
                                              if k not in SOURCE_KEYS}})
        except (SolarError, TypeError) as e:
            raise SolarError(f"{label}: {e}") from None
        name = raw.get("name", default_name(data.paths))
        if not isinstance(name, str) or not _NAME.match(name):
            raise SolarError(f"{label}: name must be letters, digits, '_', '.' or '-' "
                             f"(it becomes the metric data/<name>/tokens), got {name!r}")
        if name in names:
            raise SolarError(f"data sources {names[name]} and {index} of the mixture are both "
                             f"named {name!r}; give each a distinct name")
        names[name] = index
        sources.append(MixtureSource(name, float(weight), data))
    return sources
