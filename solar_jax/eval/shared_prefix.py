"""Few-shot prefixes computed once: documents whose contexts start with the same long run
of tokens (MMLU's five dev examples, TruthfulQA's six-question preamble) share that run's
keys and values instead of each row recomputing them.

Under lm-eval's 5-shot MMLU about 80% of every context is the subject's preamble; lm-eval's
HF backend (and a plain packed row) runs it once per question. Here a group of documents
with a common token prefix P runs P once, as a prefill into a KV cache
(solar_jax.generate.cache_attention), and its packed rows hold only the rest of each context
and the continuations, at rotary positions from len(P). Every row's queries attend over the
prefix's keys plus their own row's keys (the segment/branch mask of
solar_jax.eval.packed_scoring) in one softmax, so each continuation is scored exactly as if
the whole context preceded it: the same numbers up to float summation order.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from solar_jax.generate.cache_attention import (KVCache, cache_step_attention,
                                                hidden_states_cached)
from solar_jax.generate.engine import prompt_bucket
from solar_jax.model.attention import attention_mask
from solar_jax.model.llama import CausalLM, DecoderBlock
from solar_jax.model.rotary import rotary_tables
from solar_jax.model.transformer import bind

# A prefix shorter than this is left in the rows: below it the saving does not pay for the
# extra prefill and its compiled programs.
MIN_SHARED_PREFIX = 64


def _common_length(a: tuple[int, ...], b: tuple[int, ...], limit: int) -> int:
    n = 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def prefix_groups(contexts: list[tuple[int, ...]], min_shared: int | None = None
                  ) -> tuple[list[tuple[int, list[int]]], list[int]]:
    """Groups of context indices that share a token prefix of at least `min_shared`
    tokens (default MIN_SHARED_PREFIX), as (prefix length, members), and the indices left
    alone. A prefix always leaves each context at least its last token, which predicts the
    first continuation token.

    Sorted, contexts with common prefixes are neighbours, and a run of neighbours shares
    the smallest common prefix of adjacent pairs in it. A group of n contexts sharing P
    tokens saves P * (n - 1) tokens of work, and the partition that saves most is found
    over the runs split at their smallest adjacent common prefix (a Cartesian tree): a run
    stays one group unless its two halves, each grouped at their best, save more. So one
    stray context that shares only part of a preamble does not cut everybody's prefix."""
    min_shared = MIN_SHARED_PREFIX if min_shared is None else min_shared
    order = sorted(range(len(contexts)), key=lambda i: contexts[i])
    common = np.array([_common_length(contexts[a], contexts[b],
                                      min(len(contexts[a]), len(contexts[b])) - 1)
                       for a, b in zip(order, order[1:])], dtype=np.int64)
    best: dict[tuple[int, int], tuple[int, list[tuple[int, int, int]]]] = {}
    stack = [(0, len(order), -1)]  # runs [lo, hi) of `order`; split point once expanded
    while stack:
        lo, hi, split = stack.pop()
        if hi - lo < 2:
            best[lo, hi] = (0, [])
        elif split < 0:
            split = lo + int(np.argmin(common[lo:hi - 1]))
            stack += [(lo, hi, split), (lo, split + 1, -1), (split + 1, hi, -1)]
        else:
            (left, left_groups), (right, right_groups) = (best.pop((lo, split + 1)),
                                                          best.pop((split + 1, hi)))
            shared = int(common[split])
            whole = shared * (hi - lo - 1) if shared >= min_shared else 0
            if whole > 0 and whole >= left + right:
                best[lo, hi] = (whole, [(shared, lo, hi)])
            else:
                best[lo, hi] = (left + right, left_groups + right_groups)
    groups = [(n, [order[k] for k in range(lo, hi)]) for n, lo, hi in best[0, len(order)][1]]
    grouped = {i for _, members in groups for i in members}
    return groups, [i for i in range(len(contexts)) if i not in grouped]


def prefix_width(length: int) -> int:
    """The prefill width for a prefix of `length` tokens (one compile per width)."""
    return prompt_bucket(length)


def prefill(config, params, prefix: tuple[int, ...]) -> KVCache:
    """The KV cache [layers, 1, ...] of one prefix, right-padded to prefix_width (padding
    slots carry segment 0, which no query attends)."""
    width = prefix_width(len(prefix))
    tokens = np.zeros((1, width), np.int32)
    tokens[0, :len(prefix)] = prefix
    segment_ids = (np.arange(width) < len(prefix)).astype(np.int32)[None]
    positions = np.arange(width, dtype=np.int32)[None]
    return _prefill(config, params, tokens, segment_ids, positions)


@functools.partial(jax.jit, static_argnums=0)
def _prefill(config, params, tokens, segment_ids, positions):
    model = bind(config, params)
    cache = KVCache.init(config, 1, tokens.shape[1])
    _, cache = hidden_states_cached(model, tokens, segment_ids, positions, cache, 0)
    return cache


def hidden_states_after(model: CausalLM, prefix: KVCache, tokens, segment_ids, positions,
                        branch_ids):
    """Final normed hidden states [R, W, H] of packed rows (segments and branches as in
    solar_jax.eval.packed_scoring) that continue one shared prefix: every query attends
    over the prefix's non-padding slots (causal, and within a sliding window where the
    model has one) and over its own row under the packed mask."""
    config = model.config
    window = config.sliding_window
    cos, sin = rotary_tables(positions, config)
    own_mask = attention_mask(segment_ids, segment_ids, positions, positions, causal=True,
                              sliding_window=window, q_branch_ids=branch_ids,
                              kv_branch_ids=branch_ids)
    prefix_mask = attention_mask(None, None, positions, prefix.positions, causal=True,
                                 sliding_window=window) & (prefix.segment_ids != 0)[:, None, :]
    scale = config.head_dim ** -0.5

    def step(block: DecoderBlock, keys, values, h):
        q, k, v = block.attn.project(block.attn_norm(h), cos, sin)
        # keys/values: this layer's prefix [1, kv_heads, ...], shared by every row.
        out = cache_step_attention(q, keys[0].astype(q.dtype), values[0].astype(q.dtype),
                                   prefix_mask, k, v, own_mask, scale=scale)
        return block.mlp_residual(h + block.attn.o_proj(out))

    scan = nnx.scan(step, in_axes=(0, 0, 0, nnx.Carry), out_axes=nnx.Carry)
    x = scan(model.layers, prefix.k, prefix.v, model.embed(tokens))
    return model.final_norm(x)
