"""HF -> solar-jax -> HF round trips, and every bad input as a one-line error."""

import json
import subprocess
import sys

import numpy as np
import pytest

import solar_jax
from conftest import hf_tensors, make_hf_model
from solar_jax.cli import main



@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip_is_bit_identical(tmp_path, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    make_hf_model(tmp_path / "hf", dtype=getattr(torch, dtype))
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "sj")]) == 0
    assert main(["convert", str(tmp_path / "sj"), str(tmp_path / "out"), "--to", "hf",
                 "--max-shard-size", "50KB"]) == 0
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    src, out = hf_tensors(tmp_path / "hf"), hf_tensors(tmp_path / "out")
    assert set(src) == set(out)
    for name in src:
        assert src[name].dtype == out[name].dtype, name
        assert src[name].tobytes() == out[name].tobytes(), name
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.dtype == getattr(torch, dtype)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == dtype
    assert (tmp_path / "out" / "generation_config.json").is_file()


def test_dtype_option_and_tied_export(tmp_path):
    make_hf_model(tmp_path / "hf", tie_word_embeddings=True)
    solar_jax.convert(tmp_path / "hf", tmp_path / "sj", dtype="bf16")
    model = solar_jax.load_model(tmp_path / "sj")
    assert str(model.params["embed"]["embedding"].dtype) == "bfloat16"
    assert "lm_head" not in model.params
    solar_jax.save_model(model, tmp_path / "out", format="hf", dtype="fp32")
    tensors = hf_tensors(tmp_path / "out")
    assert "lm_head.weight" not in tensors
    ref = hf_tensors(tmp_path / "hf")["model.embed_tokens.weight"]
    import ml_dtypes
    np.testing.assert_array_equal(tensors["model.embed_tokens.weight"],
                                  ref.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_tokenizer_files_are_copied(tmp_path):
    make_hf_model(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")
    solar_jax.convert(tmp_path / "hf", tmp_path / "sj")
    solar_jax.convert(tmp_path / "sj", tmp_path / "out", to="hf")
    assert (tmp_path / "out" / "tokenizer.json").read_text() == "{}"


# ---- bad input: one line on stderr, exit 2, nothing at DST -----------------------------

def _break_missing_config(src):
    (src / "config.json").unlink()


def _break_model_type(src):
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt_neox"}))


def _rewrite_without(src, drop=None, reshape=None):
    from safetensors.numpy import save_file
    tensors = hf_tensors(src)
    if drop:
        del tensors[drop]
    if reshape:
        tensors[reshape] = tensors[reshape][:-1]
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})


def _break_truncated(src):
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])


def _break_index(src):
    weights = hf_tensors(src)
    (src / "model.safetensors").rename(src / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {n: "model-00001-of-00002.safetensors" for n in weights}}
    index["weight_map"]["lm_head.weight"] = "model-00002-of-00002.safetensors"
    (src / "model.safetensors.index.json").write_text(json.dumps(index))


def _break_pickle(src):
    (src / "model.safetensors").unlink()
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")


BREAKS = {
    "missing config.json": (_break_missing_config, "config.json"),
    "unknown model_type": (_break_model_type, "model_type"),
    "tensor missing": (lambda s: _rewrite_without(s, drop="model.layers.1.mlp.up_proj.weight"),
                       "model.layers.1.mlp.up_proj.weight is missing"),
    "wrong shape": (lambda s: _rewrite_without(s, reshape="model.layers.0.self_attn.k_proj.weight"),
                    "model.layers.0.self_attn.k_proj.weight has shape"),
    "truncated safetensors": (_break_truncated, "truncated"),
    "index names missing shard": (_break_index, "does not exist"),
    ".bin checkpoint": (_break_pickle, "pickle"),
}


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_bad_source_is_one_line_error(tmp_path, capsys, case):
    breaker, message = BREAKS[case]
    make_hf_model(tmp_path / "hf")
    breaker(tmp_path / "hf")
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not (tmp_path / "dst").exists()
    assert not list(tmp_path.glob(".dst*"))


def test_missing_source_and_bin_file(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope"), str(tmp_path / "dst")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "model.bin").write_bytes(b"x")
    assert main(["convert", str(tmp_path / "model.bin"), str(tmp_path / "dst")]) == 2
    assert "pickle" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()


def test_non_empty_destination_needs_overwrite(tmp_path, capsys):
    make_hf_model(tmp_path / "hf")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "dst")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "dst" / "keep.txt").read_text() == "mine"
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "dst"), "--overwrite"]) == 0
    assert not (tmp_path / "dst" / "keep.txt").exists()
    solar_jax.load_model(tmp_path / "dst")


def test_failed_overwrite_keeps_old_destination(tmp_path):
    make_hf_model(tmp_path / "hf")
    solar_jax.convert(tmp_path / "hf", tmp_path / "dst")
    _break_truncated(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "dst"), "--overwrite"]) == 2
    solar_jax.load_model(tmp_path / "dst")  # the previous checkpoint is intact


def test_unstacked_solar_checkpoint_is_explained(tmp_path, capsys):
    make_hf_model(tmp_path / "hf")
    solar_jax.convert(tmp_path / "hf", tmp_path / "sj")
    meta = json.loads((tmp_path / "sj" / "solar_config.json").read_text())
    meta["layout"] = "unscanned"
    (tmp_path / "sj" / "solar_config.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "sj"), str(tmp_path / "out"), "--to", "hf"]) == 2
    assert "layout" in capsys.readouterr().err


def test_cli_subprocess_exit_code(tmp_path):
    result = subprocess.run([sys.executable, "-m", "solar_jax.cli", "convert",
                             str(tmp_path / "missing"), str(tmp_path / "dst")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr


def test_runtime_never_imports_torch(tmp_path):
    make_hf_model(tmp_path / "hf")
    code = (f"import sys, solar_jax; solar_jax.convert({str(tmp_path / 'hf')!r}, "
            f"{str(tmp_path / 'sj')!r}); m = solar_jax.load_model({str(tmp_path / 'sj')!r}); "
            f"m([[1, 2, 3]]); solar_jax.save_model(m, {str(tmp_path / 'out')!r}, format='hf'); "
            f"assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("budget, most_held", [(0, 0), (1 << 40, 1)])
def test_next_leaf_is_read_meanwhile_only_within_the_budget(tmp_path, monkeypatch, budget,
                                                            most_held):
    """writers.PREFETCH_BYTES: leaf k+1 is read while leaf k is written only where the two
    fit in the budget, so at most two leaves are ever held; beyond it, one at a time.
    "Held" = read and not yet written: counted when each read starts, with every write
    slowed down so that a read-ahead, where there is one, starts during it."""
    import time

    import torch

    from solar_jax.checkpoint import writers
    from solar_jax.checkpoint.opener import open_source

    make_hf_model(tmp_path / "hf", dtype=torch.float32)
    source = open_source(tmp_path / "hf")
    held, seen = set(), []
    read, add = source.read_leaf, writers.LeafWriter.add

    def counting_read(path, layers=None):
        seen.append(len(held))
        array = read(path, layers)
        held.add(tuple(path))
        return array

    def slow_add(self, path, array):
        time.sleep(0.05)
        add(self, path, array)
        held.discard(tuple(path))

    monkeypatch.setattr(source, "read_leaf", counting_read)
    monkeypatch.setattr(writers.LeafWriter, "add", slow_add)
    monkeypatch.setattr(writers, "PREFETCH_BYTES", budget)
    writers.write_solar(source, tmp_path / "sj")
    assert len(seen) == len(source.leaf_paths()) and max(seen) == most_held, seen
    assert not held
    assert main(["convert", str(tmp_path / "sj"), str(tmp_path / "out"), "--to", "hf"]) == 0
    src, out = hf_tensors(tmp_path / "hf"), hf_tensors(tmp_path / "out")
    assert all(src[name].tobytes() == out[name].tobytes() for name in src)
