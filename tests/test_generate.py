"""KV-cache generation: equal to full-forward greedy, parity with transformers on the real
SmolLM2, seeded sampling, the top-k/top-p kept sets, stop strings, streaming, bad input."""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest

import solar_jax
from conftest import make_hf_model
from solar_jax.cli import main
from solar_jax.errors import SolarError
from solar_jax.generate import Sampler, generate
from solar_jax.greedy import greedy_continue



def byte_tokenizer():
    """A byte-level tokenizer (one token per byte, ids 0-255) plus <s>=256 and </s>=257."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def tiny():
    config = solar_jax.ModelConfig.from_preset("tiny-llama")
    return solar_jax.Model(config, solar_jax.init_params(config, seed=0))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny HF model with a byte tokenizer on disk, for the CLI."""
    path = tmp_path_factory.mktemp("tiny") / "hf"
    make_hf_model(path, vocab_size=258, max_position_embeddings=48, bos_token_id=256,
                  eos_token_id=257)
    byte_tokenizer().save_pretrained(str(path))
    return path


def _prompts(n_tokens, seed=0, vocab=256):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, n).tolist() for n in n_tokens]


@pytest.mark.parametrize("preset, chunks", [("tiny-llama", (1, 5)), ("tiny-mistral", (5,))])
def test_kv_cache_greedy_equals_full_forward(preset, chunks):
    config = solar_jax.ModelConfig.from_preset(preset)  # tiny-mistral: window 8 < length
    model = solar_jax.Model(config, solar_jax.init_params(config, seed=1))
    prompts = _prompts((3, 19))  # a padded batch of different lengths
    expected = [greedy_continue(model, p, 14) for p in prompts]
    for chunk in chunks:
        out = generate(model, prompts, 14, ignore_eos=True, chunk=chunk)
        assert [o.tokens for o in out] == expected
        assert all(o.finish == "length" for o in out)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-mistral"])
def test_unrolled_cpu_decode_equals_scanned_decode(preset):
    """The CPU decode path (layers unrolled over per-layer weight views, one KV buffer per
    layer) computes what the scanned path computes, greedy and sampled."""
    from solar_jax.generate.engine import Decoder

    config = solar_jax.ModelConfig.from_preset(preset)
    model = solar_jax.Model(config, solar_jax.init_params(config, seed=3))
    prompts = _prompts((4, 17), seed=5)

    def run(unroll, **sampling):
        decoder = Decoder(model, prompts, 12, sampler=Sampler(**sampling), seed=1,
                          end_ids=(), pad_id=0, chunk=5, unroll_layers=unroll)
        assert (decoder._layers is not None) == unroll
        chunks = [decoder.start()]
        while decoder.generated < 12:
            chunks.append(decoder.next())
        if unroll:
            assert isinstance(decoder.state.cache.k, tuple)
            assert len(decoder.state.cache.k) == config.num_layers
        return np.concatenate(chunks, axis=1)

    np.testing.assert_array_equal(run(True), run(False))
    # Later chunks reuse the first chunk's program (committed views once made the second
    # call compile the loop again).
    from solar_jax.generate.engine import _decode
    for unroll in (True, False):
        decoder = Decoder(model, prompts, 40, sampler=Sampler(), seed=1, end_ids=(),
                          pad_id=0, chunk=4, unroll_layers=unroll)
        decoder.start()
        decoder.next()
        compiled = _decode._cache_size()
        decoder.next()
        decoder.next()
        assert _decode._cache_size() == compiled
    hot = dict(temperature=1.0, top_k=30)
    np.testing.assert_array_equal(run(True, **hot), run(False, **hot))


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-mistral"])
@pytest.mark.parametrize("per_layer", [False, True])
def test_cached_chunks_equal_the_full_forward(preset, per_layer):
    """A prefill, then a multi-token chunk and single tokens into the non-empty cache (the
    step attends over the cache as it was plus its own keys, then writes them), give the
    full forward's logits; with the stacked cache and with one buffer per layer."""
    from solar_jax.generate.cache_attention import KVCache, hidden_states_cached
    from solar_jax.model.transformer import bind, bind_block, forward

    config = solar_jax.ModelConfig.from_preset(preset)  # tiny-mistral: window 8
    params = solar_jax.init_params(config, seed=4)
    ids = np.asarray(_prompts((14,), seed=9)[0], np.int32)[None]
    want = np.asarray(forward(config, params, ids))
    model = bind(config, params)
    cache = KVCache.init(config, 1, 24)
    blocks = None
    if per_layer:
        cache = cache._replace(k=tuple(cache.k), v=tuple(cache.v))
        blocks = [bind_block(config, jax.tree.map(lambda a, i=i: a[i], params["layers"]))
                  for i in range(config.num_layers)]
    got = []
    for start, end in ((0, 5), (5, 9), (9, 10), (10, 11), (11, 14)):
        chunk = ids[:, start:end]
        index = 0 if start == 0 else jax.numpy.int32(start)
        hidden, cache = hidden_states_cached(
            model, chunk, np.ones_like(chunk), np.arange(start, end)[None], cache, index,
            blocks=blocks)
        got.append(np.asarray(model.logits(hidden)))
    np.testing.assert_allclose(np.concatenate(got, axis=1), want, atol=2e-5, rtol=1e-5)


def test_prompt_bucket_pads_under_an_eighth():
    from solar_jax.generate.engine import prompt_bucket

    widths = [prompt_bucket(n) for n in range(1, 5000)]
    assert all(w >= n for n, w in zip(range(1, 5000), widths))
    assert all(w - n < max(n / 8, 8) for n, w in zip(range(1, 5000), widths) if n > 16)
    assert widths == sorted(widths) and prompt_bucket(1) == 16
    assert prompt_bucket(1091) == 1152 and prompt_bucket(1024) == 1024
    assert len(set(widths[1024:2047])) == 8  # 8 compiled widths per octave


def test_layer_views_alias_the_stack_or_decline(tiny):
    from solar_jax.generate.engine import layer_views

    views = layer_views(tiny.params)
    stacked = jax.tree.leaves(tiny.params["layers"])
    for layer, view in enumerate(views):
        for base, leaf in zip(stacked, jax.tree.leaves(view)):
            assert leaf.unsafe_buffer_pointer() == (base.unsafe_buffer_pointer()
                                                    + layer * leaf.nbytes)  # no copy
            np.testing.assert_array_equal(np.asarray(leaf), np.asarray(base[layer]))
    # A layer slice XLA could not alias (20 bytes, not 64-aligned) is declined, not copied.
    assert layer_views({"layers": {"w": jax.numpy.zeros((3, 5))}}) is None
    with pytest.raises(SolarError, match="one CPU device"):
        from solar_jax.generate.engine import Decoder
        odd = solar_jax.Model(tiny.config, {**tiny.params,
                                            "layers": {"w": jax.numpy.zeros((3, 5))}})
        Decoder(odd, [[1]], 2, sampler=Sampler(), seed=0, end_ids=(), pad_id=0, chunk=1,
                unroll_layers=True)


def test_compile_cache_dir_and_switch(tmp_path, monkeypatch):
    import subprocess

    from solar_jax import compile_cache

    monkeypatch.setenv("SOLAR_JAX_COMPILE_CACHE", "off")
    assert compile_cache.cache_dir() is None and compile_cache.enable() is None
    monkeypatch.setenv("SOLAR_JAX_COMPILE_CACHE", str(tmp_path / "c"))
    assert compile_cache.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SOLAR_JAX_COMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.cache_dir() == tmp_path / "xdg" / "solar-jax" / "xla"
    # An unusable directory: an error when asked for, skipped when it is the default.
    (tmp_path / "file").write_text("")
    with pytest.raises(SolarError, match="not writable"):
        compile_cache.enable(tmp_path / "file" / "sub")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    assert compile_cache.enable() is None
    # In a fresh process (the setting is process-wide): enable() makes JAX write there.
    code = ("import jax, jax.numpy as jnp; from solar_jax import compile_cache; "
            f"compile_cache.enable({str(tmp_path / 'd')!r}); "
            "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0); "
            "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert any((tmp_path / "d").iterdir())


def test_end_token_stops_a_row(tiny):
    prompt = _prompts((6,))[0]
    free = generate(tiny, [prompt], 12, ignore_eos=True)[0].tokens
    end = free[4]
    out = generate(tiny, [prompt, prompt[:3]], 12, end_ids=(end,))
    assert out[0].tokens == free[:free.index(end) + 1] and out[0].finish == "eos"
    assert tiny.generate([prompt], 12, end_ids=(end,))[0] == out[0].tokens


def test_sampling_is_reproducible_and_independent_of_chunking(tiny):
    prompts = _prompts((5, 11), seed=2)
    kw = dict(temperature=1.0, top_k=20, top_p=0.95, ignore_eos=True)
    a = generate(tiny, prompts, 16, seed=7, chunk=1, **kw)
    b = generate(tiny, prompts, 16, seed=7, chunk=16, **kw)
    c = generate(tiny, prompts, 16, seed=8, **kw)
    assert [x.tokens for x in a] == [x.tokens for x in b]
    assert [x.tokens for x in a] != [x.tokens for x in c]


def _kept_sets(logits: np.ndarray, k: int, p: float) -> np.ndarray:
    """Reference of transformers' TopK then TopP warpers: a boolean mask of kept tokens."""
    logits = logits.astype(np.float64)
    keep = np.ones_like(logits, bool)
    if k:
        kth = np.sort(logits, axis=-1)[:, -k][:, None]
        keep &= logits >= kth
    if p < 1:
        masked = np.where(keep, logits, -np.inf)
        order = np.argsort(-masked, axis=-1)
        probs = np.exp(masked - masked.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        sorted_p = np.take_along_axis(probs, order, -1)
        before = np.cumsum(sorted_p, -1) - sorted_p
        kept_sorted = before < p
        kept = np.zeros_like(keep)
        np.put_along_axis(kept, order, kept_sorted, -1)
        keep &= kept
    return keep


@pytest.mark.parametrize("k, p", [(5, 1.0), (0, 0.6), (12, 0.8), (1, 1.0)])
def test_sampled_tokens_stay_in_the_kept_set(k, p):
    rng = np.random.default_rng(k)
    logits = (rng.standard_normal((4, 64)) * 3).astype(np.float32)
    sampler = Sampler(temperature=1.0, top_k=k, top_p=p)
    keys = jax.random.split(jax.random.key(0), 3000)
    draws = np.asarray(jax.vmap(lambda key: sampler(logits, key))(keys))  # [3000, 4]
    keep = _kept_sets(logits, k, p)
    for row in range(4):
        seen = set(draws[:, row].tolist())
        allowed = set(np.flatnonzero(keep[row]).tolist())
        assert seen <= allowed
        assert len(seen) == len(allowed)  # every kept token shows up in 3000 draws
    np.testing.assert_array_equal(np.isfinite(np.asarray(sampler.filter(logits))), keep)


def test_generated_tokens_respect_top_k_and_top_p(tiny):
    prompt = _prompts((9,), seed=3)[0]
    out = generate(tiny, [prompt], 24, temperature=1.0, top_k=6, top_p=0.5, seed=1,
                   ignore_eos=True)[0].tokens
    logits = np.asarray(tiny(np.array([prompt + out])))[0]
    keep = _kept_sets(logits[len(prompt) - 1:-1], 6, 0.5)
    assert all(keep[i, t] for i, t in enumerate(out))


def test_bad_arguments_are_one_line_errors(tiny):
    with pytest.raises(SolarError, match="leaves no room"):
        generate(tiny, [[5] * 512], 4)
    with pytest.raises(SolarError, match="prompt 1 is empty"):
        generate(tiny, [[5], []], 4)
    with pytest.raises(SolarError, match="top-p"):
        generate(tiny, [[5]], 4, temperature=1.0, top_p=0.0)
    with pytest.raises(SolarError, match="need a tokenizer"):
        generate(tiny, [[5]], 4, stop=("x",))


def test_cli_generate_and_errors(tiny_folder, capsys):
    assert main(["generate", str(tiny_folder), "--prompt", "hello", "--max-new-tokens", "5"]) == 0
    assert main(["generate", str(tiny_folder), "--prompt", "ab", "--prompt", "abcdef",
                 "--max-new-tokens", "3", "--temperature", "0.7", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "--- [0] ab" in out and "--- [1] abcdef" in out
    assert main(["generate", str(tiny_folder), "--prompt", "x" * 60]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: prompt 0 has 60 tokens") and "\n" not in err
    assert main(["generate", str(tiny_folder), "--prompt", "x", "--top-k", "-1"]) == 2


def test_cli_chat_reads_turns(tiny_folder, capsys, monkeypatch):
    import io
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n/reset\nagain\n"))
    assert main(["chat", str(tiny_folder), "--max-new-tokens", "4"]) == 0


# ---- the real model: SmolLM2-135M-Instruct ----------------------------------------------


@pytest.fixture(scope="module")
def smol_hf(smol_dir):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(smol_dir), dtype=torch.float32).eval()


@pytest.mark.slow
def test_smol_generation_matches_transformers(smol, smol_hf):
    import torch
    from solar_jax.tokenizer import chat_prompt

    tok = smol.tokenizer
    prompts = [tok.encode("The three primary colors are"),
               chat_prompt(tok, "Name a planet in the solar system.")]
    outs = generate(smol, prompts, 24, ignore_eos=True, chunk=8)
    for prompt, out in zip(prompts, outs):
        ids = np.array([prompt + out.tokens])
        with torch.no_grad():
            theirs = smol_hf(torch.as_tensor(ids)).logits[0].numpy()
        ours = np.asarray(smol(ids))[0]
        # Teacher-forced logits of the whole generated sequence.
        assert np.abs(ours - theirs).max() <= 1e-3 * np.abs(theirs).max()
        # Our KV-cache greedy tokens are transformers' argmax wherever the top-2 margin
        # is clear of float noise.
        steps = theirs[len(prompt) - 1:-1]
        top2 = np.sort(steps, axis=-1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 1e-3
        assert clear.sum() >= len(out.tokens) // 2
        np.testing.assert_array_equal(np.array(out.tokens)[clear], steps.argmax(-1)[clear])


@pytest.mark.slow
def test_smol_stop_strings_eos_and_streaming(smol):
    tok = smol.tokenizer
    pieces = []
    out = generate(smol, [tok.encode("1, 2, 3, 4, 5,")], 16, stop=(",",), tokenizer=tok,
                   on_text=lambda row, delta: pieces.append(delta))[0]
    assert out.finish == "stop" and out.text == " 6" and "".join(pieces) == out.text
    answer = smol.generate("What is the capital of France?", chat=True, max_new_tokens=40)
    assert "Paris" in answer
    ids = solar_jax.tokenizer.chat_prompt(tok, "What is the capital of France?")
    full = generate(smol, [ids], 40, tokenizer=tok)[0]
    assert full.finish == "eos" and full.tokens[-1] == tok.eos_token_id
    assert full.text == answer
    # Batched with a longer prompt, the padded row produces the same answer.
    longer = solar_jax.tokenizer.chat_prompt(tok, "Write one sentence about the history "
                                             "of the Roman Empire and its emperors.")
    both = generate(smol, [ids, longer], 40, tokenizer=tok)
    assert both[0].tokens == full.tokens
