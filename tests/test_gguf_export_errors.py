"""GGUF export's bad input: one line on stderr, exit 2, nothing written (and an old
destination kept when the export fails midway); save_model(format="gguf")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import solar_jax  # noqa: E402
from conftest import make_hf_model  # noqa: E402
from gguf_helpers import (VOCAB, export, gguf_logits, tiny,  # noqa: E402, F401
                          write_bpe_tokenizer)
from solar_jax.checkpoint.gguf_source import GGUFSource  # noqa: E402
from solar_jax.checkpoint.safetensors_io import SafetensorsFile  # noqa: E402
from solar_jax.checkpoint.opener import open_source  # noqa: E402
from solar_jax.cli import main  # noqa: E402


# ---- bad input: one line on stderr, exit 2, nothing written ----------------------------


def _no_leftovers(folder: Path, name: str) -> None:
    assert not list(folder.glob(f".{name}*")), list(folder.iterdir())


def _fails(capsys, argv, message) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    return err


def test_unknown_quant_type(tmp_path, capsys, tiny):
    _fails(capsys, ["convert", str(tiny), str(tmp_path / "o.gguf"), "--to", "gguf",
                    "--quant", "q3_k"], "unknown GGUF quant type 'q3_k'")
    assert not (tmp_path / "o.gguf").exists()
    _no_leftovers(tmp_path, "o.gguf")


def test_source_without_tokenizer(tmp_path, capsys):
    make_hf_model(tmp_path / "hf")
    out = tmp_path / "o.gguf"
    _fails(capsys, ["convert", str(tmp_path / "hf"), str(out), "--to", "gguf"], "--no-tokenizer")
    assert not out.exists()
    _no_leftovers(tmp_path, "o.gguf")
    assert main(["convert", str(tmp_path / "hf"), str(out), "--to", "gguf", "--no-tokenizer"]) == 0
    fields = gguf.GGUFReader(out).fields
    assert fields["tokenizer.ggml.model"].contents() == "none"
    assert not any(k.startswith("tokenizer.ggml.tokens") for k in fields)


def test_existing_destination_needs_overwrite(tmp_path, capsys, tiny):
    out = tmp_path / "o.gguf"
    out.write_text("mine")
    _fails(capsys, ["convert", str(tiny), str(out), "--to", "gguf"], "--overwrite")
    assert out.read_text() == "mine"
    assert main(["convert", str(tiny), str(out), "--to", "gguf", "--overwrite"]) == 0
    assert isinstance(open_source(out), GGUFSource)
    _no_leftovers(tmp_path, "o.gguf")


def test_failure_midway_keeps_old_destination(tmp_path, capsys):
    """A weight f16 cannot hold is found while writing data: the half-written file goes,
    the previous DST stays."""
    from safetensors.numpy import save_file
    make_hf_model(tmp_path / "hf", vocab_size=VOCAB)
    write_bpe_tokenizer(tmp_path / "hf")
    out = export(tmp_path / "hf", tmp_path / "o.gguf")
    before = out.read_bytes()
    st = SafetensorsFile(tmp_path / "hf" / "model.safetensors")
    tensors = {n: st.read(n) for n in st.names()}
    tensors["model.layers.2.mlp.down_proj.weight"][0, 0] = 1e6
    save_file(tensors, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    _fails(capsys, ["convert", str(tmp_path / "hf"), str(out), "--to", "gguf", "--overwrite"],
           "beyond float16's range")
    assert out.read_bytes() == before
    _no_leftovers(tmp_path, "o.gguf")
    assert main(["convert", str(tmp_path / "hf"), str(out), "--to", "gguf", "--overwrite",
                 "--quant", "bf16"]) == 0


@pytest.mark.parametrize("dst,argv,message", [
    ("o.gguf", ["--to", "gguf", "--dtype", "bf16"], "--quant"),
    ("o", ["--quant", "q8_0"], "apply to --to gguf only"),
    ("o", ["--no-tokenizer", "--to", "hf"], "apply to --to gguf only"),
    ("o.gguf", [], "pass --to gguf"),
])
def test_option_mismatch(tmp_path, capsys, tiny, dst, argv, message):
    _fails(capsys, ["convert", str(tiny), str(tmp_path / dst), *argv], message)
    assert not (tmp_path / dst).exists()


def test_gguf_output_needs_gguf_suffix(tmp_path, capsys, tiny):
    _fails(capsys, ["convert", str(tiny), str(tmp_path / "out"), "--to", "gguf"], ".gguf")
    assert not (tmp_path / "out").exists()


def test_save_model_as_gguf(tmp_path, tiny):
    model = solar_jax.load_model(tiny)
    out = solar_jax.save_model(model, tmp_path / "m.gguf", format="gguf", quant="f32")
    np.testing.assert_array_equal(gguf_logits(out), gguf_logits(tiny))
    assert gguf.GGUFReader(out).fields["tokenizer.ggml.model"].contents() == "gpt2"
