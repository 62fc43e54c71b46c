"""SFT datasets: instruction records -> masked token stream -> the same packed, shuffled,
per-process batches as pretraining (segment ids keep packed conversations apart)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from solar_jax.data.chat import ChatEncoder, fit_length, record_messages
from solar_jax.data.config import SFT_FORMATS, DataConfig
from solar_jax.data.pipeline import PretrainDataset
from solar_jax.data.sources import (expand_paths, iter_jsonl_records, iter_parquet_records,
                                    subset_options, take_subset)
from solar_jax.data.tokenize import TokenStream, corpus_fingerprint, token_dtype
from solar_jax.errors import SolarError


def iter_records(files: list[str]) -> Iterator[tuple[str, dict]]:
    """(location, record) from JSONL files, or Parquet ones by extension."""
    for path in files:
        yield from (iter_parquet_records(path) if path.endswith(".parquet")
                    else iter_jsonl_records(path))


def encode_sft_records(cfg: DataConfig, tokenizer, seq_len: int) -> tuple[TokenStream, int]:
    """The masked token stream of every record, and how many records were dropped."""
    if cfg.format not in SFT_FORMATS:
        raise SolarError(f"objective sft needs data.format in {', '.join(SFT_FORMATS)}, "
                         f"got {cfg.format!r}")
    files = expand_paths(cfg.paths)
    encoder = ChatEncoder(tokenizer, cfg.chat_template, add_bos=cfg.add_bos)
    ids_parts, mask_parts, lengths, dropped = [], [], [0], 0
    for where, record in take_subset(lambda: iter_records(files), cfg.limit, cfg.fraction):
        messages = record_messages(where, record, cfg.format, cfg.system_prompt)
        fitted = fit_length(where, *encoder.encode(where, messages), seq_len, cfg.truncation)
        if fitted is None:
            dropped += 1
            continue
        ids_parts.append(fitted[0])
        mask_parts.append(fitted[1])
        lengths.append(len(fitted[0]))
    if not ids_parts:
        raise SolarError(f"no usable SFT records in {', '.join(files)}"
                         + (f" ({dropped} longer than seq_len were dropped)" if dropped else ""))
    dtype = token_dtype(tokenizer)
    tokens = np.fromiter(itertools.chain.from_iterable(ids_parts), dtype, sum(lengths))
    mask = np.fromiter(itertools.chain.from_iterable(mask_parts), bool, sum(lengths))
    options = {"format": cfg.format, "template": cfg.chat_template, "system": cfg.system_prompt,
               "truncation": cfg.truncation, "seq_len": seq_len, "bos": cfg.add_bos,
               **subset_options(cfg)}
    stream = TokenStream(tokens, np.cumsum(np.asarray(lengths, np.int64)), target_mask=mask,
                         fingerprint=corpus_fingerprint(files, options, tokenizer))
    return stream, dropped


def build_sft_dataset(cfg: DataConfig, tokenizer, *, seq_len: int, global_batch_size: int,
                      seed: int, process_index: int = 0, process_count: int = 1) -> PretrainDataset:
    stream, _ = encode_sft_records(cfg, tokenizer, seq_len)
    # Every conversation fits a row after truncation, so greedy packing never splits one.
    return PretrainDataset(stream, seq_len=seq_len, global_batch_size=global_batch_size,
                           seed=seed, shuffle=cfg.shuffle, packing="greedy",
                           process_index=process_index, process_count=process_count)
