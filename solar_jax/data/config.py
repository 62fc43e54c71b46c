"""DataConfig: the `data.*` keys of a run config.

Values are checked when the config is built, so a typo in a YAML file or a `data.x=y`
override fails before any file is read or any device is touched.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from solar_jax.chat_template import TEMPLATE_NAMES
from solar_jax.data.mixture_config import mixture_sources
from solar_jax.errors import SolarError

PRETRAIN_FORMATS = ("text", "jsonl", "parquet")
SFT_FORMATS = ("alpaca", "openorca", "gsm8k", "chat", "prompt_completion")
PREFERENCE_FORMATS = ("preference",)
FORMATS = PRETRAIN_FORMATS + SFT_FORMATS + PREFERENCE_FORMATS
TRUNCATIONS = ("truncate", "drop", "error")
TEXT_SPLITS = ("paragraph", "line", "file")
PACKINGS = ("greedy", "concat")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the corpus is and how it becomes packed rows.

    path:       a file, a directory (its files, sorted), or a glob (`**` allowed); or a list
                of these. Files ending in `.gz` are read through gzip (text and jsonl).
    format:     "text" (plain UTF-8), "jsonl" (one JSON object per line) or "parquet".
    field:      the text field of a jsonl record / the text column of a parquet file.
    text_split: how a plain text file becomes documents: "paragraph" (blank-line separated;
                suits tinyshakespeare), "line" (one per non-empty line) or "file" (whole file).
    add_bos / add_eos: wrap each document in the tokenizer's BOS / EOS token (a tokenizer
                without one simply skips it).
    shuffle:    shuffle which documents share a row, and the row order (reshuffled every
                epoch); False keeps corpus order, which is handy for debugging.
    packing:    "greedy": whole documents fill a row while they fit, then the row is padded;
                a document longer than seq_len is cut into seq_len chunks, its tail packed
                like any document. "concat": rows are filled to the last token and
                documents are cut at row boundaries (no padding, more cut documents).
    chat_template / system_prompt / truncation (SFT and preference formats): SOLAR-Instruct's
                template or the tokenizer's own; a system prompt for records without one;
                what to do with a record longer than seq_len: "truncate" the answer,
                "drop" the record, or stop with an "error" (a prompt that alone exceeds
                seq_len is always an error naming the record).
    cache_dir:  if set, the token stream is saved there (keyed by a hash of the files' paths,
                sizes and mtimes, these options and the tokenizer) and memory-mapped on the
                next run, so restarts and processes on one host skip tokenization.
    limit / fraction: read only the first `limit` records (documents of a text file, lines
                of a JSONL file, rows of a Parquet file), or the first ceil(fraction x N) of
                the N there are: a subset in file order, the same whatever the seed.
    mixture:    a list of sources, each a mapping of these keys (its own path, format, ...)
                plus `name` and `weight`; the keys of this section are every source's
                defaults. Rows are interleaved by weight (solar_jax/data/mixture.py).
    """

    path: str | list[str] = ""
    format: str = "text"
    field: str = "text"
    text_split: str = "paragraph"
    add_bos: bool = True
    add_eos: bool = True
    shuffle: bool = True
    packing: str = "greedy"
    cache_dir: str | None = None
    chat_template: str = "solar"
    system_prompt: str | None = None
    truncation: str = "truncate"
    limit: int | None = None
    fraction: float | None = None
    mixture: list[dict[str, Any]] | None = None

    def __post_init__(self):
        if isinstance(self.path, tuple):
            object.__setattr__(self, "path", list(self.path))
        if not isinstance(self.path, (str, list)) or (
                isinstance(self.path, list) and not all(isinstance(p, str) for p in self.path)):
            raise SolarError(f"data.path must be a string or a list of strings, got {self.path!r}")
        for name, allowed in (("format", FORMATS), ("text_split", TEXT_SPLITS),
                              ("packing", PACKINGS), ("chat_template", TEMPLATE_NAMES),
                              ("truncation", TRUNCATIONS)):
            if getattr(self, name) not in allowed:
                raise SolarError(f"unknown data.{name} {getattr(self, name)!r}; "
                                 f"use one of {', '.join(allowed)}")
        if not isinstance(self.field, str) or not self.field:
            raise SolarError(f"data.field must be a non-empty string, got {self.field!r}")
        for name in ("add_bos", "add_eos", "shuffle"):
            if not isinstance(getattr(self, name), bool):
                raise SolarError(f"data.{name} must be true or false, got {getattr(self, name)!r}")
        if self.cache_dir is not None and not isinstance(self.cache_dir, str):
            raise SolarError(f"data.cache_dir must be a path or null, got {self.cache_dir!r}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(
                self.limit, int) or self.limit <= 0):
            raise SolarError(f"data.limit must be a positive number of records, got {self.limit!r}")
        if self.fraction is not None and (isinstance(self.fraction, bool) or not isinstance(
                self.fraction, (int, float)) or not 0 < self.fraction <= 1):
            raise SolarError(f"data.fraction must be in (0, 1], got {self.fraction!r}")
        if self.limit is not None and self.fraction is not None:
            raise SolarError("give data.limit or data.fraction, not both")
        if self.mixture is not None:
            if self.path or self.limit is not None or self.fraction is not None:
                raise SolarError("data.mixture names its sources' paths (and limits): remove "
                                 "data.path, data.limit and data.fraction beside it")
            mixture_sources(self)  # every source's keys, weights and names, checked now

    @property
    def sources(self):
        """The mixture's sources (MixtureSource: name, weight, data), or None."""
        if self.mixture is None:
            return None
        return mixture_sources(self)

    @property
    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DataConfig:
        """From the `data:` mapping of a YAML config; unknown keys are an error."""
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SolarError(f"unknown config key(s): {', '.join('data.' + k for k in unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The keys as a mapping; subset/mixture keys only when set, so settings recorded
        before they existed (the ablation's stored results) still compare equal."""
        out = dataclasses.asdict(self)
        for key in ("limit", "fraction", "mixture"):
            if out[key] is None:
                del out[key]
        return out
