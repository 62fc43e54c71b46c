"""The attention entry point against a direct numpy computation of the same definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import solar_jax
from solar_jax.errors import SolarError


def numpy_attention(q, k, v, seg=None, pos=None, causal=True, window=None, branch=None):
    b, s, h, d = q.shape
    kvh = k.shape[2]
    pos = np.broadcast_to(np.arange(s), (b, s)) if pos is None else pos
    out = np.zeros_like(q, dtype=np.float64)
    for bi in range(b):
        for hi in range(h):
            kv = hi // (h // kvh)
            scores = q[bi, :, hi] @ k[bi, :, kv].T / np.sqrt(d)
            allowed = np.ones((s, s), bool)
            if seg is not None:
                allowed &= seg[bi][:, None] == seg[bi][None, :]
            if causal:
                allowed &= pos[bi][None, :] <= pos[bi][:, None]
            if window is not None:
                allowed &= (pos[bi][:, None] - pos[bi][None, :]) < window
            if branch is not None:
                kb, qb = branch[bi][None, :], branch[bi][:, None]
                allowed &= (kb == 0) | (kb == qb)
            scores = np.where(allowed, scores, -np.inf)
            p = np.exp(scores - scores.max(-1, keepdims=True))
            out[bi, :, hi] = (p / p.sum(-1, keepdims=True)) @ v[bi, :, kv]
    return out


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (6, 2), (4, 1), (8, 2)])
@pytest.mark.parametrize("causal, window, packed", [(True, None, False), (False, None, False),
                                                    (True, 5, False), (True, None, True),
                                                    (True, 4, True)])
def test_xla_matches_numpy(heads, kv_heads, causal, window, packed):
    rng = np.random.default_rng(heads * 10 + kv_heads)
    b, s, d = 2, 19, 16
    q = rng.standard_normal((b, s, heads, d)).astype(np.float32)
    k = rng.standard_normal((b, s, kv_heads, d)).astype(np.float32)
    v = rng.standard_normal((b, s, kv_heads, d)).astype(np.float32)
    seg = pos = None
    if packed:
        seg = np.array([[1] * 7 + [2] * 12, [1] * 19])
        pos = np.array([list(range(7)) + list(range(12)), list(range(19))])
    out = solar_jax.attention(q, k, v, seg, pos, causal=causal, sliding_window=window, impl="xla")
    np.testing.assert_allclose(out, numpy_attention(q, k, v, seg, pos, causal, window),
                               atol=2e-5, rtol=1e-5)


def test_branches_match_numpy_and_separate_rows():
    # Row 0: document 1 = context (4) + continuations of 3 and 2 tokens, document 2 =
    # context (5) + continuations of 1, 2, 2 tokens, then 2 padding slots.
    rng = np.random.default_rng(7)
    b, s, h, kvh, d = 2, 19, 4, 2, 8
    q, k, v = (rng.standard_normal((b, s, n, d)).astype(np.float32) for n in (h, kvh, kvh))
    seg = np.array([[1] * 9 + [2] * 10 + [0] * 0, [1] * 17 + [0] * 2])
    branch = np.array([[0] * 4 + [1] * 3 + [2] * 2 + [0] * 5 + [1] + [2] * 2 + [3] * 2,
                       [0] * 10 + [1] * 4 + [2] * 3 + [0] * 2])
    pos = np.array([[0, 1, 2, 3, 4, 5, 6, 4, 5, 0, 1, 2, 3, 4, 5, 5, 6, 5, 6],
                    list(range(14)) + [10, 11, 12, 0, 0]])
    out = np.asarray(solar_jax.attention(q, k, v, seg, pos, branch_ids=branch))
    np.testing.assert_allclose(out, numpy_attention(q, k, v, seg, pos, branch=branch),
                               atol=2e-5, rtol=1e-5)
    # A continuation's outputs are those of its context followed by it alone.
    alone = [0, 1, 2, 3, 7, 8]  # document 1's context and its second continuation
    sub = lambda x: x[:1, alone]
    ref = solar_jax.attention(sub(q), sub(k), sub(v), None, sub(pos[:, :, None])[..., 0])
    np.testing.assert_allclose(out[0, alone], np.asarray(ref)[0], atol=2e-5, rtol=1e-5)
    with pytest.raises(SolarError, match="self-attention only"):
        solar_jax.attention(q, k[:, :5], v[:, :5], seg, pos, branch_ids=branch)


def test_auto_resolves_and_unknown_impl_is_named():
    q = jnp.ones((1, 4, 2, 8))
    assert solar_jax.attention(q, q, q).shape == (1, 4, 2, 8)
    with pytest.raises(SolarError, match="unknown attention implementation 'flashy'"):
        solar_jax.attention(q, q, q, impl="flashy")
    assert "xla" in solar_jax.available_attention_impls()


def test_bad_shapes():
    q = jnp.ones((1, 4, 3, 8))
    with pytest.raises(SolarError, match="multiple"):
        solar_jax.attention(q, jnp.ones((1, 4, 2, 8)), jnp.ones((1, 4, 2, 8)))


def test_cudnn_needs_gpu():
    if jax.default_backend() == "gpu":
        pytest.skip("has a GPU")
    q = jnp.ones((1, 4, 2, 8))
    with pytest.raises(SolarError, match="GPU"):
        solar_jax.attention(q, q, q, impl="cudnn")


def test_registered_impl_is_used_by_the_model():
    calls = []

    def spy(q, k, v, **kw):
        calls.append(q.shape)
        from solar_jax.model.attention import xla_attention
        return xla_attention(q, k, v, **kw)

    solar_jax.register_attention("spy", spy)
    config = solar_jax.ModelConfig.from_preset("tiny-llama", attention_impl="spy")
    params = solar_jax.init_params(config)
    ids = np.arange(8)[None]
    out = solar_jax.Model(config, params)(ids)
    ref = solar_jax.Model(config.replace(attention_impl="xla"), params)(ids)
    assert calls and np.allclose(out, ref)


@pytest.mark.parametrize("window", [None, 5])
def test_slot_causal_attention_skips_only_invisible_keys(window):
    """Left-padded rows (padding first, segment 0) and a packed row, in query blocks of 4
    over 19 slots: real tokens get exactly what the full attention gives them."""
    rng = np.random.default_rng(11)
    b, s, h, kvh, d = 3, 19, 6, 2, 8
    q, k, v = (rng.standard_normal((b, s, n, d)).astype(np.float32) for n in (h, kvh, kvh))
    seg = np.array([[0] * 5 + [1] * 14, [1] * 19, [1] * 8 + [2] * 9 + [0] * 2])
    pos = np.array([[0] * 5 + list(range(14)), list(range(19)),
                    list(range(8)) + list(range(9)) + [0, 0]])
    from solar_jax.generate.cache_attention import slot_causal_attention

    got = np.asarray(slot_causal_attention(
        q, k, v, seg, pos, sliding_window=window, block=4))
    want = numpy_attention(q, k, v, seg, pos, True, window)
    real = seg > 0
    np.testing.assert_allclose(got[real], want[real], atol=2e-5, rtol=1e-5)
    assert np.isfinite(got).all()
