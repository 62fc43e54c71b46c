"""ties and model_stock against numpy references written here from mergekit's definitions
(generalized_task_arithmetic.py + sparsify.magnitude, model_stock.py), through the CLI,
mergekit-syntax recipes and merge_params; the registry's help and errors; GGUF output of
merge and upscale. References read the source safetensors directly, never our readers."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

import solar_jax
from conftest import make_hf_model
from gguf_helpers import VOCAB, write_bpe_tokenizer  # a tokenizer llama.cpp accepts
from solar_jax import merge_methods
from solar_jax.checkpoint.opener import open_source
from solar_jax.cli import main
from solar_jax.merge import merge_params
from solar_jax.merge_methods.ties import trim

F32 = np.float32
TOL = dict(rtol=1e-6, atol=1e-6)  # the brief: mergekit's tensors within 1e-6 in fp32


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    for name, seed in (("base", 0), ("a", 1), ("b", 2), ("c", 3)):
        make_hf_model(root / name, seed=seed, vocab_size=VOCAB)
    write_bpe_tokenizer(root / "base")
    return root


def _hf(path):
    return load_file(str(path / "model.safetensors"))


def _run(root, tmp_path, *args, to="hf"):
    dst = tmp_path / ("out.gguf" if to == "gguf" else "out")
    argv = ["merge", *[str(root / a) if a in ("base", "a", "b", "c") else a for a in args],
            "--out", str(dst), "--to", to]
    assert main(argv) == 0
    return dst


def _recipe(tmp_path, data) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


# ---- references, from mergekit's definitions ------------------------------------------


def ref_magnitude(delta: np.ndarray, density: float) -> np.ndarray:
    """sparsify.magnitude: keep k = int(density * numel) entries by |value| (all if
    density >= 1); at the cut, equal magnitudes keep the lower flat index (a stable
    descending sort, what torch.argsort(stable=True) gives)."""
    if density >= 1:
        return delta
    flat = delta.ravel()
    k = int(density * flat.size)
    order = np.lexsort((np.arange(flat.size), -np.abs(flat).astype(np.float64)))[:k]
    out = np.zeros_like(flat)
    out[order] = flat[order]
    return out.reshape(delta.shape)


def ref_ties(base, xs, weights, densities, normalize=True, lam=1.0, rescale=False):
    """GTATask with consensus "sum" and magnitude sparsification, fp32 where mergekit's
    float32 torch ops decide something (the task vectors, the elected sign)."""
    base = base.astype(F32)
    deltas = []
    for x, d in zip(xs, densities):
        delta = x.astype(F32) - base
        kept = ref_magnitude(delta, d)
        if rescale and d < 1:
            before = np.abs(delta).astype(np.float64).sum()
            after = np.abs(kept).astype(np.float64).sum()
            if before >= 1e-7 and after >= 1e-7:
                kept = kept * F32(before / after)
        deltas.append(kept)
    weighted = [F32(w) * d for w, d in zip(weights, deltas)]
    total = weighted[0].copy()
    for wd in weighted[1:]:
        total = total + wd
    majority = np.where(total >= 0, 1, -1)
    mixed = np.zeros(base.shape)
    divisor = np.zeros(base.shape)
    for w, wd in zip(weights, weighted):
        agree = np.sign(wd) == majority
        mixed += np.where(agree, wd.astype(np.float64), 0)
        divisor += np.where(agree, w, 0)
    if normalize:
        mixed /= np.where(divisor == 0, 1, divisor)
    return base + lam * mixed


def ref_model_stock(base, xs, filter_wise=False):
    """ModelStockMergeTask: the mean pairwise cosine of the task vectors (norm product
    clamped to 1e-6, cosine to [-1, 1]); t = N cos / (1 + (N-1) cos)."""
    w0 = base.astype(np.float64)
    ws = [x.astype(np.float64) for x in xs]
    if filter_wise:
        rows = w0.reshape(1, -1) if w0.ndim == 1 else w0
        ws_rows = [w.reshape(rows.shape) for w in ws]
        return np.stack([ref_model_stock(rows[r], [w[r] for w in ws_rows])
                         for r in range(rows.shape[0])]).reshape(base.shape)
    offsets = [(w - w0).ravel() for w in ws]
    cosines = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            a, b = offsets[i], offsets[j]
            cosines.append(np.clip(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-6), -1, 1))
    cos, n = np.mean(cosines), len(ws)
    t = n * cos / (1 + (n - 1) * cos)
    return t * sum(ws) / n + (1 - t) * w0


# ---- ties ---------------------------------------------------------------------------------


def test_ties_matches_mergekit_definition(root, tmp_path):
    out = _hf(_run(root, tmp_path, "a", "b", "c", "--method", "ties", "--base", "base",
                   "--weights", "0.7", "-0.3", "1.2", "--density", "0.5", "0.29", "0.8",
                   "--lambda", "0.9"))
    base, a, b, c = (_hf(root / m) for m in ("base", "a", "b", "c"))
    assert sorted(out) == sorted(base)
    for n in base:
        want = ref_ties(base[n], [a[n], b[n], c[n]], [0.7, -0.3, 1.2], [0.5, 0.29, 0.8], lam=0.9)
        np.testing.assert_allclose(out[n], want, err_msg=n, **TOL)


def test_ties_recipe_equals_flags_and_reference(root, tmp_path):
    """models: form, per-model density, a density gradient over the layers, normalize off."""
    recipe = _recipe(tmp_path, {
        "merge_method": "ties", "base_model": str(root / "base"),
        "parameters": {"normalize": False, "int8_mask": True},
        "models": [{"model": str(root / "a"), "parameters": {"weight": 0.6, "density": [0.2, 0.6]}},
                   {"model": str(root / "b"), "parameters": {"weight": 0.5, "density": 0.4}}]})
    assert main(["merge", "--recipe", recipe, "--out", str(tmp_path / "r"), "--to", "hf"]) == 0
    out = _hf(tmp_path / "r")
    base, a, b = (_hf(root / m) for m in ("base", "a", "b"))
    for n in base:
        da = 0.2 + 0.4 * int(n.split(".")[2]) / 2 if ".layers." in n else 0.2
        if n in ("model.norm.weight", "lm_head.weight"):
            da = 0.6  # the last slice's end, as mergekit evaluates globals past the layers
        want = ref_ties(base[n], [a[n], b[n]], [0.6, 0.5], [da, 0.4], normalize=False)
        np.testing.assert_allclose(out[n], want, err_msg=n, **TOL)
    flags = _hf(_run(root, tmp_path, "a", "b", "--method", "ties", "--base", "base",
                     "--weights", "0.6", "0.5", "--density", "0.4", "--no-normalize"))
    for n in base:
        want = ref_ties(base[n], [a[n], b[n]], [0.6, 0.5], [0.4, 0.4], normalize=False)
        np.testing.assert_allclose(flags[n], want, err_msg=n, **TOL)


def test_magnitude_trim_count_and_ties_at_the_cut():
    # int(0.29 * 100) == 28 (the float product is 28.999...): mergekit keeps 28, not 29
    rng = np.random.default_rng(0)
    values = rng.permutation(np.repeat(np.arange(1, 11, dtype=F32), 10)) * rng.choice([-1, 1], 100)
    values = values.astype(F32).reshape(10, 10)
    kept = trim(values, 0.29)
    assert np.count_nonzero(kept) == 28
    np.testing.assert_array_equal(kept, ref_magnitude(values, 0.29))
    # the cut falls inside the group of |8|s: the lower flat indices win
    eights = np.flatnonzero(np.abs(values.ravel()) == 8)
    assert (kept.ravel()[eights] != 0).tolist() == [True] * 8 + [False] * 2
    np.testing.assert_array_equal(trim(values, 1.0), values)
    np.testing.assert_array_equal(trim(values, 0.3), ref_magnitude(values, 0.3))


def test_ties_rescale_and_sign_election_by_sum():
    base = np.zeros(4, F32)
    # entry 0: +1 and -3 -> the sum elects "-", so only the -3 survives (count would tie)
    x1, x2 = np.array([1, 2, 0, -1], F32), np.array([-3, 2, 0, 1], F32)
    out = merge_methods.get("ties").merge(base, [x1, x2], {"normalize": True, "lambda": 1.0,
                                                           "rescale": False},
                                          [{"weight": 1.0, "density": 1.0}] * 2)
    np.testing.assert_allclose(out, [-3, 2, 0, 1])  # entry 3 sums to 0: "+" wins (>= 0)
    rng = np.random.default_rng(1)
    base = rng.standard_normal((3, 40)).astype(F32)
    xs = list(rng.standard_normal((2, 3, 40)).astype(F32))
    got = merge_methods.get("ties").merge(
        base, xs, {"normalize": True, "lambda": 1.0, "rescale": True},
        [{"weight": 0.8, "density": 0.3}, {"weight": 1.1, "density": 0.6}])
    np.testing.assert_allclose(got, ref_ties(base, xs, [0.8, 1.1], [0.3, 0.6], rescale=True), **TOL)


# ---- model_stock --------------------------------------------------------------------------


@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_matches_mergekit_definition(root, tmp_path, filter_wise):
    flag = ["--filter-wise"] if filter_wise else []
    out = _hf(_run(root, tmp_path, "a", "b", "c", "--method", "model_stock", "--base", "base",
                   *flag))
    base, a, b, c = (_hf(root / m) for m in ("base", "a", "b", "c"))
    for n in base:
        want = ref_model_stock(base[n], [a[n], b[n], c[n]], filter_wise)
        np.testing.assert_allclose(out[n], want, err_msg=n, **TOL)


def test_model_stock_recipe_and_merge_params_equal_the_cli(root, tmp_path):
    cli = _hf(_run(root, tmp_path, "a", "b", "--method", "model_stock", "--base", "base"))
    recipe = _recipe(tmp_path, {"merge_method": "model_stock", "base_model": str(root / "base"),
                                "slices": [{"sources": [
                                    {"model": str(root / m), "layer_range": [0, 3]}
                                    for m in ("base", "a", "b")]}]})
    assert main(["merge", "--recipe", recipe, "--out", str(tmp_path / "r"), "--to", "hf"]) == 0
    from_recipe = _hf(tmp_path / "r")
    for n in cli:
        np.testing.assert_array_equal(from_recipe[n], cli[n], err_msg=n)
    base, a, b = (solar_jax.load_model(root / m).params for m in ("base", "a", "b"))
    import jax
    merged = merge_params([a, b], "model_stock", base=base)
    loaded = solar_jax.load_model(tmp_path / "r").params
    for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(loaded)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
    ties = merge_params([a, b], "ties", base=base, weights=[1, 1], parameters={"density": 0.5})
    assert jax.tree.structure(ties) == jax.tree.structure(base)


# ---- registry: help, errors -----------------------------------------------------------


def test_help_lists_every_registered_method(capsys):
    assert main(["merge", "--help"]) == 0  # the CLI returns argparse's exit status
    text = capsys.readouterr().out
    for name in merge_methods.names(stacks_layers=False):
        assert name in text
    for flag in ("--density", "--lambda", "--filter-wise", "--weights", "--t"):
        assert flag in text


def _models_recipe(r, t, method, models, **top):
    return ["--recipe", _recipe(t, {"merge_method": method, **top, "models": [
        {"model": str(r / m), **({"parameters": p} if p else {})} for m, p in models]})]


BAD = {
    "density-zero": (lambda r, t: ["a", "--base", "base", "--method", "ties", "--density", "0"],
                     "density must be in (0, 1]"),
    "density-above-one": (lambda r, t: ["a", "--base", "base", "--method", "ties", "--density",
                                        "1.5"], "density must be in (0, 1]"),
    "density-in-recipe": (lambda r, t: _models_recipe(r, t, "ties", [
        ("a", {"weight": 1, "density": [0.5, 1.2]})], base_model=str(r / "base")),
        "density must be in (0, 1]"),
    "density-keeps-nothing": (lambda r, t: ["a", "--base", "base", "--method", "ties",
                                            "--density", "0.01"],
                              "model.layers.0.input_layernorm.weight: density 0.01 keeps none"),
    "ties-no-base": (lambda r, t: ["a", "b", "--method", "ties"], "--base"),
    "stock-no-base": (lambda r, t: ["a", "b", "--method", "model_stock"], "--base"),
    "ties-recipe-no-base": (lambda r, t: _models_recipe(r, t, "ties", [("a", {"weight": 1})]),
                            "ties needs base_model"),
    "stock-recipe-no-base": (lambda r, t: _models_recipe(r, t, "model_stock",
                                                         [("a", {}), ("b", {})]),
                             "model_stock needs base_model"),
    "stock-one-model": (lambda r, t: ["a", "--base", "base", "--method", "model_stock"],
                        "at least three models"),
    "unknown-parameter-names-model": (lambda r, t: _models_recipe(r, t, "ties", [
        ("a", {"weight": 1}), ("b", {"weight": 1, "densty": 0.5})], base_model=str(r / "base")),
        "model 2 ("),
    "global-parameter-on-a-model": (lambda r, t: _models_recipe(r, t, "ties", [
        ("a", {"weight": 1, "normalize": False})], base_model=str(r / "base")), "whole ties merge"),
    "recipe-missing-weight": (lambda r, t: _models_recipe(r, t, "ties", [("a", {"density": 0.5})],
                                                          base_model=str(r / "base")), "no weight"),
    "density-for-linear": (lambda r, t: ["a", "b", "--method", "linear", "--density", "0.5"],
                           "linear takes no parameter 'density'"),
    "t-for-ties": (lambda r, t: ["a", "--base", "base", "--method", "ties", "--t", "0.5"],
                   "ties takes no parameter 't'"),
    "density-count": (lambda r, t: ["a", "b", "--base", "base", "--method", "ties", "--density",
                                    "0.5", "0.5", "0.5"], "3 densities given for 2 models"),
    "density-for-task-arithmetic": (lambda r, t: _models_recipe(r, t, "task_arithmetic", [
        ("a", {"weight": 1, "density": 0.5})], base_model=str(r / "base")),
        "use merge_method: ties"),
    "quant-without-gguf": (lambda r, t: ["a", "b", "--method", "linear", "--quant", "q8_0"],
                           "--to gguf only"),
    "dtype-with-gguf": (lambda r, t: ["a", "b", "--method", "linear", "--to", "gguf", "--dtype",
                                      "bf16"], "--quant"),
    "linear-one-model": (lambda r, t: ["a", "--method", "linear"], "only be copied"),
    "unregistered-method": (lambda r, t: ["a", "b", "--method", "dare_ties"],
                            "use one of linear, slerp, task_arithmetic, ties, model_stock"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_parameters_are_one_line_errors_and_write_nothing(case, root, tmp_path, capsys):
    make_args, needle = BAD[case]
    args = [str(root / a) if a in ("base", "a", "b", "c") else a for a in make_args(root, tmp_path)]
    dst = tmp_path / "dst"
    code = main(["merge", *args, "--out", str(dst)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    if case == "unknown-parameter-names-model":
        assert str(root / "b") in err and "densty" in err
    assert not dst.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dst")]


# ---- GGUF output --------------------------------------------------------------------------


def _leaves_equal(a, b):
    sa, sb = open_source(a), open_source(b)
    assert sa.config.num_layers == sb.config.num_layers
    for path in sa.leaf_paths():
        np.testing.assert_array_equal(sa.read_leaf(path), sb.read_leaf(path), err_msg=str(path))


def test_merge_writes_gguf_equal_to_its_hf_output(root, tmp_path):
    args = ["a", "b", "--method", "ties", "--base", "base", "--density", "0.5"]
    hf = _run(root, tmp_path, *args)
    out = _run(root, tmp_path, *args, "--quant", "f32", to="gguf")
    _leaves_equal(out, hf)
    fields = gguf.GGUFReader(str(out)).fields
    assert "tokenizer.ggml.model" in fields  # the base's tokenizer came along
    name = fields["general.name"]
    assert bytes(name.parts[name.data[0]]).decode() == "out"


def test_upscale_writes_gguf(root, tmp_path):
    assert main(["upscale", str(root / "a"), str(tmp_path / "up"), "--m", "1", "--to", "hf"]) == 0
    assert main(["upscale", str(root / "a"), str(tmp_path / "up.gguf"), "--m", "1", "--to", "gguf",
                 "--quant", "f32", "--no-tokenizer"]) == 0
    _leaves_equal(tmp_path / "up.gguf", tmp_path / "up")
    assert open_source(tmp_path / "up.gguf").config.num_layers == 4


def test_merge_of_a_gguf_base_keeps_its_gguf_tokenizer(root, tmp_path):
    base_gguf = tmp_path / "base.gguf"
    assert main(["convert", str(root / "base"), str(base_gguf), "--to", "gguf",
                 "--quant", "f32"]) == 0
    out = _run(root, tmp_path, str(base_gguf), "a", "--method", "linear", "--quant", "f32",
               to="gguf")
    ours, theirs = (gguf.GGUFReader(str(p)).fields for p in (out, base_gguf))
    tokenizer_keys = sorted(k for k in theirs if k.startswith("tokenizer."))
    assert tokenizer_keys
    assert tokenizer_keys == sorted(k for k in ours if k.startswith("tokenizer."))
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
        assert ([bytes(ours[key].parts[i]) for i in ours[key].data]
                == [bytes(theirs[key].parts[i]) for i in theirs[key].data])
