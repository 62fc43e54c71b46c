"""solar-jax checkpoints written and read with tensorstore in orbax's layout
(solar_jax.checkpoint.orbax_layout): orbax restores what the converter writes, bit for bit,
the converter reads what orbax writes, and a conversion imports neither orbax nor jax."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch

from conftest import hf_tensors, make_hf_model
from solar_jax.checkpoint import orbax_layout, solar_format
from solar_jax.checkpoint.opener import open_source
from solar_jax.checkpoint.output import convert
from solar_jax.cli import main
from solar_jax.orbax_util import quiet_orbax
from solar_jax.tree_paths import get_leaf

SMALL = dict(hidden_size=32, intermediate_size=48, vocab_size=64, num_attention_heads=4,
             num_key_value_heads=2)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout")
    make_hf_model(root / "hf", num_hidden_layers=4, seed=1, dtype=torch.bfloat16,
                  max_shard_size="40KB", **SMALL)
    return root / "hf"


def _leaves(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, (*prefix, key))
    else:
        yield prefix, np.asarray(tree)


def test_orbax_restores_the_direct_checkpoint_bitwise(src, tmp_path):
    convert(src, tmp_path / "sj")
    source = open_source(tmp_path / "sj")
    assert source._stores, "the tensorstore reader was not used"
    with quiet_orbax():
        tree = ocp.PyTreeCheckpointer().restore(tmp_path / "sj" / "params" / "state")
        meta = ocp.PyTreeCheckpointer().metadata(tmp_path / "sj" / "params" / "state")
    restored = dict(_leaves(tree))
    assert sorted(restored) == sorted(source.leaf_paths())
    for path, array in restored.items():
        assert (array.shape, array.dtype) == source.leaf_spec(path), path
        assert array.tobytes() == source.read_leaf(path).tobytes(), path
    layer = get_leaf(tree, ("layers", "mlp", "down_proj", "kernel"))
    assert layer[2].T.tobytes() == hf_tensors(src)["model.layers.2.mlp.down_proj.weight"].tobytes()
    shapes = {p: tuple(m.shape) for p, m in _leaves_meta(meta.item_metadata.tree)}
    assert shapes == {p: a.shape for p, a in restored.items()}


def _leaves_meta(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves_meta(value, (*prefix, key))
    else:
        yield prefix, tree


def test_orbax_written_checkpoint_is_read_the_same(src, tmp_path, monkeypatch):
    convert(src, tmp_path / "direct")
    monkeypatch.setattr(solar_format.LeafWriter, "layer_chunks", True)  # orbax's partial save
    convert(src, tmp_path / "orbax")
    a, b = open_source(tmp_path / "direct"), open_source(tmp_path / "orbax")
    assert b._stores and b.layer_reads and not a.layer_reads
    for path in a.leaf_paths():
        assert a.leaf_spec(path) == b.leaf_spec(path)
        assert a.read_leaf(path).tobytes() == b.read_leaf(path).tobytes(), path
        if path[0] == "layers":
            assert a.read_leaf(path, layers=[3, 1]).tobytes() == \
                b.read_leaf(path, layers=[3, 1]).tobytes(), path


def test_unknown_metadata_is_left_to_orbax(src, tmp_path, monkeypatch):
    convert(src, tmp_path / "sj")
    state = tmp_path / "sj" / "params" / "state"
    assert orbax_layout.open_leaves(state) is not None
    meta = json.loads((state / "_METADATA").read_text())
    meta["tree_metadata"] = {k: {"unexpected": 1} for k in meta["tree_metadata"]}
    (state / "_METADATA").write_text(json.dumps(meta))
    assert orbax_layout.open_leaves(state) is None
    calls = []
    real = solar_format.SolarSource._read_specs
    monkeypatch.setattr(solar_format.SolarSource, "_read_specs",
                        lambda self: (calls.append(1), real(self))[1])
    with pytest.raises(Exception):  # orbax itself cannot read that metadata either
        open_source(tmp_path / "sj")
    assert calls, "orbax was not asked"


def test_conversion_imports_neither_orbax_nor_jax(src, tmp_path):
    # Through the CLI, as users run it: the parser, the compile-cache set-up and the
    # command must all stay off jax (~2 s of start-up per conversion process).
    code = ("import os, sys; from solar_jax.cli import main; "
            "os.environ.pop('SOLAR_JAX_COMPILE_CACHE', None); "
            f"os.environ['XDG_CACHE_HOME'] = {str(tmp_path / 'cache')!r}; "
            f"assert main(['convert', {str(src)!r}, {str(tmp_path / 'sj')!r}]) == 0; "
            f"assert main(['convert', {str(tmp_path / 'sj')!r}, {str(tmp_path / 'hf')!r}, "
            "'--to', 'hf']) == 0; "
            "bad = [m for m in ('jax', 'orbax.checkpoint', 'flax') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    ref, out = hf_tensors(src), hf_tensors(tmp_path / "hf")
    assert sorted(ref) == sorted(out)
    for name in ref:
        assert ref[name].tobytes() == out[name].tobytes(), name



def test_a_float64_checkpoint_needs_dtype(tmp_path, capsys):
    # A solar-jax checkpoint stores fp32, fp16 or bf16 leaves: an F64 source is refused in
    # one line before anything is written, and converts with --dtype.
    make_hf_model(tmp_path / "hf64", num_hidden_layers=2, seed=3, dtype=torch.float64, **SMALL)
    capsys.readouterr()  # transformers' save progress
    assert main(["convert", str(tmp_path / "hf64"), str(tmp_path / "sj")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unsupported weight dtype float64" in err[0], err
    assert not (tmp_path / "sj").exists()
    assert main(["convert", str(tmp_path / "hf64"), str(tmp_path / "sj"), "--dtype", "fp32"]) == 0
    ref, source = hf_tensors(tmp_path / "hf64"), open_source(tmp_path / "sj")
    kernel = source.read_leaf(("layers", "mlp", "up_proj", "kernel"))
    assert kernel.dtype == np.float32
    np.testing.assert_array_equal(kernel[1].T, ref["model.layers.1.mlp.up_proj.weight"].astype(np.float32))
