"""What the data tests share: a word-level and a byte-level tokenizer, a random corpus of
w0..w39 words, and the pretrain dataset built from a path with the tests' defaults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from solar_jax.data import DataConfig, build_pretrain_dataset


WORDS = ["[PAD]", "<s>", "</s>"] + [f"w{i}" for i in range(40)]
KEYS = ("input_ids", "targets", "loss_weights", "segment_ids", "positions")


def word_tokenizer(bos: bool = True) -> PreTrainedTokenizerFast:
    """w0 -> 3, w1 -> 4, ...; BOS <s> = 1, EOS </s> = 2."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[PAD]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = {"bos_token": "<s>"} if bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="[PAD]",
                                   **specials)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte (byte-level BPE without merges): any text, tiny and fast."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"[PAD]": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(alphabet)}}
    tok = Tokenizer(models.BPE(vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="[PAD]")


def random_corpus(tmp_path: Path, n_docs: int = 60, max_words: int = 30, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    docs = [" ".join(f"w{w}" for w in rng.integers(0, 40, rng.integers(1, max_words)))
            for _ in range(n_docs)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs) + "\n")
    return path


def build(path, tok, seq_len=8, batch=4, seed=0, **cfg):
    shard = {k: cfg.pop(k) for k in ("process_index", "process_count") if k in cfg}
    return build_pretrain_dataset(DataConfig(path=str(path), **cfg), tok, seq_len=seq_len,
                                  global_batch_size=batch, seed=seed, **shard)


def doc_ids(tok, text_docs: list[str]) -> list[list[int]]:
    return [[tok.bos_token_id] + tok.encode(t, add_special_tokens=False) + [tok.eos_token_id]
            for t in text_docs]
