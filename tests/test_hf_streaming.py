"""The HF writer's fast paths: stored bytes copied file to file (HF -> HF up-scale and
convert) and layer-by-layer streaming (no stacked leaf held). Each is checked against the
decoded path, which is forced by switching the fast path off, and by reading what was read."""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from conftest import hf_tensors, make_hf_model
from solar_jax.api import load_model
from solar_jax.checkpoint import safetensors_io, solar_format, sources
from solar_jax.checkpoint.opener import open_source
from solar_jax.checkpoint.safetensors_io import SafetensorsFile
from solar_jax.cli import main
from solar_jax.tree_paths import get_leaf

SMALL = dict(hidden_size=32, intermediate_size=48, vocab_size=64, num_attention_heads=4,
             num_key_value_heads=2)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    make_hf_model(root / "a8", num_hidden_layers=8, seed=0, dtype=torch.bfloat16,
                  max_shard_size="40KB", **SMALL)
    return root / "a8"


def _files(folder):
    return {f.name: f.read_bytes() for f in sorted(folder.glob("*.safetensors"))}



def _upscale(src, dst, *extra):
    assert main(["upscale", str(src), str(dst), "--m", "2", "--to", "hf",
                 "--max-shard-size", "60KB", *extra]) == 0


def test_byte_copied_upscale_equals_the_decoded_path_and_loads(src, tmp_path, monkeypatch):
    copies = []
    real_copy = safetensors_io.copy_range
    monkeypatch.setattr(safetensors_io, "copy_range",
                        lambda item, out: (copies.append(item), real_copy(item, out)))
    _upscale(src, tmp_path / "copied")
    assert copies, "the byte-copy path was not taken"
    n_out = len(hf_tensors(tmp_path / "copied"))
    assert len(copies) == n_out  # bf16 -> bf16 passthrough: every tensor is a copy

    monkeypatch.setattr(sources.HFSource, "stored_tensor", lambda self, *a: None)
    copies.clear()
    _upscale(src, tmp_path / "decoded")
    assert not copies
    assert _files(tmp_path / "copied") == _files(tmp_path / "decoded")  # file for file, bitwise
    assert (tmp_path / "copied" / "model.safetensors.index.json").read_text() == \
        (tmp_path / "decoded" / "model.safetensors.index.json").read_text()

    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "copied",
                                                       output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.num_hidden_layers == 12 and model.dtype == torch.bfloat16
    ref = hf_tensors(src)
    out = hf_tensors(tmp_path / "copied")
    for k, orig in enumerate([*range(6), *range(2, 8)]):  # n=8, m=2: [0, 6) + [2, 8)
        name = "model.layers.{}.mlp.down_proj.weight"
        assert out[name.format(k)].tobytes() == ref[name.format(orig)].tobytes()


def test_dtype_change_decodes_and_streams_layer_by_layer(src, tmp_path, monkeypatch):
    reads = []
    real_read = sources.NamedTensorSource.read_leaf

    def spy(self, path, layers=None):
        reads.append((path, None if layers is None else len(list(layers))))
        return real_read(self, path, layers)

    monkeypatch.setattr(sources.NamedTensorSource, "read_leaf", spy)
    copies = []
    monkeypatch.setattr(safetensors_io, "copy_range", lambda item, out: copies.append(item))
    recipe = {"merge_method": "passthrough", "dtype": "float32", "slices": [
        {"sources": [{"model": str(src), "layer_range": [0, 5]}]},
        {"sources": [{"model": str(src), "layer_range": [3, 8]}]}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["upscale", str(src), str(tmp_path / "f32"), "--recipe",
                 str(tmp_path / "r.yaml"), "--to", "hf"]) == 0
    assert not copies  # a cast is no byte copy
    stacked = [n for p, n in reads if p[0] == "layers"]
    assert stacked and all(n == 1 for n in stacked), "a stacked leaf was read whole"
    ref, out = hf_tensors(src), hf_tensors(tmp_path / "f32")
    for k, orig in enumerate([*range(5), *range(3, 8)]):
        name = "model.layers.{}.self_attn.q_proj.weight"
        assert out[name.format(k)].dtype == np.float32
        np.testing.assert_array_equal(out[name.format(k)],
                                      ref[name.format(orig)].astype(np.float32))


def test_hf_to_hf_convert_is_a_byte_copy(src, tmp_path, monkeypatch):
    copies = []
    real_copy = safetensors_io.copy_range
    monkeypatch.setattr(safetensors_io, "copy_range",
                        lambda item, out: (copies.append(item), real_copy(item, out)))
    assert main(["convert", str(src), str(tmp_path / "hf"), "--to", "hf"]) == 0
    ref, out = hf_tensors(src), hf_tensors(tmp_path / "hf")
    assert len(copies) == len(ref)
    assert sorted(ref) == sorted(out)
    for name in ref:
        assert ref[name].tobytes() == out[name].tobytes(), name


def test_copy_range_falls_back_without_copy_file_range(src, tmp_path, monkeypatch):
    st = SafetensorsFile(next(src.glob("*.safetensors")))
    name = st.names()[0]
    stored = st.stored(name)

    def refuse(*args):
        raise OSError("EXDEV")

    monkeypatch.setattr(safetensors_io.os, "copy_file_range", refuse)
    out = tmp_path / "bytes"
    with open(out, "wb") as f:
        f.write(b"head")
        safetensors_io.copy_range(stored, f)
        f.write(b"tail")
    assert out.read_bytes() == b"head" + st.read(name).tobytes() + b"tail"


def test_solar_checkpoint_is_layer_chunked_round_trips_and_loads(src, tmp_path, monkeypatch):
    monkeypatch.setattr(solar_format.LeafWriter, "layer_chunks", True)
    assert main(["convert", str(src), str(tmp_path / "sj")]) == 0
    solar = open_source(tmp_path / "sj")
    assert solar.layer_reads
    for path, store in solar._layer_stores.items():
        assert store.chunk_layout.read_chunk.shape[0] == 1, path

    whole = []
    real_read = solar_format.SolarSource.read_leaf

    def spy(self, path, layers=None):
        if layers is None:
            whole.append(tuple(path))
        return real_read(self, path, layers)

    monkeypatch.setattr(solar_format.SolarSource, "read_leaf", spy)
    assert main(["convert", str(tmp_path / "sj"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert whole and all(p[0] != "layers" for p in whole), whole  # layers read one by one
    ref, out = hf_tensors(src), hf_tensors(tmp_path / "hf")
    assert sorted(ref) == sorted(out)
    for name in ref:
        assert ref[name].tobytes() == out[name].tobytes(), name

    # orbax still restores the checkpoint whole (training, load_model), bit for bit
    tree = ocp.PyTreeCheckpointer().restore(tmp_path / "sj" / "params" / "state")
    model = load_model(tmp_path / "sj")
    layer = get_leaf(tree, ("layers", "mlp", "down_proj", "kernel"))
    assert layer.shape[0] == 8
    np.testing.assert_array_equal(
        np.asarray(jax.device_get(get_leaf(model.params, ("layers", "mlp", "down_proj",
                                                                   "kernel")))).view(np.uint16),
        np.asarray(layer).view(np.uint16))
    down = ref["model.layers.3.mlp.down_proj.weight"]
    assert np.asarray(layer[3]).T.tobytes() == down.tobytes()


def test_unchunked_solar_checkpoint_is_read_leaf_by_leaf(src, tmp_path):
    assert main(["convert", str(src), str(tmp_path / "sj")]) == 0  # the default layout
    assert not open_source(tmp_path / "sj").layer_reads
    assert main(["upscale", str(tmp_path / "sj"), str(tmp_path / "up"), "--m", "2",
                 "--to", "hf"]) == 0
    ref, out = hf_tensors(src), hf_tensors(tmp_path / "up")
    for k, orig in enumerate([*range(6), *range(2, 8)]):
        name = "model.layers.{}.self_attn.o_proj.weight"
        assert out[name.format(k)].tobytes() == ref[name.format(orig)].tobytes()
