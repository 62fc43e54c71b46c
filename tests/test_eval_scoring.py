"""Evaluation's scorer on a tiny model: log-likelihoods against a full forward, packed
multiple choice against separate forwards, the packer, and the mc2/acc_norm metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

import solar_jax
from eval_helpers import log_softmax, write_jsonl
from solar_jax.eval.scoring import Scorer


# ---- log-likelihood on a tiny model --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    config = solar_jax.ModelConfig.from_preset("tiny-llama").replace(max_position_embeddings=40)
    return solar_jax.Model(config, solar_jax.init_params(config, seed=4))


def _forward_padded(model, ids: list[int]) -> np.ndarray:
    """Logits of ids from one full forward, right-padded to 40 (causal: pads change
    nothing before them) so every call reuses one compiled program."""
    padded = np.zeros((1, 40), np.int32)
    padded[0, :len(ids)] = ids
    return np.asarray(model(padded))[0, :len(ids)]


def test_loglikelihood_equals_full_forward_log_softmax(tiny):
    rng = np.random.default_rng(0)
    requests = [(rng.integers(3, 256, n).tolist(), rng.integers(3, 256, m).tolist())
                for n, m in ((5, 3), (17, 1), (1, 9), (30, 20))]  # the last is truncated
    shared = rng.integers(3, 256, 11).tolist()  # choices of one context: the KV-cache path
    requests += [(shared, rng.integers(3, 256, m).tolist()) for m in (1, 4, 2, 7, 3)]
    requests += [(requests[0][0], [7])]
    got = Scorer(tiny, None, batch_size=4, max_length=40).loglikelihood_tokens(requests)
    for (context, cont), (ll, greedy) in zip(requests, got):
        whole = (context + cont)[-41:]
        logp = log_softmax(_forward_padded(tiny, whole[:-1]))
        rows = np.arange(len(whole) - 1 - len(cont), len(whole) - 1)
        assert ll == pytest.approx(logp[rows, cont].sum(), abs=1e-4)
        assert greedy == bool((logp[rows].argmax(-1) == cont).all())
    # A continuation made of the greedy tokens is reported as greedy.
    context = requests[0][0]
    best = int(_forward_padded(tiny, context)[-1].argmax())
    assert Scorer(tiny, None).loglikelihood_tokens([(context, [best])])[0][1]


def test_packed_multiple_choice_equals_separate_forwards(tiny, monkeypatch):
    """Many contexts with several continuations each: packed several to a row, in two width
    classes and several batches, and one document over the packing cap scored per request."""
    from solar_jax.eval import packed_scoring as packing

    monkeypatch.setattr(packing, "PACK_WIDTH", 32)
    monkeypatch.setattr(packing, "MAX_PACKED_TOKENS", 45)
    rng = np.random.default_rng(3)
    requests = []
    for n in (3, 30, 9, 12, 5, 21, 7, 16, 4, 11, 25, 8):
        context = rng.integers(3, 256, n).tolist()
        requests += [(context, rng.integers(3, 256, m).tolist())
                     for m in rng.integers(1, 6, rng.integers(2, 6))]
    got = Scorer(tiny, None, batch_size=1, max_length=40).loglikelihood_tokens(requests)
    for (context, cont), (ll, greedy) in zip(requests, got):
        logp = log_softmax(_forward_padded(tiny, context + cont[:-1]))
        rows = np.arange(len(context) - 1, len(context) + len(cont) - 1)
        assert ll == pytest.approx(logp[rows, cont].sum(), abs=1e-4)
        assert greedy == bool((logp[rows].argmax(-1) == cont).all())


def test_scores_in_a_chosen_row_width_equal_separate_forwards(tiny, monkeypatch):
    """Documents that waste a class's own rows are packed at another width (choose_layout),
    and score exactly as before."""
    from solar_jax.eval import packed_scoring as packing

    monkeypatch.setattr(packing, "PACK_WIDTH", 32)
    monkeypatch.setattr(packing, "MIN_WIDTH_STEP", 8)
    monkeypatch.setattr(packing, "TOKENS_PER_REQUEST", 24)
    widths = []
    real = packing.choose_layout
    monkeypatch.setattr(packing, "choose_layout",
                        lambda d, w, b: (lambda out: widths.append((w, out[0])) or out)(real(d, w, b)))
    rng = np.random.default_rng(7)
    requests = []
    # 11 documents of 13 tokens, 4 * 24 tokens a forward: rows of 32 hold two (2 batches
    # of 3 rows: 192 slots), rows of 40 three (2 batches of 2: 160); 16, 24, 48 run more
    for _ in range(11):
        context = rng.integers(3, 256, 7).tolist()
        requests += [(context, rng.integers(3, 256, 2).tolist()) for _ in range(3)]
    got = Scorer(tiny, None, batch_size=4, max_length=40).loglikelihood_tokens(requests)
    assert widths == [(32, 40)], widths  # wider than the class: its rows must use it
    for (context, cont), (ll, greedy) in zip(requests, got):
        logp = log_softmax(_forward_padded(tiny, context + cont[:-1]))
        rows = np.arange(len(context) - 1, len(context) + len(cont) - 1)
        assert ll == pytest.approx(logp[rows, cont].sum(), abs=1e-4)
        assert greedy == bool((logp[rows].argmax(-1) == cont).all())


@pytest.fixture(scope="module")
def windowed(tiny):
    """tiny as a Mistral with a 6-token sliding window: the prefix's keys fall out of it."""
    config = tiny.config.replace(model_type="mistral", sliding_window=6)
    return solar_jax.Model(config, tiny.params)


@pytest.mark.parametrize("model_name", ["tiny", "windowed"])
def test_shared_prefix_scores_equal_separate_forwards(model_name, request, monkeypatch):
    """Few-shot style contexts: groups with a long common prefix (one that shrinks as a
    context joins, one context that is the prefix itself plus one token) run the prefix
    once and score exactly like full forwards; unrelated contexts stay in plain rows."""
    from solar_jax.eval import packed_scoring as packing
    from solar_jax.eval import shared_prefix

    tiny = request.getfixturevalue(model_name)

    monkeypatch.setattr(shared_prefix, "MIN_SHARED_PREFIX", 8)
    monkeypatch.setattr(packing, "PACK_WIDTH", 32)
    prefilled = []
    real_prefill = shared_prefix.prefill
    monkeypatch.setattr(shared_prefix, "prefill",
                        lambda c, p, prefix: prefilled.append(prefix) or real_prefill(c, p, prefix))
    rng = np.random.default_rng(5)
    preamble, other = rng.integers(3, 256, 14).tolist(), rng.integers(3, 256, 10).tolist()
    contexts = [preamble + rng.integers(3, 256, n).tolist() for n in (3, 7, 1, 5, 9)]
    contexts += [preamble[:13] + rng.integers(3, 256, 4).tolist()]  # shrinks it to 13
    contexts += [other + rng.integers(3, 256, n).tolist() for n in (2, 6)]
    contexts += [rng.integers(3, 256, n).tolist() for n in (5, 12)]  # alone
    requests = [(c, rng.integers(3, 256, m).tolist())
                for c in contexts for m in rng.integers(1, 5, rng.integers(2, 5))]
    got = Scorer(tiny, None, batch_size=1, max_length=40).loglikelihood_tokens(requests)
    assert sorted(map(len, prefilled)) == [10, 13]
    for (context, cont), (ll, greedy) in zip(requests, got):
        logp = log_softmax(_forward_padded(tiny, context + cont[:-1]))
        rows = np.arange(len(context) - 1, len(context) + len(cont) - 1)
        assert ll == pytest.approx(logp[rows, cont].sum(), abs=1e-4)
        assert greedy == bool((logp[rows].argmax(-1) == cont).all())


def test_prefix_groups():
    from solar_jax.eval.shared_prefix import prefix_groups

    a, b = tuple(range(100, 120)), tuple(range(200, 230))
    contexts = [a + (1, 2), b + (5,), a + (3,), (7, 8, 9), a[:12] + (4,), b + (6, 6), a]
    groups, alone = prefix_groups(contexts, min_shared=10)
    # a[:12] + (4,) would cut the 20-token prefix of three contexts to 12: 36 < 40 saved,
    # so it stays out; `a` itself keeps its last token out of the prefix (19 shared).
    assert sorted((n, sorted(m)) for n, m in groups) == [(19, [0, 2, 6]), (30, [1, 5])]
    assert sorted(alone) == [3, 4]
    assert prefix_groups([b, b], min_shared=30) == ([], [0, 1])


def test_pack_first_fit_decreasing():
    from solar_jax.eval.packed_scoring import Doc, balanced_batches, pack

    rng = np.random.default_rng(0)
    docs = [Doc((i,), tuple(range(int(n))), ((1,),)) for i, n in
            enumerate(rng.integers(1, 100, 200))]
    rows = pack(docs, 128)
    assert sorted(d.requests for row in rows for d in row) == [(i,) for i in range(200)]
    assert all(sum(d.length for d in row) <= 128 for row in rows)
    # Near the lower bound on the row count (total tokens / width).
    assert len(rows) <= math.ceil(sum(d.length for d in docs) / 128) + 2
    batches, size = balanced_batches(rows, 8)
    assert sum(map(len, batches)) == len(rows) and max(map(len, batches)) == size <= 8
    assert size - min(map(len, batches)) < len(batches)
    with pytest.raises(ValueError, match="does not fit"):
        pack([Doc((0,), tuple(range(200)), ((1,),))], 128)


def test_row_width_runs_the_fewest_slots():
    from solar_jax.eval.packed_scoring import Doc, choose_layout

    def docs(length, n):
        return [Doc((i,), tuple(range(length - 1)), ((1,),)) for i in range(n)]

    # 30 documents of 100 tokens, batch 16 (16 * 128 tokens a forward): rows of 256 hold
    # two (15 rows, 2 batches of 8: 4,096 slots), rows of 320 three (10 rows, 2 batches of
    # 5: 3,200); 128 and 384 both run 3,840.
    width, batches, n_rows = choose_layout(docs(100, 30), 256, 16)
    assert (width, n_rows, len(batches)) == (320, 5, 2)
    assert sorted(d.requests for b in batches for row in b for d in row) == [(i,) for i in range(30)]
    assert all(sum(d.length for d in row) <= width for b in batches for row in b)
    # Documents that fill the class's own rows keep its width (no extra compiled shape).
    width, batches, n_rows = choose_layout(docs(128, 32), 256, 16)
    assert (width, n_rows, len(batches)) == (256, 8, 2)


def test_mc2_and_acc_norm_metrics(tiny, monkeypatch, tmp_path):
    from solar_jax.eval import runner as ev

    lls = {" yes": -1.0, " y": -2.0, " no": -0.5}
    monkeypatch.setattr(Scorer, "loglikelihood",
                        lambda self, pairs: [(lls[c], False) for _, c in pairs])
    orig = {"question": "Q?", "mc2_targets": {"yes": 1, "y": 1, "no": 0}}
    write_jsonl(tmp_path / "t.jsonl", [orig])
    res = ev.evaluate(tiny, "truthfulqa_mc2", tmp_path / "t.jsonl", tokenizer=object())
    p = np.exp([-1.0, -2.0, -0.5])
    assert res["acc"] == pytest.approx(p[:2].sum() / p.sum())
    # acc_norm divides by the choice's characters: " yes" loses to " no" raw, wins normed.
    lls.update({" no": -0.9})
    rec = {"question": {"stem": "?", "choices": [{"text": "yes", "label": "A"},
                                                 {"text": "no", "label": "B"}]}, "answerKey": "A"}
    res = ev.evaluate(tiny, "arc", write_jsonl(tmp_path / "a.jsonl", [rec]), tokenizer=object())
    assert res["samples"][0]["pred"] == 1 and res["samples"][0]["pred_norm"] == 0
    assert (res["acc"], res["acc_norm"]) == (0.0, 1.0)
