"""The real model: SmolLM2-135M-Instruct from its GGUF, exported again and compared key by
key with the original, and its tokenizer through the HF files."""

from __future__ import annotations

import pytest

gguf = pytest.importorskip("gguf")

from gguf_helpers import Q  # noqa: E402
from solar_jax.checkpoint import gguf_vocab  # noqa: E402
from solar_jax.checkpoint.gguf_source import GGUFSource  # noqa: E402
from solar_jax.checkpoint.gguf_writer import write_gguf  # noqa: E402
from solar_jax.demo import smollm2_gguf  # noqa: E402


# ---- the real model: SmolLM2-135M-Instruct from its GGUF, exported again -----------------

# Keys that legitimately differ from the original file when it is re-exported:
#   general.file_type  the encoding we chose (original Q4_1 = 3; ours MOSTLY_Q8_0 = 7).
# Everything else, general.* provenance included, is carried over with the same GGUF types.
SMOL_CHANGED = {"general.file_type"}
SMOL_TOKENIZER = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                  "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                  "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                  "tokenizer.chat_template", "tokenizer.ggml.model",
                  "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix")


@pytest.fixture(scope="module")
def smol():
    return GGUFSource(smollm2_gguf())


def _fields(reader) -> dict:
    return {k: (tuple(f.types), gguf_vocab.raw_field_value(f)) for k, f in reader.fields.items()
            if not k.startswith("GGUF.")}


@pytest.mark.slow
def test_smollm2_export_matches_original(tmp_path, smol):
    out = tmp_path / "smol.gguf"
    write_gguf(smol, out, quant="q8_0")
    orig, ours = _fields(smol._reader), _fields(gguf.GGUFReader(out))
    assert set(orig) == set(ours)
    for key in sorted(set(orig) - SMOL_CHANGED):
        assert ours[key] == orig[key], key
    assert ours["general.file_type"][1] == gguf.LlamaFileType.MOSTLY_Q8_0
    # tensors: same names and shapes; 1-D stay F32, 2-D are Q8_0
    o = {t.name: (t.shape.tolist(), t.tensor_type) for t in smol._reader.tensors}
    n = {t.name: (t.shape.tolist(), t.tensor_type) for t in gguf.GGUFReader(out).tensors}
    assert {k: v[0] for k, v in o.items()} == {k: v[0] for k, v in n.items()}
    assert all(t == (Q.F32 if len(s) == 1 else Q.Q8_0) for s, t in n.values())


@pytest.mark.slow
def test_smollm2_tokenizer_through_hf_files(tmp_path, smol):
    """The HF tokenizer files the import writes (what a checkpoint converted from this GGUF
    carries) give back the original tokenizer entries."""
    smol.copy_extras(tmp_path)
    ours = gguf_vocab.from_hf_dir(tmp_path, smol.config)
    for key in SMOL_TOKENIZER:
        field = smol._reader.fields[key]
        assert ours[key].type == field.types[0], key
        value = ours[key].value
        want = field.contents()
        assert value == want, key
    # The import rebuilds tokenizer.json with a plain ByteLevel pre-tokenizer (transformers'
    # GGUF converter drops SmolLM's individual-digit split), so from those files the
    # pre-tokenizer reads as GPT-2's; copied straight from the GGUF it stays "smollm".
    assert smol._reader.fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert ours["tokenizer.ggml.pre"].value == "gpt-2"
