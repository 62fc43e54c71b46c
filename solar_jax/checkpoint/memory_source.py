"""A ParamSource over params already in memory (a loaded or freshly built model)."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import numpy as np

from solar_jax.checkpoint.sources import TOKENIZER_FILES, ParamSource
from solar_jax.config import ModelConfig
from solar_jax.tree_paths import get_leaf


class MemorySource(ParamSource):
    def __init__(self, config: ModelConfig, params: dict, extras_from: Path | None = None,
                 tokenizer=None):
        self.config = config
        self.params = params
        self.location = Path(extras_from) if extras_from else Path("<memory>")
        self._extras_from = extras_from
        self._tokenizer = tokenizer

    def leaf_spec(self, path):
        leaf = get_leaf(self.params, path)
        return tuple(leaf.shape), np.dtype(leaf.dtype)

    def read_leaf(self, path, layers=None):
        # device_get gathers a sharded array to host; one leaf at a time.
        array = np.asarray(jax.device_get(get_leaf(self.params, path)))
        return array if layers is None else array[np.asarray(layers)]

    def input_paths(self) -> list[Path]:
        return [Path(self._extras_from)] if self._extras_from else []

    def copy_extras(self, dst: Path) -> None:
        if self._extras_from is not None and Path(self._extras_from).is_dir():
            for name in (*TOKENIZER_FILES, "generation_config.json"):
                if (self._extras_from / name).is_file():
                    shutil.copy2(self._extras_from / name, dst / name)
        elif self._tokenizer is not None and hasattr(self._tokenizer, "save_pretrained"):
            self._tokenizer.save_pretrained(str(dst))
