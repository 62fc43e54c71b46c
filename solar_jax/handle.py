"""`Model`: the handle `load_model` returns, a config and its params plus what generation
needs around them (the tokenizer, where the model came from, the mesh it is placed on).

solar_jax.model stays config + params -> logits; this handle sits above it, next to the
API, because it reaches into generation (`Model.generate`) and the tokenizer.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from solar_jax.config import ModelConfig
from solar_jax.generate import generate, model_tokenizer
from solar_jax.model.transformer import forward
from solar_jax.placement import model_scope
from solar_jax.tokenizer import chat_prompt


class Model:
    """A loaded model: `.config`, `.params` (plain pytree), and `model(input_ids)` -> logits."""

    def __init__(self, config: ModelConfig, params: dict, tokenizer=None):
        self.config = config
        self.params = params
        self.tokenizer = tokenizer
        self.source = None  # where it was loaded from (tokenizer files are copied from there)
        self.mesh = None  # the mesh its params are placed on (load_model(mesh=...)), if any
        self._forward = jax.jit(functools.partial(forward, config))

    def __call__(self, input_ids, segment_ids=None, positions=None):
        input_ids = jnp.asarray(input_ids, dtype=jnp.int32)
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        if segment_ids is not None:
            segment_ids = jnp.asarray(segment_ids, dtype=jnp.int32).reshape(input_ids.shape)
        if positions is not None:
            positions = jnp.asarray(positions, dtype=jnp.int32).reshape(input_ids.shape)
        with model_scope(self):
            return self._forward(self.params, input_ids, segment_ids, positions)

    def generate(self, prompts, max_new_tokens: int = 128, *, chat: bool = False,
                 system: str | None = None, **kwargs):
        """Continue text with a KV cache. `prompts` is a string, a list of strings (decoded
        strings back), or a list of token-id lists (token-id lists back, end token
        included). chat=True wraps each string in the model's chat template. Keyword
        arguments (temperature, top_k, top_p, seed, stop, ignore_eos, on_text, ...) are
        those of `solar_jax.generate.generate`."""
        single = isinstance(prompts, str)
        batch = [prompts] if single else list(prompts)
        as_text = bool(batch) and all(isinstance(p, str) for p in batch)
        tokenizer = kwargs.pop("tokenizer", None)
        if tokenizer is None and (as_text or kwargs.get("stop") or kwargs.get("on_text")):
            tokenizer = model_tokenizer(self)
        if as_text:
            batch = [chat_prompt(tokenizer, p, system) if chat else
                     tokenizer.encode(p) for p in batch]
        out = generate(self, batch, max_new_tokens, tokenizer=tokenizer, **kwargs)
        if not as_text:
            return [c.tokens for c in out]
        texts = [c.text for c in out]
        return texts[0] if single else texts

    def __repr__(self):
        c = self.config
        return (f"Model({c.model_type}, layers={c.num_layers}, hidden={c.hidden_size}, "
                f"heads={c.num_heads}/{c.num_kv_heads}, params={c.num_params / 1e6:.1f}M)")
