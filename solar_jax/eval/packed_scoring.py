"""Multiple-choice scoring in packed rows: a context and all of its continuations share one
row, and several such documents share a row.

One document in a row is its context's tokens (branch 0) followed by each continuation
(branch c + 1), whose rotary positions continue from the end of the context. The attention
mask (segments and branches, see solar_jax.model.attention) lets a continuation see its own
context and itself only, so each continuation is scored exactly as if it alone followed
the context (lm-eval's definition), while the context runs once. Documents are packed
largest first into rows of a bucketed width, so rows carry almost no padding and a task
compiles one program per width class (usually one).

Documents whose contexts open with the same long run of tokens (a few-shot preamble) are
grouped first: the run is computed once into a KV cache and their rows hold only the rest
(solar_jax.eval.shared_prefix).

Continuation token t is predicted at the slot before it (the context's last token for
t = 0); the LM head runs only at those slots, gathered across the whole batch.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np

from solar_jax.eval import shared_prefix
from solar_jax.generate.engine import bucket
from solar_jax.model.transformer import bind

PACK_WIDTH = 256          # the narrowest row; short documents share it
MAX_PACKED_TOKENS = 4096  # a longer document is scored one request per row instead
TOKENS_PER_REQUEST = 128  # --batch-size B packs about B * 128 tokens into one forward
MIN_WIDTH_STEP = 64       # choose_layout's widths are multiples of this (or of a quarter class)


@dataclass(frozen=True)
class Doc:
    """One context with its continuations; `requests` are their indices in the caller's
    list of requests, in the same order."""
    requests: tuple[int, ...]
    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]

    @property
    def length(self) -> int:
        return len(self.context) + sum(len(c) for c in self.continuations)

    @property
    def n_targets(self) -> int:
        return sum(len(c) for c in self.continuations)


def width_for(doc: Doc) -> int:
    return max(PACK_WIDTH, bucket(doc.length))


def pack(docs: list[Doc], width: int) -> list[list[Doc]]:
    """Rows of at most `width` tokens: each row starts with the longest document left and
    is filled with the longest ones that still fit (a binary search per placement)."""
    order = sorted(docs, key=lambda d: d.length)
    lengths = [d.length for d in order]
    if lengths and lengths[-1] > width:
        raise ValueError(f"a document of {lengths[-1]} tokens does not fit a row of {width}")
    rows = []
    while order:
        lengths.pop()
        row = [order.pop()]
        room = width - row[0].length
        while True:
            i = bisect.bisect_right(lengths, room) - 1
            if i < 0:
                break
            lengths.pop(i)
            row.append(order.pop(i))
            room -= row[-1].length
        rows.append(row)
    return rows


def balanced_batches(rows: list, capacity: int) -> tuple[list[list], int]:
    """Rows split into batches of one fixed size (one compiled shape) as even as possible:
    the last batch is short by less than the number of batches."""
    n_batches = -(-len(rows) // capacity)
    size = -(-len(rows) // n_batches)
    return [rows[i:i + size] for i in range(0, len(rows), size)], size


def choose_layout(docs: list[Doc], width: int, batch_size: int) -> tuple[int, list, int]:
    """(row width, batches of rows, rows per batch) for one width class: its own width, or
    another multiple of a quarter of it (from its longest document up to 1.5x) where that
    runs at least 5% fewer slots. Slots are lost twice, to the rows' ends and to padding
    rows in the last batch, and both depend on the width: 50 HellaSwag documents of ~90
    tokens fill rows of 256 to 93% but 3 batches of 7 rows to 84%; rows of 320 to 95%."""
    def layout_for(w):
        batches, n_rows = balanced_batches(pack(docs, w),
                                           max(1, batch_size * TOKENS_PER_REQUEST // w))
        return len(batches) * n_rows * w, w, batches, n_rows

    step = max(MIN_WIDTH_STEP, width // 4)
    longest = max(d.length for d in docs)
    best = default = layout_for(width)
    for w in range(-(-longest // step) * step, width * 3 // 2 + 1, step):
        if w != width:
            best = min(best, layout_for(w))
    if best[0] > 0.95 * default[0]:
        best = default  # not worth another compiled width
    return best[1:]


@dataclass
class PackedBatch:
    tokens: np.ndarray       # [R, W]
    segment_ids: np.ndarray  # [R, W] document within the row, from 1; 0 is padding
    branch_ids: np.ndarray   # [R, W] 0 context, c + 1 continuation c
    positions: np.ndarray    # [R, W]
    at: np.ndarray           # [T] slot (row * W + column) whose output predicts the target
    targets: np.ndarray      # [T]
    valid: np.ndarray        # [T]
    owner: np.ndarray        # [T] request index of each target (-1: none)


def layout(rows: list[list[Doc]], n_rows: int, width: int, n_targets: int,
           offset: int = 0) -> PackedBatch:
    """The arrays of a batch of rows; `offset`: the length of a shared prefix the rows'
    contexts continue (their rotary positions start there)."""
    shape, tshape = (n_rows, width), (n_targets,)
    b = PackedBatch(np.zeros(shape, np.int32), np.zeros(shape, np.int32),
                    np.zeros(shape, np.int32), np.zeros(shape, np.int32),
                    np.zeros(tshape, np.int32), np.zeros(tshape, np.int32),
                    np.zeros(tshape, bool), np.full(tshape, -1, np.int64))
    k = 0
    for r, row in enumerate(rows):
        slot = 0
        for seg, doc in enumerate(row, start=1):
            n = len(doc.context)
            b.tokens[r, slot:slot + n] = doc.context
            b.segment_ids[r, slot:slot + n] = seg
            b.positions[r, slot:slot + n] = np.arange(offset, offset + n)
            last_context = r * width + slot + n - 1
            slot += n
            for c, (req, cont) in enumerate(zip(doc.requests, doc.continuations)):
                m = len(cont)
                b.tokens[r, slot:slot + m] = cont
                b.segment_ids[r, slot:slot + m] = seg
                b.branch_ids[r, slot:slot + m] = c + 1
                b.positions[r, slot:slot + m] = np.arange(offset + n, offset + n + m)
                b.at[k] = last_context
                b.at[k + 1:k + m] = r * width + np.arange(slot, slot + m - 1)
                b.targets[k:k + m] = cont
                b.valid[k:k + m] = True
                b.owner[k:k + m] = req
                slot += m
                k += m
    return b


def token_logprobs(logits, targets, mask):
    """Each target's log-softmax (0 where not mask) and whether it is the argmax (True
    where not mask)."""
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    logp = jnp.where(mask, picked - logz, 0.0)
    greedy = (jnp.argmax(logits, axis=-1) == targets) | ~mask
    return logp, greedy


@functools.partial(jax.jit, static_argnums=0)
def score_packed(config, params, tokens, segment_ids, branch_ids, positions, at, targets,
                 valid, prefix=None):
    """Per-target log-probabilities and greedy flags [T] of one packed batch; `prefix`:
    the KV cache of a prefix every row continues (solar_jax.eval.shared_prefix)."""
    model = bind(config, params)
    if prefix is None:
        hidden = model.hidden_states(tokens, segment_ids, positions, branch_ids=branch_ids)
    else:
        hidden = shared_prefix.hidden_states_after(model, prefix, tokens, segment_ids,
                                                   positions, branch_ids)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    logits = model.logits(hidden[at][None])[0]
    return token_logprobs(logits, targets, valid)


def score_docs(model, docs: list[Doc], batch_size: int, results: list, progress=None) -> None:
    """Fill results[request] = (log-likelihood, is_greedy) for every continuation of every
    document (each no longer than MAX_PACKED_TOKENS). Documents whose contexts share a
    long prefix run it once (solar_jax.eval.shared_prefix)."""
    groups, alone = shared_prefix.prefix_groups([doc.context for doc in docs])
    for length, members in groups:
        prefix = docs[members[0]].context[:length]
        cache = shared_prefix.prefill(model.config, model.params, prefix)
        rest = [replace(docs[i], context=docs[i].context[length:]) for i in members]
        _score_rows(model, rest, batch_size, results, progress, cache, length)
    _score_rows(model, [docs[i] for i in alone], batch_size, results, progress)


def _score_rows(model, docs: list[Doc], batch_size: int, results: list, progress,
                prefix=None, offset: int = 0) -> None:
    classes: dict[int, list[Doc]] = {}
    for doc in docs:
        classes.setdefault(width_for(doc), []).append(doc)
    for width in sorted(classes, reverse=True):
        width, batches, n_rows = choose_layout(classes[width], width, batch_size)
        n_targets = bucket(max(sum(d.n_targets for row in batch for d in row)
                               for batch in batches), minimum=4)
        for batch in batches:
            b = layout(batch, n_rows, width, n_targets, offset)
            logp, greedy = score_packed(model.config, model.params, b.tokens, b.segment_ids,
                                        b.branch_ids, b.positions, b.at, b.targets, b.valid,
                                        prefix)
            logp, greedy = np.asarray(logp), np.asarray(greedy)
            seen = b.owner >= 0
            owners, which = np.unique(b.owner[seen], return_inverse=True)
            lls = np.bincount(which, weights=logp[seen].astype(np.float64))
            misses = np.bincount(which, weights=~greedy[seen])
            for req, ll, miss in zip(owners.tolist(), lls.tolist(), misses.tolist()):
                results[req] = (ll, miss == 0)
            if progress is not None:
                progress(len(owners))
