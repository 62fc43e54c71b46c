"""The dataset of an objective from a `data:` section: one source, or a weighted mixture.

    ds = build_dataset_for("sft", DataConfig.from_dict({...}), tokenizer, seq_len=512,
                           global_batch_size=64, seed=0)
"""

from __future__ import annotations

from solar_jax.data.config import PREFERENCE_FORMATS, PRETRAIN_FORMATS, SFT_FORMATS, DataConfig
from solar_jax.data.mixture import MixtureDataset, packed_source, pair_source, source_seed
from solar_jax.data.pipeline import build_pretrain_dataset
from solar_jax.data.preference import build_preference_dataset
from solar_jax.data.sft import build_sft_dataset
from solar_jax.data.sources import expand_paths
from solar_jax.errors import SolarError

OBJECTIVE_FORMATS = {"lm": PRETRAIN_FORMATS, "sft": SFT_FORMATS, "dpo": PREFERENCE_FORMATS}


def check_formats(objective: str, cfg: DataConfig, key: str = "data") -> None:
    """Every source's format must be one the objective reads (a one-line error naming it)."""
    allowed = OBJECTIVE_FORMATS[objective]
    if cfg.mixture is None:
        if cfg.format not in allowed:
            raise SolarError(f"objective {objective} reads {key}.format {', '.join(allowed)}; "
                             f"got {cfg.format!r}")
        return
    for source in cfg.sources:
        if source.data.format not in allowed:
            raise SolarError(f"data source '{source.name}' of {key}: format "
                             f"{source.data.format!r} does not fit objective {objective} "
                             f"(it reads {', '.join(allowed)})")


def _single(objective: str):
    if objective == "sft":
        return build_sft_dataset
    if objective == "dpo":
        return build_preference_dataset
    return build_pretrain_dataset


def build_source_datasets(objective: str, cfg: DataConfig, tokenizer, *, seq_len: int,
                          global_batch_size: int, seed: int, process_index: int = 0,
                          process_count: int = 1) -> list[tuple]:
    """[(MixtureSource, dataset)] for each source of a mixture, each with its own seed.
    Every source's files are checked before any is tokenized."""
    sources = cfg.sources
    for source in sources:
        try:
            expand_paths(source.data.paths)
        except SolarError as e:
            raise SolarError(f"data source '{source.name}': {e}") from None
    build = _single(objective)
    out = []
    for source in sources:
        try:
            ds = build(source.data, tokenizer, seq_len=seq_len,
                       global_batch_size=global_batch_size,
                       seed=source_seed(seed, source.name), process_index=process_index,
                       process_count=process_count)
        except SolarError as e:
            raise SolarError(f"data source '{source.name}': {e}") from None
        out.append((source, ds))
    return out


def build_dataset_for(objective: str, cfg: DataConfig, tokenizer, *, seq_len: int,
                      global_batch_size: int, seed: int, process_index: int = 0,
                      process_count: int = 1):
    """A PretrainDataset / PreferenceDataset for one source, a MixtureDataset for several."""
    if not isinstance(cfg, DataConfig):
        cfg = DataConfig.from_dict(cfg)
    kwargs = dict(seq_len=seq_len, global_batch_size=global_batch_size, seed=seed,
                  process_index=process_index, process_count=process_count)
    if cfg.mixture is None:
        return _single(objective)(cfg, tokenizer, **kwargs)
    wrap = pair_source if objective == "dpo" else packed_source
    rows = [wrap(source.name, source.weight, ds)
            for source, ds in build_source_datasets(objective, cfg, tokenizer, **kwargs)]
    return MixtureDataset(rows, global_batch_size=global_batch_size, seed=seed,
                          process_index=process_index, process_count=process_count)
