"""Input pipelines on grain: files -> documents -> one token stream -> packed rows -> batches.

    from solar_jax.data import DataConfig, build_pretrain_dataset
    ds = build_pretrain_dataset(DataConfig(path="corpus/*.jsonl", format="jsonl"), tokenizer,
                                seq_len=4096, global_batch_size=1024, seed=0,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
    batch = ds.batch(step)      # this process's [B / P, seq_len] share of global batch `step`
    ckpt["data"] = ds.state(step)  ...  step = ds.restore(ckpt["data"])

sources.py (files, records), tokenize.py (token stream, cache), packing.py (rows),
pipeline.py (grain dataset, sharding, iterator state), rows.py (fixed rows of a dataset:
a held-out set, a training stream), config.py (the `data.*` keys).
"""

from solar_jax.data.config import DataConfig
from solar_jax.data.packing import PackedLayout, pack_concat, pack_greedy, pack_rows
from solar_jax.data.pipeline import PretrainDataset, build_pretrain_dataset
from solar_jax.data.rows import RowSet, RowStream
from solar_jax.data.sources import (expand_paths, iter_documents, iter_jsonl_records,
                                    iter_parquet_records)
from solar_jax.data.tokenize import TokenStream, build_token_stream

__all__ = ["DataConfig", "PackedLayout", "PretrainDataset", "RowSet", "RowStream", "TokenStream",
           "build_pretrain_dataset", "build_token_stream", "expand_paths", "iter_documents",
           "iter_jsonl_records", "iter_parquet_records", "pack_concat", "pack_greedy",
           "pack_rows"]
