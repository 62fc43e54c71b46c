"""Log-likelihood scoring as lm-evaluation-harness's HF backend defines it, batched and jitted.

* `encode_pair`: trailing whitespace of the context moves to the continuation; the model
  reads `enc(context)` followed by `enc(context + continuation)` minus its first
  `len(enc(context))` tokens; no special tokens are added. An empty context conditions on
  the prefix token (BOS, else EOS).
* A request longer than max_length + 1 tokens keeps its last max_length + 1 (the model
  sees max_length tokens and the continuation stays whole).
* The score is the sum of the continuation tokens' log-softmax, and `is_greedy` says
  whether each of them is the argmax.
* `rolling_loglikelihood` (perplexity) splits a text into disjoint windows of max_length
  predicted tokens exactly as lm-eval's get_rolling_token_windows(context_len=1): the first
  token is predicted from the prefix token, every window sees up to max_length tokens.

Two batched, jitted paths compute exactly those numbers:

* packed rows (every request that fits whole): requests are grouped by context, and a
  context with all its continuations is one document of a packed row. The context runs
  once, and an attention mask keeps each continuation from seeing the others
  (solar_jax.eval.packed_scoring). For multiple choice with short answers this divides the work
  by the number of choices, and packing leaves almost no padding;
* plain rows (requests cut to max_length, documents over the packing cap): one
  right-padded row each; padding sits after the real tokens, so the causal mask alone
  keeps it out.

Either way the LM head runs only at the positions that predict continuation tokens (the
[tokens, vocab] logits are most of the memory and a fifth of the FLOPs of a small model).
Batches are sorted by length (longest first, as lm-eval does) and padded to bucketed
shapes with a fixed row count, so a whole task compiles a few programs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from solar_jax.errors import SolarError
from solar_jax.eval.packed_scoring import MAX_PACKED_TOKENS, Doc, score_docs, token_logprobs
from solar_jax.generate.engine import bucket
from solar_jax.model.transformer import bind
from solar_jax.placement import model_scope

MAX_BATCH_TOKENS = 16384  # tokens per forward: bounds activations and [tokens, vocab] logits
MIN_WASTED_TOKENS = 4096  # padding worth a compile of its own (see _rows_for)


def _sum_logprobs(logits, targets, mask):
    """Sum of the targets' log-softmax where mask, and whether each is the argmax."""
    logp, greedy = token_logprobs(logits, targets, mask)
    return logp.sum(-1), greedy.all(-1)


@functools.partial(jax.jit, static_argnums=0)
def _score_rows(config, params, tokens, starts, targets, n_targets):
    """tokens [B, W] right-padded; position starts[b] + j predicts targets[b, j]."""
    model = bind(config, params)
    hidden = model.hidden_states(tokens)
    span = targets.shape[1]
    at = jnp.minimum(starts[:, None] + jnp.arange(span)[None], tokens.shape[1] - 1)
    logits = model.logits(jnp.take_along_axis(hidden, at[..., None], axis=1))
    return _sum_logprobs(logits, targets, jnp.arange(span)[None] < n_targets[:, None])


def _width_classes(items, length):
    """Items sorted longest first (as lm-eval) and split by bucketed length. Each class
    gets one shape (its widest member's continuation span too), so the plain rows compile
    about one program per length bucket."""
    classes: dict[int, list] = {}
    for item in sorted(items, key=lambda x: -length(x)):
        classes.setdefault(bucket(length(item)), []).append(item)
    return classes.items()


def _rows_for(n: int, count: int, width: int) -> int:
    """Rows per batch for a class of n items whose full batch is `count` rows of `width`
    tokens. A class with few members (one long perplexity window) is cut to n rounded up to
    a power of two rather than padded with empty rows, but only where those rows would cost
    more than the extra program's compilation (about a forward of MIN_WASTED_TOKENS)."""
    rows = 1 << max(n - 1, 0).bit_length()
    return rows if rows < count and (count - rows) * width >= MIN_WASTED_TOKENS else count


class Scorer:
    def __init__(self, model, tokenizer, *, batch_size: int = 16, max_length: int | None = None,
                 progress=None):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = max(1, batch_size)
        self.max_length = max_length or model.config.max_position_embeddings
        self.progress = progress
        bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
        self.prefix_token_id = bos if bos is not None else eos
        self._encoded: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        ids = self._encoded.get(text)
        if ids is None:
            ids = self._encoded[text] = list(self.tokenizer.encode(text, add_special_tokens=False))
        return ids

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context == "":
            if self.prefix_token_id is None:
                raise SolarError("an empty context needs a BOS or EOS token to condition on")
            cont = self.encode(continuation)
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:]
            return [self.prefix_token_id], cont
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        # As lm-eval: the model sees enc(context) followed by the tail of enc(context +
        # continuation), even where the two tokenizations disagree at the boundary.
        whole = self.encode(context + continuation)
        context_ids = self.encode(context)
        return list(context_ids), whole[len(context_ids):]

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(sum log p(continuation | context), is_greedy) for each (context, continuation)."""
        return self.loglikelihood_tokens([self.encode_pair(c, x) for c, x in pairs])

    def loglikelihood_tokens(self, requests: list[tuple[list[int], list[int]]]
                             ) -> list[tuple[float, bool]]:
        """Scores of (context ids, continuation ids) requests, in order."""
        groups: dict[tuple[int, ...], list[int]] = {}
        singles = []
        for i, (context, continuation) in enumerate(requests):
            if not continuation:
                raise SolarError("a continuation encodes to no tokens")
            if len(continuation) > self.max_length:
                raise SolarError(f"a continuation of {len(continuation)} tokens is longer "
                                 f"than the context of {self.max_length} tokens")
            if len(context) + len(continuation) <= self.max_length + 1 and context:
                groups.setdefault(tuple(context), []).append(i)
            else:
                singles.append(i)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        with model_scope(self.model):  # a sharded model's programs trace with its mesh
            self._plain(requests, sorted(singles), results)
            self._packed(requests, list(groups.values()), results)
        return results

    def _done(self, n: int) -> None:
        if self.progress is not None:
            self.progress.update(n)

    def _plain(self, requests, indices: list[int], results) -> None:
        rows = {}
        for i in indices:
            context, continuation = requests[i]
            whole = (context + continuation)[-(self.max_length + 1):]
            rows[i] = (whole[:-1], whole[-len(continuation):])
        for width, members in _width_classes(indices, lambda i: len(rows[i][0])):
            span = bucket(max(len(rows[i][1]) for i in members), minimum=4)
            count = max(1, min(self.batch_size, MAX_BATCH_TOKENS // width))
            count = _rows_for(len(members), count, width)
            for start in range(0, len(members), count):
                batch = members[start:start + count]
                # A fixed row count: the last, short batch reuses the same program.
                tokens = np.zeros((count, width), np.int32)
                targets = np.zeros((count, span), np.int32)
                starts, n_targets = np.zeros(count, np.int32), np.zeros(count, np.int32)
                for r, i in enumerate(batch):
                    inp, tgt = rows[i]
                    tokens[r, :len(inp)] = inp
                    targets[r, :len(tgt)] = tgt
                    starts[r], n_targets[r] = len(inp) - len(tgt), len(tgt)
                lls, greedy = _score_rows(self.model.config, self.model.params, tokens,
                                          starts, targets, n_targets)
                for r, i in enumerate(batch):
                    results[i] = (float(lls[r]), bool(greedy[r]))
                self._done(len(batch))

    def _packed(self, requests, groups: list[list[int]], results) -> None:
        docs = [Doc(tuple(g), tuple(requests[g[0]][0]),
                    tuple(tuple(requests[i][1]) for i in g)) for g in groups]
        long = [doc for doc in docs if doc.length > MAX_PACKED_TOKENS]
        score_docs(self.model, [d for d in docs if d.length <= MAX_PACKED_TOKENS],
                   self.batch_size, results, self._done)
        self._plain(requests, sorted(i for doc in long for i in doc.requests), results)

    def rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        """lm-eval's disjoint rolling windows: (context tokens, predicted tokens) pairs."""
        tokens = self.encode(text)
        if self.prefix_token_id is None:
            raise SolarError("perplexity needs a BOS or EOS token to predict the first token")
        windows, n, predicted = [], self.max_length, 0
        while predicted < len(tokens):
            if predicted == 0:
                size = min(n, len(tokens))
                inputs, preds = [self.prefix_token_id] + tokens[:size - 1], tokens[:size]
            else:
                size = min(len(tokens) - predicted, n)
                end = predicted + size
                inputs, preds = tokens[max(end - n - 1, 0):end - 1], tokens[end - size:end]
            # make_disjoint_window: the context is the inputs before the predicted span.
            windows.append((inputs[:len(inputs) - (len(preds) - 1)], preds))
            predicted += size
        return windows

    def rolling_loglikelihood(self, texts: list[str]) -> list[tuple[float, int]]:
        """(sum of log p over all tokens, token count) for each text."""
        flat, owner = [], []
        for t, text in enumerate(texts):
            for window in self.rolling_windows(text):
                flat.append(window)
                owner.append(t)
        scores = self.loglikelihood_tokens(flat)
        out = [[0.0, 0] for _ in texts]
        for t, (context, preds), (ll, _) in zip(owner, flat, scores):
            out[t][0] += ll
            out[t][1] += len(preds)
        return [(ll, n) for ll, n in out]
