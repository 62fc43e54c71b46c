"""Merging: linear, slerp and task_arithmetic against their formulas, identities, mergekit
recipe semantics, and bad input. Reference formulas are written here independently, in
float64, and applied to tensors read straight from the source safetensors."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

import solar_jax
from conftest import make_hf_model
from solar_jax import merge
from solar_jax.cli import main
from solar_jax.merge import merge_params

TOL = dict(rtol=2e-5, atol=2e-6)  # fp32 arithmetic vs float64 references


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    for name, seed, extra in (("a", 0, {}), ("b", 1, {}), ("c", 2, {}),
                              ("wide", 3, {"hidden_size": 32}), ("vocab", 4, {"vocab_size": 96}),
                              ("deep", 5, {"num_hidden_layers": 4})):
        make_hf_model(root / name, seed=seed, **extra)
    return root


def _hf(path):
    return {k: v.astype(np.float64) for k, v in load_file(str(path / "model.safetensors")).items()}


def _merge(root, tmp_path, *args):
    dst = tmp_path / "out"
    assert main(["merge", *[str(root / m) if m in "abc" else m for m in args],
                 "--out", str(dst), "--to", "hf"]) == 0
    return load_file(str(dst / "model.safetensors"))


def ref_linear(xs, ws):
    return sum(w * x for w, x in zip(ws, xs)) / sum(ws)


def ref_slerp(a, b, t):
    cos = np.vdot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
    if abs(cos) > 0.9995:
        return (1 - t) * a + t * b
    theta = np.arccos(cos)
    return (np.sin((1 - t) * theta) * a + np.sin(t * theta) * b) / np.sin(theta)


def ref_task(base, xs, ws):
    return base + sum(w * (x - base) for w, x in zip(ws, xs))


def test_linear_matches_formula(root, tmp_path):
    out = _merge(root, tmp_path, "a", "b", "c", "--method", "linear", "--weights", "0.2", "0.5", "0.8")
    a, b, c = _hf(root / "a"), _hf(root / "b"), _hf(root / "c")
    assert sorted(out) == sorted(a)
    for n in a:
        np.testing.assert_allclose(out[n], ref_linear([a[n], b[n], c[n]], [0.2, 0.5, 0.8]),
                                   err_msg=n, **TOL)


def test_slerp_matches_formula_per_tensor(root, tmp_path):
    out = _merge(root, tmp_path, "a", "b", "--method", "slerp", "--t", "0.3")
    a, b = _hf(root / "a"), _hf(root / "b")
    for n in a:
        np.testing.assert_allclose(out[n], ref_slerp(a[n], b[n], 0.3), err_msg=n, **TOL)


def test_task_arithmetic_matches_formula(root, tmp_path):
    out = _merge(root, tmp_path, "b", "c", "--method", "task_arithmetic", "--base",
                 str(root / "a"), "--weights", "0.7", "-0.4")
    a, b, c = _hf(root / "a"), _hf(root / "b"), _hf(root / "c")
    for n in a:
        np.testing.assert_allclose(out[n], ref_task(a[n], [b[n], c[n]], [0.7, -0.4]),
                                   err_msg=n, **TOL)


def test_array_functions():
    rng = np.random.default_rng(0)
    x, y, z = (rng.standard_normal((5, 7)).astype(np.float32) for _ in range(3))
    np.testing.assert_allclose(merge.linear([x, y], [1, 3]), ref_linear([x, y], [1, 3]), **TOL)
    np.testing.assert_allclose(merge.linear([x, y], [1, 3], normalize=False), x + 3 * y, **TOL)
    np.testing.assert_allclose(merge.slerp(x, y, 0.7), ref_slerp(x, y, 0.7), **TOL)
    np.testing.assert_allclose(merge.slerp(x, 2 * x, 0.25), 1.25 * x, **TOL)  # colinear: lerp
    np.testing.assert_allclose(merge.slerp(x, -x, 0.25), 0.5 * x, **TOL)
    np.testing.assert_allclose(merge.task_arithmetic(x, [y, z], [0.5, 2.0]),
                               ref_task(x, [y, z], [0.5, 2.0]), **TOL)
    np.testing.assert_allclose(merge.task_arithmetic(x, [y, z], [1.0, 3.0], normalize=True),
                               x + (y - x + 3 * (z - x)) / 4, **TOL)


@pytest.mark.parametrize("args", [["--method", "linear"], ["--method", "slerp", "--t", "0.3"],
                                  ["--method", "task_arithmetic", "--base", "a"]])
def test_merging_a_model_with_itself_returns_it(root, tmp_path, args):
    args = [str(root / "a") if x == "a" else x for x in args]
    out = _merge(root, tmp_path, "a", "a", *args)
    a = load_file(str(root / "a" / "model.safetensors"))
    for n in a:
        np.testing.assert_allclose(out[n], a[n], rtol=1e-6, atol=0, err_msg=n)
        if "slerp" not in args:
            np.testing.assert_array_equal(out[n], a[n])


def test_weights_one_zero_return_the_first(root, tmp_path):
    out = _merge(root, tmp_path, "a", "b", "--method", "linear", "--weights", "1", "0")
    a = load_file(str(root / "a" / "model.safetensors"))
    for n in a:
        np.testing.assert_array_equal(out[n], a[n])


def test_merge_params_api_equals_files(root, tmp_path):
    main(["merge", str(root / "a"), str(root / "b"), "--out", str(tmp_path / "m"),
          "--method", "slerp", "--t", "0.6"])
    pa, pb = (solar_jax.load_model(root / m).params for m in "ab")
    merged = merge_params([pa, pb], "slerp", t=0.6)
    from_file = solar_jax.load_model(tmp_path / "m").params
    import jax
    for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(from_file)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_solar_jax_checkpoint_inputs_merge_the_same(root, tmp_path):
    solar_jax.convert(root / "a", tmp_path / "a-sj")
    hf = _merge(root, tmp_path, "a", "b", "--method", "slerp", "--t", "0.4")
    dst = tmp_path / "mixed"
    assert main(["merge", str(tmp_path / "a-sj"), str(root / "b"), "--out", str(dst),
                 "--method", "slerp", "--t", "0.4", "--to", "hf"]) == 0
    mixed = load_file(str(dst / "model.safetensors"))
    for n in hf:
        np.testing.assert_array_equal(mixed[n], hf[n], err_msg=n)


def test_mergekit_recipe_gradient_filters_and_dtype(root, tmp_path):
    recipe = {"merge_method": "slerp", "base_model": str(root / "a"), "dtype": "bfloat16",
              "slices": [{"sources": [{"model": str(root / "a"), "layer_range": [0, 3]},
                                      {"model": str(root / "b"), "layer_range": [0, 3]}]}],
              "parameters": {"t": [{"filter": "self_attn", "value": [0, 1]}, {"value": 0.5}]}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["merge", "--recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o"),
                 "--to", "hf"]) == 0
    out = load_file(str(tmp_path / "o" / "model.safetensors"))
    a, b = _hf(root / "a"), _hf(root / "b")
    for n in a:
        t = 0.5
        if "self_attn" in n:  # gradient [0, 1] over the slice's 3 layers
            t = int(n.split(".")[2]) / 2
        assert out[n].dtype == ml_dtypes.bfloat16
        want = ref_slerp(a[n], b[n], t).astype(np.float32).astype(ml_dtypes.bfloat16)
        np.testing.assert_allclose(out[n].astype(np.float32), want.astype(np.float32),
                                   rtol=1e-2, atol=1e-3, err_msg=n)


def test_mergekit_recipe_linear_models_form(root, tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({
        "merge_method": "linear", "parameters": {"normalize": False},
        "models": [{"model": str(root / "a"), "parameters": {"weight": 0.25}},
                   {"model": str(root / "b"), "parameters": {"weight": 0.5}}]}))
    assert main(["merge", "--recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o"),
                 "--to", "hf"]) == 0
    out = load_file(str(tmp_path / "o" / "model.safetensors"))
    a, b = _hf(root / "a"), _hf(root / "b")
    for n in a:
        np.testing.assert_allclose(out[n], 0.25 * a[n] + 0.5 * b[n], err_msg=n, **TOL)


def _bad_recipe(tmp_path, data):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    return ["--recipe", str(tmp_path / "bad.yaml")]


BAD = {
    "unknown-method": (lambda r, t: ["a", "b", "--method", "average"], "average"),
    "weights-count": (lambda r, t: ["a", "b", "--method", "linear", "--weights", "1", "2", "3"],
                      "3 weights"),
    "t-above-1": (lambda r, t: ["a", "b", "--method", "slerp", "--t", "1.5"], "[0, 1]"),
    "t-below-0": (lambda r, t: ["a", "b", "--method", "slerp", "--t", "-0.1"], "[0, 1]"),
    "t-in-recipe": (lambda r, t: _bad_recipe(t, {
        "merge_method": "slerp", "base_model": str(r / "a"), "parameters": {"t": [0, 1.2]},
        "models": [{"model": str(r / "a")}, {"model": str(r / "b")}]}), "t must be in [0, 1]"),
    "hidden-size": (lambda r, t: ["a", "wide", "--method", "linear"], "model.embed_tokens.weight"),
    "vocab-size": (lambda r, t: ["a", "vocab", "--method", "linear"], "model.embed_tokens.weight"),
    "layer-count": (lambda r, t: ["a", "deep", "--method", "linear"], "numbers of layers"),
    "slerp-three": (lambda r, t: ["a", "b", "c", "--method", "slerp", "--t", "0.5"], "exactly two"),
    "task-no-base": (lambda r, t: ["a", "b", "--method", "task_arithmetic"], "--base"),
    "no-method": (lambda r, t: ["a", "b"], "--method"),
    "weights-sum-zero": (lambda r, t: ["a", "b", "--method", "linear", "--weights", "1", "-1"],
                         "sum to 0"),
    "recipe-past-last-layer": (lambda r, t: _bad_recipe(t, {
        "merge_method": "linear", "slices": [{"sources": [
            {"model": str(r / "a"), "layer_range": [0, 4], "parameters": {"weight": 1}},
            {"model": str(r / "b"), "layer_range": [0, 4], "parameters": {"weight": 1}}]}]}),
        "outside the model's 3 layers"),
    "recipe-empty-slices": (lambda r, t: _bad_recipe(t, {"merge_method": "linear", "slices": []}),
                            "slices"),
    "recipe-missing-weight": (lambda r, t: _bad_recipe(t, {
        "merge_method": "linear", "models": [{"model": str(r / "a"), "parameters": {"weight": 1}},
                                             {"model": str(r / "b")}]}), "no weight"),
    "recipe-and-flags": (lambda r, t: ["a", *_bad_recipe(t, {"merge_method": "linear",
                                                             "models": ["x"]})], "recipe"),
    "passthrough-recipe": (lambda r, t: _bad_recipe(t, {
        "merge_method": "passthrough", "slices": [{"sources": [
            {"model": str(r / "a"), "layer_range": [0, 2]}]}]}), "upscale"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_merges_are_one_line_errors_and_write_nothing(case, root, tmp_path, capsys):
    make_args, needle = BAD[case]
    args = [str(root / a) if a in ("a", "b", "c", "wide", "vocab", "deep") else a
            for a in make_args(root, tmp_path)]
    dst = tmp_path / "dst"
    code = main(["merge", *args, "--out", str(dst)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not dst.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dst")]
