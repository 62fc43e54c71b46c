"""Documents to one flat token stream, tokenized in batches and optionally cached on disk.

The stream is the single copy of the corpus a process holds: `tokens` has every document's
ids back to back (BOS/EOS included) and `doc_offsets` says where each begins. Packed rows
are gathered from it on demand, so nothing is duplicated per epoch, per row or per shard.
With a cache the stream is a memory map, shared through the page cache by every process
on a host and read lazily, so only the pages of rows actually used are touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from solar_jax.errors import SolarError

TOKENIZE_BATCH = 1024  # documents per tokenizer call: the Rust tokenizer parallelizes a batch
CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class TokenStream:
    """All documents' token ids back to back.

    tokens:      [N] uint16 when the vocabulary fits (half the memory), else int32.
    doc_offsets: [D + 1] int64; document d is tokens[doc_offsets[d]:doc_offsets[d + 1]].
    target_mask: None (every token is a prediction target), or [N] bool: token t counts as a
                 target. Pretraining leaves it None; SFT sets it False on prompt tokens.
    fingerprint: a hash of what the stream was built from; checkpoints record it.
    """

    tokens: np.ndarray
    doc_offsets: np.ndarray
    target_mask: np.ndarray | None = None
    fingerprint: str = ""

    @property
    def num_documents(self) -> int:
        return len(self.doc_offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.doc_offsets[-1])

    @property
    def doc_lengths(self) -> np.ndarray:
        return np.diff(self.doc_offsets)


def token_dtype(tokenizer) -> np.dtype:
    return np.dtype(np.uint16) if len(tokenizer) <= np.iinfo(np.uint16).max else np.dtype(np.int32)


def special_ids(tokenizer, add_bos: bool, add_eos: bool) -> tuple[list[int], list[int]]:
    """The ids put before and after each document (none when the tokenizer lacks the token)."""
    bos = tokenizer.bos_token_id if add_bos else None
    eos = tokenizer.eos_token_id if add_eos else None
    return ([] if bos is None else [int(bos)]), ([] if eos is None else [int(eos)])


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's full definition (vocab, merges, normalizer, specials)."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # a slow (Python) tokenizer: its vocabulary is the best description we have
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(repr((tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer))).encode())
    return h.hexdigest()


def corpus_fingerprint(files: Sequence[str], options: dict, tokenizer) -> str:
    """What the token stream depends on: files (path, size, mtime), options, tokenizer."""
    h = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for path in files:
        st = os.stat(path)
        h.update(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(tokenizer_fingerprint(tokenizer).encode())
    return h.hexdigest()[:24]


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def iter_token_chunks(texts: Iterable[str], tokenizer, add_bos: bool, add_eos: bool,
                      dtype: np.dtype) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(flat ids, per-document lengths) for each batch of texts; documents with no tokens
    are dropped (a lone BOS/EOS teaches nothing)."""
    before, after = special_ids(tokenizer, add_bos, add_eos)
    for batch in _batches(texts, TOKENIZE_BATCH):
        # add_special_tokens=False: we add BOS/EOS ourselves, exactly once, whatever the
        # tokenizer's post-processor would do. verbose=False: long documents are fine here
        # (they are chunked when packed), so silence the "longer than max length" warning.
        ids = tokenizer(batch, add_special_tokens=False, return_attention_mask=False,
                        verbose=False)["input_ids"]
        ids = [x for x in ids if len(x)]
        lengths = np.array([len(before) + len(x) + len(after) for x in ids], np.int64)
        flat = np.fromiter(itertools.chain.from_iterable(
            itertools.chain(before, x, after) for x in ids), dtype=dtype, count=int(lengths.sum()))
        yield flat, lengths


def build_token_stream(texts: Iterable[str], tokenizer, *, add_bos: bool, add_eos: bool,
                       fingerprint: str = "", cache_dir: str | None = None) -> TokenStream:
    """Tokenize every text into one stream, or load it from `cache_dir` if already there."""
    dtype = token_dtype(tokenizer)
    if cache_dir:
        cached = _load_cache(Path(cache_dir), fingerprint, dtype)
        if cached is not None:
            return cached
    chunks, lengths = [], [np.zeros(1, np.int64)]
    for flat, lens in iter_token_chunks(texts, tokenizer, add_bos, add_eos, dtype):
        chunks.append(flat)
        lengths.append(lens)
    offsets = np.cumsum(np.concatenate(lengths))
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype)
    del chunks  # the chunks and the stream coexist only for this moment
    stream = TokenStream(tokens, offsets, fingerprint=fingerprint)
    if cache_dir:
        _save_cache(Path(cache_dir), stream)
    return stream


def _cache_paths(cache_dir: Path, fingerprint: str) -> tuple[Path, Path, Path]:
    stem = cache_dir / f"tokens-{fingerprint}"
    return stem.with_suffix(".bin"), stem.with_suffix(".offsets.npy"), stem.with_suffix(".json")


def _load_cache(cache_dir: Path, fingerprint: str, dtype: np.dtype) -> TokenStream | None:
    tokens_path, offsets_path, meta_path = _cache_paths(cache_dir, fingerprint)
    if not meta_path.is_file():  # written last: its presence means the others are complete
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != CACHE_VERSION or meta.get("dtype") != dtype.name:
            return None
        offsets = np.load(offsets_path)
        tokens = (np.memmap(tokens_path, dtype=dtype, mode="r") if offsets[-1] > 0
                  else np.zeros(0, dtype))  # numpy cannot map an empty file
    except (OSError, ValueError):
        return None  # a damaged cache is rebuilt, not trusted
    if len(tokens) != offsets[-1]:
        return None
    return TokenStream(tokens, offsets, fingerprint=fingerprint)


def _save_cache(cache_dir: Path, stream: TokenStream) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SolarError(f"cannot create data.cache_dir {cache_dir}: {e}") from None
    # Write under unique temporary names and rename: several processes on one host may build
    # the same cache at once, and a reader must never see a half-written file.
    tmp = f".tmp-{os.getpid()}"
    final = _cache_paths(cache_dir, stream.fingerprint)
    staged = [p.with_name(p.name + tmp) for p in final]
    np.asarray(stream.tokens).tofile(staged[0])
    with open(staged[1], "wb") as f:
        np.save(f, stream.doc_offsets)
    staged[2].write_text(json.dumps({"version": CACHE_VERSION, "dtype": stream.tokens.dtype.name,
                                     "num_tokens": stream.num_tokens,
                                     "num_documents": stream.num_documents}))
    for src, dst in zip(staged, final):
        os.replace(src, dst)
