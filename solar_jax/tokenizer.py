"""Tokenizers from a model's own files, with no remote code and no torch.

`transformers.AutoTokenizer` imports torch; `PreTrainedTokenizerFast` reads the same
tokenizer.json / tokenizer_config.json (chat template included) without it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from solar_jax.chat_template import render_ids
from solar_jax.checkpoint.gguf_source import GGUFSource
from solar_jax.errors import SolarError


def load_tokenizer(path: str | Path):
    """The HF fast tokenizer stored with a model (HF folder, solar-jax checkpoint, or GGUF)."""
    from transformers import PreTrainedTokenizerFast  # on use: heavy, and optional for ids

    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        with tempfile.TemporaryDirectory() as tmp:
            GGUFSource(path).copy_extras(Path(tmp))
            return PreTrainedTokenizerFast.from_pretrained(tmp)
    if not (path / "tokenizer.json").is_file():
        raise SolarError(f"no tokenizer.json in {path}; pass a tokenizer folder explicitly")
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def run_tokenizer(explicit: str | None, model_source: Path | None):
    """The tokenizer a run config names, else the model's own; a preset model has none."""
    where = explicit or (str(model_source) if model_source else None)
    if where is None:
        raise SolarError("no tokenizer: model is a preset, so set tokenizer: to a model folder, "
                         "a solar-jax checkpoint or a .gguf file")
    if not Path(where).exists():
        raise SolarError(f"tokenizer {where} does not exist")
    return load_tokenizer(where)


def chat_prompt(tokenizer, user: str, system: str | None = None) -> list[int]:
    """Token ids of a one-turn chat ready for the assistant's answer, in the template the
    model records (see solar_jax.chat_template)."""
    messages = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": user}]
    return render_ids(tokenizer, messages)
