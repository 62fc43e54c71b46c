"""`Model`: a config plus the plain params pytree, callable for logits.

The NNX module tree is only a shape: we split it once into a graphdef and rebuild it
inside jit from whatever params pytree is passed, so callers (convert, DUS, merge, train)
work with plain nested dicts of arrays.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from solar_jax.config import ModelConfig
from solar_jax.model.llama import CausalLM, DecoderBlock


@functools.lru_cache(maxsize=32)
def _abstract(config: ModelConfig):
    abstract = nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    return graphdef, state


@functools.lru_cache(maxsize=32)
def _abstract_block(config: ModelConfig):
    return nnx.split(nnx.eval_shape(lambda: DecoderBlock(config, rngs=nnx.Rngs(0))))


def abstract_params(config: ModelConfig) -> dict:
    """The params tree as jax.ShapeDtypeStruct leaves (no memory allocated)."""
    _, state = _abstract(config)
    return nnx.to_pure_dict(state)


def logical_axes(config: ModelConfig) -> dict:
    """The params tree with each leaf replaced by its tuple of logical axis names, read
    from the family's parameter table ("layers" first for stacked leaves)."""
    out: dict = {}
    for row in config.arch.params_for(config):
        node = out
        for key in row.path[:-1]:
            node = node.setdefault(key, {})
        node[row.path[-1]] = row.logical_axes()
    return out


def init_params(config: ModelConfig, seed: int = 0) -> dict:
    """Randomly initialized params (normal(initializer_range) kernels, unit norms)."""
    @jax.jit
    def make():
        return nnx.to_pure_dict(nnx.state(CausalLM(config, rngs=nnx.Rngs(seed))))
    return make()


def bind(config: ModelConfig, params: dict) -> CausalLM:
    """The NNX module with `params` as its variables (works on tracers inside jit)."""
    graphdef, state = _abstract(config)
    state = jax.tree.map(lambda x: x, state)  # a fresh State to fill in
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def bind_block(config: ModelConfig, layer_params: dict) -> DecoderBlock:
    """One decoder layer as an NNX module over `layer_params` (one layer's slice of
    params["layers"], without the layer axis)."""
    graphdef, state = _abstract_block(config)
    state = jax.tree.map(lambda x: x, state)
    nnx.replace_by_pure_dict(state, layer_params)
    return nnx.merge(graphdef, state)


def forward(config: ModelConfig, params: dict, input_ids, segment_ids=None, positions=None):
    """Logits [batch, seq, vocab] in fp32."""
    return bind(config, params)(input_ids, segment_ids, positions)


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
        from solar_jax.placement import model_scope
        with model_scope(self):
            return self._forward(self.params, input_ids, segment_ids, positions)

    def generate(self, prompts, max_new_tokens: int = 128, *, chat: bool = False,
                 system: str | None = None, **kwargs):
        """Continue text with a KV cache. `prompts` is a string, a list of strings (decoded
        strings back), or a list of token-id lists (token-id lists back, end token
        included). chat=True wraps each string in the model's chat template. Keyword
        arguments (temperature, top_k, top_p, seed, stop, ignore_eos, on_text, ...) are
        those of `solar_jax.generate.generate`."""
        from solar_jax.generate import generate, model_tokenizer
        from solar_jax.tokenizer import chat_prompt

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
