"""Text generation with a KV cache: `generate(model, prompts, ...)` and `Model.generate`.

    from solar_jax import load_model
    model = load_model("SmolLM2-135M-Instruct.Q4_1.gguf")
    model.generate("What is the capital of France?", chat=True, max_new_tokens=40)
    model.generate(["Once upon a time", "The sky is"], temperature=0.8, top_p=0.9, seed=1)
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from solar_jax.errors import SolarError, warn
from solar_jax.generate.engine import Decoder, bucket
from solar_jax.generate.sampling import Sampler
from solar_jax.generate.text import RowText
from solar_jax.tokenizer import load_tokenizer

__all__ = ["Completion", "Sampler", "generate", "end_token_ids", "model_tokenizer", "bucket"]


@dataclasses.dataclass
class Completion:
    tokens: list[int]      # generated ids; ends with the end token when finish == "eos"
    text: str | None       # decoded (special tokens skipped, cut before a stop string)
    finish: str            # "eos", "stop" (a stop string) or "length"


def model_tokenizer(model):
    """The model's tokenizer, loaded once from where the model came from."""
    if model.tokenizer is None:
        if model.source is None:
            raise SolarError("this model has no tokenizer; set model.tokenizer or pass token ids")
        model.tokenizer = load_tokenizer(model.source)
    return model.tokenizer


def end_token_ids(model, tokenizer=None) -> tuple[int, ...]:
    """EOS ids of the config (int or list) and the tokenizer's EOS, deduplicated."""
    eos = model.config.eos_token_id
    ids = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
    tok_eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    if tok_eos is not None:
        ids.append(tok_eos)
    return tuple(dict.fromkeys(int(i) for i in ids))


def generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int = 128, *,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             stop: Sequence[str] = (), end_ids: Sequence[int] | None = None,
             ignore_eos: bool = False, tokenizer=None, max_length: int | None = None,
             on_text: Callable[[int, str], None] | None = None,
             chunk: int | None = None) -> list[Completion]:
    """Continue each prompt (a list of token ids); one batch, one compiled program.

    Stops a row at an end token (the model's EOS unless `end_ids` or `ignore_eos`), at the
    first stop string (needs a tokenizer; the text is cut before it) or after
    max_new_tokens, clamped so the longest prompt stays within `max_length` (default: the
    model's context). `on_text(row, text)` receives text as it becomes final (streaming);
    `chunk` is how many tokens the device decodes per host round trip (default 1 when
    streaming, else 16).
    """
    sampler = Sampler(float(temperature), int(top_k), float(top_p))
    prompts = [list(map(int, p)) for p in prompts]
    if not prompts:
        raise SolarError("no prompts given")
    context = max_length or model.config.max_position_embeddings
    for i, p in enumerate(prompts):
        if not p:
            raise SolarError(f"prompt {i} is empty")
        if len(p) >= context:
            raise SolarError(f"prompt {i} has {len(p)} tokens, which leaves no room in the "
                             f"model's context of {context} tokens")
    if max_new_tokens < 1:
        raise SolarError(f"max-new-tokens must be at least 1, got {max_new_tokens}")
    stops = tuple(s for s in stop if s)
    if (stops or on_text) and tokenizer is None:
        raise SolarError("stop strings and streaming need a tokenizer")
    max_new = min(max_new_tokens, context - max(len(p) for p in prompts))
    if max_new < max_new_tokens:
        warn(f"max-new-tokens {max_new_tokens} shortened to {max_new}: the longest prompt "
             f"has {max(len(p) for p in prompts)} tokens of the {context}-token context")
    if ignore_eos:
        end_ids = ()
    elif end_ids is None:
        end_ids = end_token_ids(model, tokenizer)
    pad_id = model.config.pad_token_id
    pad_id = pad_id if pad_id is not None else (end_ids[0] if end_ids else 0)
    decoder = Decoder(model, prompts, max_new, sampler=sampler, seed=seed,
                      end_ids=tuple(end_ids), pad_id=pad_id,
                      chunk=chunk or (1 if on_text else 16))
    rows = [RowText(tokenizer, stops) for _ in prompts]
    done = np.zeros(len(prompts), bool)
    ends = set(end_ids)

    def take(block: np.ndarray) -> None:
        for r, row in enumerate(rows):
            if done[r]:
                continue
            new = []
            for t in block[r].tolist():
                new.append(t)
                if t in ends:
                    done[r] = True
                    break
            row.add(new)
            done[r] |= row.stopped
            if on_text is not None:
                delta = row.release(final=bool(done[r]))
                if delta:
                    on_text(r, delta)

    take(decoder.start())
    while not done.all() and decoder.generated < max_new:
        decoder.stop_rows(done)
        take(decoder.next())
    out = []
    for r, row in enumerate(rows):
        if on_text is not None and not done[r]:
            delta = row.release(final=True)
            if delta:
                on_text(r, delta)
        finish = "stop" if row.stopped else (
            "eos" if row.tokens and row.tokens[-1] in ends else "length")
        out.append(Completion(row.tokens, row.text if tokenizer is not None else None, finish))
    return out
