"""Depth up-scaling: SOLAR's recipe, mergekit passthrough recipes, jit, and bad input.

References are built straight from the source safetensors (numpy) or from transformers,
never from solar-jax's own readers.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

import solar_jax
from conftest import make_hf_model, torch_logits
from solar_jax.checkpoint.opener import open_source
from solar_jax.cli import main
from solar_jax.dus import solar_ranges, upscale

SMALL = dict(hidden_size=32, intermediate_size=48, vocab_size=64, num_attention_heads=4,
             num_key_value_heads=2)
RTOL = 1e-4  # max |Δlogit| <= RTOL * max |logit|


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("dus")
    torch32 = make_hf_model(root / "a32", num_hidden_layers=32, seed=0, **SMALL)
    make_hf_model(root / "b6", num_hidden_layers=6, seed=1, **SMALL)
    make_hf_model(root / "wide", num_hidden_layers=4, seed=2, **{**SMALL, "hidden_size": 48})
    make_hf_model(root / "vocab", num_hidden_layers=4, seed=3, **{**SMALL, "vocab_size": 80})
    return root, torch32


@pytest.fixture(scope="module")
def solar48(models):
    root, _ = models
    assert main(["upscale", str(root / "a32"), str(root / "up48"), "--m", "8"]) == 0
    assert main(["upscale", str(root / "a32"), str(root / "up48hf"), "--m", "8", "--to", "hf"]) == 0
    return root / "up48", root / "up48hf"


def _hf(path):
    return load_file(str(path / "model.safetensors"))


def test_solar_recipe_layer_k_is_original_k_then_k_minus_16(models, solar48):
    root, _ = models
    src, out = _hf(root / "a32"), _hf(solar48[1])
    assert open_source(solar48[0]).config.num_layers == 48
    for name, ref in src.items():
        if ".layers." not in name:
            np.testing.assert_array_equal(out[name], ref)  # base's ends, unchanged
    for k in range(48):
        orig = k if k < 24 else k - 16
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                     "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
                     "input_layernorm", "post_attention_layernorm"):
            np.testing.assert_array_equal(out[f"model.layers.{k}.{name}.weight"],
                                          src[f"model.layers.{orig}.{name}.weight"])
    assert len(out) == len(src) + 16 * 9


def test_upscaled_logits_match_transformers(models, solar48):
    import torch
    from transformers import LlamaForCausalLM

    root, torch32 = models
    ids = np.random.default_rng(0).integers(0, 64, (2, 16))
    ours = np.asarray(solar_jax.load_model(solar48[0])(ids))
    exported = LlamaForCausalLM.from_pretrained(str(solar48[1]), torch_dtype=torch.float32)
    assert exported.config.num_hidden_layers == 48
    theirs = torch_logits(exported.eval(), ids)
    assert np.abs(ours - theirs).max() <= RTOL * np.abs(theirs).max()
    # And independently of our export: the same layers re-stacked inside torch.
    layers = torch32.model.layers
    torch32.model.layers = torch.nn.ModuleList([layers[k] for k in [*range(24), *range(8, 32)]])
    torch32.config.num_hidden_layers = 48
    with torch.no_grad():  # no KV cache: repeated layers share their layer_idx
        stacked = torch32(torch.as_tensor(ids), use_cache=False).logits.numpy()
    torch32.model.layers = layers
    torch32.config.num_hidden_layers = 32
    np.testing.assert_allclose(theirs, stacked, rtol=0, atol=RTOL * np.abs(stacked).max())


def test_multi_slice_recipe_with_repeats_equals_numpy_reference(models, tmp_path):
    root, _ = models
    recipe = {"merge_method": "passthrough", "dtype": "float32", "slices": [
        {"sources": [{"model": str(root / "a32"), "layer_range": [0, 3]}]},
        {"sources": [{"model": str(root / "b6"), "layer_range": [2, 5]}]},
        {"sources": [{"model": str(root / "a32"), "layer_range": [1, 3]}]},  # repeats 1, 2
        {"sources": [{"layer_range": [30, 32]}]},                            # SRC by default
        {"sources": [{"model": str(root / "b6"), "layer_range": [2, 3]}]},
    ]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["upscale", str(root / "a32"), str(tmp_path / "out"), "--recipe",
                 str(tmp_path / "r.yaml"), "--to", "hf"]) == 0
    a, b, out = _hf(root / "a32"), _hf(root / "b6"), _hf(tmp_path / "out")
    order = ([(a, i) for i in range(3)] + [(b, i) for i in range(2, 5)]
             + [(a, 1), (a, 2), (a, 30), (a, 31), (b, 2)])
    ref = {n: v for n, v in a.items() if ".layers." not in n}
    for k, (src, i) in enumerate(order):
        for n, v in src.items():
            if n.startswith(f"model.layers.{i}."):
                ref[n.replace(f"model.layers.{i}.", f"model.layers.{k}.")] = v
    assert sorted(out) == sorted(ref)
    for n in ref:
        np.testing.assert_array_equal(out[n], ref[n], err_msg=n)


def test_upscale_reads_a_solar_jax_checkpoint(models, solar48, tmp_path):
    root, _ = models
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({
        "merge_method": "passthrough",
        "slices": [{"sources": [{"layer_range": [0, 2]}]}, {"sources": [{"layer_range": [46, 48]}]}]}))
    assert main(["upscale", str(solar48[0]), str(tmp_path / "o"), "--recipe",
                 str(tmp_path / "r.yaml"), "--to", "hf"]) == 0
    a, out = _hf(root / "a32"), _hf(tmp_path / "o")
    for k, orig in enumerate([0, 1, 30, 31]):
        np.testing.assert_array_equal(out[f"model.layers.{k}.mlp.down_proj.weight"],
                                      a[f"model.layers.{orig}.mlp.down_proj.weight"])
    np.testing.assert_array_equal(out["lm_head.weight"], a["lm_head.weight"])


def test_passthrough_scale_with_filter(models, tmp_path):
    root, _ = models
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({
        "merge_method": "passthrough",
        "slices": [{"sources": [{"layer_range": [0, 2]}]},
                   {"sources": [{"layer_range": [0, 2]}],
                    "parameters": {"scale": [{"filter": "o_proj", "value": 0.0},
                                             {"filter": "down_proj", "value": 0.0},
                                             {"value": 1.0}]}}]}))
    assert main(["upscale", str(root / "a32"), str(tmp_path / "o"), "--recipe",
                 str(tmp_path / "r.yaml"), "--to", "hf"]) == 0
    a, out = _hf(root / "a32"), _hf(tmp_path / "o")
    for k, orig in enumerate([0, 1, 0, 1]):
        for n in ("self_attn.o_proj", "mlp.down_proj", "mlp.up_proj"):
            want = a[f"model.layers.{orig}.{n}.weight"]
            if k >= 2 and n != "mlp.up_proj":  # LLaMA-Pro style identity blocks
                want = np.zeros_like(want)
            np.testing.assert_array_equal(out[f"model.layers.{k}.{n}.weight"], want)


def test_upscale_is_pure_and_jittable():
    config = solar_jax.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                   num_layers=6, num_heads=4, num_kv_heads=2)
    rng = np.random.default_rng(0)  # random leaves of the right shapes, no model compile
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype),
                          solar_jax.abstract_params(config))
    ranges = solar_ranges(6, 2)
    eager, cfg = upscale(params, config, ranges)
    jitted = jax.jit(lambda p: upscale(p, config, ranges)[0])(params)
    assert cfg.num_layers == 8 and config.num_layers == 6
    idx = [0, 1, 2, 3, 2, 3, 4, 5]
    for leaf, e, j in zip(jax.tree.leaves(params["layers"]), jax.tree.leaves(eager["layers"]),
                          jax.tree.leaves(jitted["layers"])):
        np.testing.assert_array_equal(np.asarray(e), np.asarray(leaf)[idx])
        np.testing.assert_array_equal(np.asarray(j), np.asarray(e))
    assert eager["embed"] is params["embed"]
    assert jax.tree.structure(jitted) == jax.tree.structure(solar_jax.abstract_params(cfg))


def _recipe(tmp_path, slices, method="passthrough"):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"merge_method": method, "slices": slices}))
    return str(path)


BAD = {
    "past-last-layer": (lambda r, t: ["--recipe", _recipe(t, [{"sources": [{"layer_range": [20, 33]}]}])],
                        "slice 1 source 1"),
    "empty-range": (lambda r, t: ["--recipe", _recipe(t, [{"sources": [{"layer_range": [3, 3]}]}])],
                    "layer_range [3, 3]"),
    "no-slices": (lambda r, t: ["--recipe", _recipe(t, [])], "slices"),
    "hidden-size": (lambda r, t: ["--recipe", _recipe(t, [
        {"sources": [{"layer_range": [0, 2]}]},
        {"sources": [{"model": str(r / "wide"), "layer_range": [0, 2]}]}])], "hidden_size"),
    "vocab-size": (lambda r, t: ["--recipe", _recipe(t, [
        {"sources": [{"model": str(r / "vocab"), "layer_range": [0, 2]}]},
        {"sources": [{"layer_range": [0, 2]}]}])], "vocab_size"),
    "unknown-method": (lambda r, t: ["--recipe", _recipe(t, [{"sources": [{"layer_range": [0, 2]}]}],
                                                          "frankenstein")], "frankenstein"),
    "linear-for-upscale": (lambda r, t: ["--recipe", _recipe(t, [{"sources": [{"layer_range": [0, 2]}]}],
                                                              "linear")], "passthrough"),
    "m-too-big": (lambda r, t: ["--m", "32"], "m=32"),
    "negative-m": (lambda r, t: ["--m", "-1"], "non-negative"),
    "no-recipe": (lambda r, t: [], "--m"),
    "missing-model": (lambda r, t: ["--recipe", _recipe(t, [
        {"sources": [{"model": str(t / "nope"), "layer_range": [0, 2]}]}])], "does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipes_are_one_line_errors_and_write_nothing(case, models, tmp_path, capsys):
    root, _ = models
    make_args, needle = BAD[case]
    dst = tmp_path / "dst"
    code = main(["upscale", str(root / "a32"), str(dst), *make_args(root, tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not dst.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dst")]


def test_refuses_non_empty_destination(models, tmp_path, capsys):
    root, _ = models
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep.txt").write_text("mine")
    assert main(["upscale", str(root / "a32"), str(tmp_path / "dst"), "--m", "8"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "dst").iterdir()] == ["keep.txt"]
