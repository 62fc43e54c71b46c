"""What the GGUF export tests share: tokenizers in both llama.cpp vocab styles, a tiny
random model (a fixture), llama.cpp's tensor names and permutation written out
independently of ours, and the export and load steps."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import solar_jax  # noqa: E402
from conftest import DATA, make_hf_model  # noqa: E402
from solar_jax.checkpoint.safetensors_io import SafetensorsFile  # noqa: E402
from solar_jax.cli import main  # noqa: E402


Q = gguf.GGMLQuantizationType
VOCAB = 320
IDS = np.array([[1, 17, 42, 99, 250, 7, 300, 5, 64, 128, 3, 11]])
LAYER_GGUF = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
              "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def write_bpe_tokenizer(path: Path, vocab_size: int = VOCAB) -> Path:
    """A byte-level BPE (GPT-2 style) trained on a little Shakespeare, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((DATA / "tinyshakespeare.txt").read_text()[:20000].splitlines(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<|endoftext|>")
    fast.chat_template = "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    fast.save_pretrained(str(path))
    return path


def write_spm_tokenizer(path: Path, vocab_size: int = 400):
    """A SentencePiece BPE model with byte fallback (the Llama 2 / Mistral / SOLAR kind) and
    the tokenizer.json HF derives from it: merges ranked by piece score, legacy normalizer."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    corpus = path / "corpus.txt"
    path.mkdir(parents=True, exist_ok=True)
    corpus.write_text((DATA / "tinyshakespeare.txt").read_text()[:40000])
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(path / "spm"), vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        split_digits=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        minloglevel=2)
    corpus.unlink()
    sp = spm.SentencePieceProcessor(model_file=str(path / "spm.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {p: i for i, p in enumerate(pieces)}
    normal = {p: (sp.get_score(i), i) for i, p in enumerate(pieces)
              if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))}
    ranked = sorted((-normal[p][0], normal[p][1], p[:k], p[k:]) for p in normal
                    for k in range(1, len(p)) if p[:k] in normal and p[k:] in normal)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[(a, b) for _, _, a, b in ranked],
                               unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                           normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(str(path))
    return path, sp


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An untied tiny Llama (f32) with a byte-level BPE tokenizer."""
    path = tmp_path_factory.mktemp("tiny") / "hf"
    make_hf_model(path, vocab_size=VOCAB, seed=1)
    write_bpe_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def tiny_tensors(tiny):
    st = SafetensorsFile(tiny / "model.safetensors")
    return {n: st.read(n) for n in st.names()}


def gguf_name(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, i, rest = hf.split(".", 3)
    return f"blk.{i}.{LAYER_GGUF[rest.removesuffix('.weight')]}.weight"


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, written out independently of ours."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def raw_tensor(reader, name: str) -> np.ndarray:
    """A tensor's stored data, dequantized but NOT un-permuted (llama.cpp's view), HF shape."""
    t = next(t for t in reader.tensors if t.name == name)
    shape = tuple(int(n) for n in reversed(t.shape.tolist()))
    if t.tensor_type == Q.BF16:
        return np.array(t.data).view(ml_dtypes.bfloat16).reshape(shape)
    if t.tensor_type in (Q.F32, Q.F16):
        return np.array(t.data).reshape(shape)
    return gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)


@functools.cache
def gguf_logits(path, dtype=None) -> np.ndarray:
    return np.asarray(solar_jax.load_model(path, dtype=dtype)(IDS), np.float32)


def export(src, out, *args) -> Path:
    assert main(["convert", str(src), str(out), "--to", "gguf", *args]) == 0
    return out
