"""Families beyond Llama/Mistral, end to end on tiny random transformers models: logits,
HF round trips, up-scaling and merging into models transformers loads, GGUF export in
llama.cpp's own architecture and tensor names (checked against gguf-py's tables) read back
by our importer and by transformers' GGUF loader, and SFT/DPO training steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

import solar_jax
from conftest import hf_tensors, make_hf_model, torch_logits
from solar_jax.checkpoint.opener import open_source
from solar_jax.cli import main

FAMILIES = ["qwen2", "qwen3"]
RTOL = 1e-4  # max |Δlogit| <= RTOL * max |logit|
IDS = np.random.default_rng(0).integers(0, 128, (2, 24))
CASES = {
    "gqa": {},
    "mha-tied": dict(num_key_value_heads=4, tie_word_embeddings=True),
    "window": dict(use_sliding_window=True, sliding_window=5, max_window_layers=0),
}


def _check(a, b):
    err = np.abs(np.asarray(a) - b).max()
    assert err <= RTOL * np.abs(b).max(), f"max |Δ| {err:.3g} vs max |logit| {np.abs(b).max():.3g}"



def _load_hf(path):
    import torch
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32,
                                                       output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(family, case, tmp_path):
    torch_model = make_hf_model(tmp_path / "hf", model_type=family, seed=len(case), **CASES[case])
    model = solar_jax.load_model(tmp_path / "hf")
    assert model.config.model_type == family
    if case == "window":
        assert model.config.sliding_window == 5
    _check(model(IDS), torch_logits(torch_model, IDS))


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_generation_follows_transformers(family, tmp_path):
    """Greedy decoding through the KV cache (a left-padded batch of two prompts): every
    token is transformers' argmax of the sequence so far, wherever its top-2 margin is
    clear of float noise."""
    from solar_jax.generate import generate

    torch_model = make_hf_model(tmp_path / "hf", model_type=family, seed=3)
    model = solar_jax.load_model(tmp_path / "hf")
    prompts = [[5, 17, 99, 3, 64, 21, 8], [42, 7, 11]]
    outs = generate(model, prompts, 12, ignore_eos=True, chunk=4)
    for prompt, out in zip(prompts, outs):
        assert len(out.tokens) == 12
        theirs = torch_logits(torch_model, np.array([prompt + out.tokens]))[0]
        steps = theirs[len(prompt) - 1:-1]
        top2 = np.sort(steps, axis=-1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 1e-3 * np.abs(steps).max()
        assert clear.sum() >= 6
        np.testing.assert_array_equal(np.array(out.tokens)[clear], steps.argmax(-1)[clear])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_is_bit_identical(family, dtype, tmp_path):
    import torch

    make_hf_model(tmp_path / "hf", model_type=family, dtype=getattr(torch, dtype))
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "sj")]) == 0
    assert main(["convert", str(tmp_path / "sj"), str(tmp_path / "out"), "--to", "hf"]) == 0
    src, out = hf_tensors(tmp_path / "hf"), hf_tensors(tmp_path / "out")
    assert set(src) == set(out)
    for name in src:
        assert src[name].dtype == out[name].dtype and src[name].tobytes() == out[name].tobytes(), name
    loaded = _load_hf(tmp_path / "out")
    assert type(loaded).__name__ == solar_jax.load_model(tmp_path / "sj").config.arch.hf_class


@pytest.fixture(scope="module", params=FAMILIES)
def six_layer(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    a = make_hf_model(root / "a", model_type=request.param, num_hidden_layers=6, seed=0)
    b = make_hf_model(root / "b", model_type=request.param, num_hidden_layers=6, seed=1)
    return root, a, b


def test_upscaled_model_loads_in_transformers(six_layer):
    """upscale --m 2: 6 -> 8 layers ([0, 4) + [2, 6)). config.json describes the new stack
    (transformers 5 refuses a layer_types list of another length, as mergekit 0.1.5's
    up-scaled Qwen2/Qwen3 are), and its logits equal transformers' own model with the
    same layers re-stacked."""
    import torch

    root, a, _ = six_layer
    assert json.loads((root / "a" / "config.json").read_text())["layer_types"] == \
        ["full_attention"] * 6
    out = root / "up"
    assert main(["upscale", str(root / "a"), str(out), "--m", "2", "--to", "hf"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 8
    assert config["layer_types"] == ["full_attention"] * 8
    exported = _load_hf(out)
    theirs = torch_logits(exported, IDS)
    layers, types = a.model.layers, a.config.layer_types
    a.model.layers = torch.nn.ModuleList([layers[k] for k in [0, 1, 2, 3, 2, 3, 4, 5]])
    a.config.num_hidden_layers, a.config.layer_types = 8, ["full_attention"] * 8
    try:
        with torch.no_grad():  # no KV cache: repeated layers share their layer_idx
            stacked = a(torch.as_tensor(IDS), use_cache=False).logits.numpy()
    finally:
        a.model.layers, a.config.num_hidden_layers, a.config.layer_types = layers, 6, types
    np.testing.assert_allclose(theirs, stacked, rtol=0, atol=RTOL * np.abs(stacked).max())
    _check(solar_jax.load_model(out)(IDS), stacked)


def test_merged_model_loads_in_transformers(six_layer):
    """merge --method linear --weights 0.3 0.7: transformers loads the output, and its
    logits equal those of transformers' model holding the same average of the two."""
    import torch

    root, a, b = six_layer
    out = root / "merged"
    assert main(["merge", str(root / "a"), str(root / "b"), "--out", str(out), "--method",
                 "linear", "--weights", "0.3", "0.7", "--to", "hf"]) == 0
    merged = _load_hf(out)
    sa, sb = a.state_dict(), b.state_dict()
    reference = make_hf_model(root / "ref", model_type=a.config.model_type,
                              num_hidden_layers=6, seed=2)
    reference.load_state_dict({k: 0.3 * sa[k] + 0.7 * sb[k] for k in sa})
    ref = torch_logits(reference, IDS)
    _check(torch_logits(merged, IDS), ref)
    assert json.loads((out / "config.json").read_text())["layer_types"] == ["full_attention"] * 6
    with torch.no_grad():
        biases = [k for k in sa if k.endswith(".bias")]
        for k in biases:  # the biases are merged like every other tensor
            np.testing.assert_allclose(merged.state_dict()[k].numpy(),
                                       (0.3 * sa[k] + 0.7 * sb[k]).numpy(), rtol=1e-6, atol=1e-7)


# ---- GGUF -------------------------------------------------------------------------------


def _gguf_py_names(family: str, hf_names, n_layers: int) -> dict:
    """HF name -> GGUF name by gguf-py's own table for llama.cpp's `family` architecture."""
    import gguf

    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == family)
    table = gguf.get_tensor_name_map(arch, n_layers)
    out = {}
    for hf in hf_names:
        stem, suffix = hf.rsplit(".", 1)
        out[hf] = f"{table.get_name(stem)}.{suffix}"
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_export_in_llama_cpp_names(family, tmp_path):
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    # transformers' GGUF config mapping for qwen3 reads no attention.key_length and takes
    # Qwen3Config's default head_dim, 128: an explicit head_dim (!= 64 / 4) it can load.
    overrides = {"head_dim": 128} if family == "qwen3" else {}
    torch_model = make_hf_model(tmp_path / "hf", model_type=family, **overrides)
    src = hf_tensors(tmp_path / "hf")
    out = tmp_path / f"{family}.gguf"
    assert main(["convert", str(tmp_path / "hf"), str(out), "--to", "gguf", "--quant", "f32",
                 "--no-tokenizer"]) == 0
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == family
    assert reader.fields[f"{family}.block_count"].contents() == 3
    if overrides:
        assert reader.fields[f"{family}.attention.key_length"].contents() == 128
    names = _gguf_py_names(family, src, 3)
    stored = {t.name: t for t in reader.tensors}
    assert set(stored) == set(names.values())
    for hf, value in src.items():  # llama.cpp's qwen graphs rotate halves: no Q/K permutation
        t = stored[names[hf]]
        data = np.array(t.data).reshape(tuple(int(n) for n in reversed(t.shape.tolist())))
        np.testing.assert_array_equal(data, value, err_msg=hf)
    # read back by our importer: the same tensors and logits
    back = open_source(out)
    assert back.config.model_type == family
    for hf, value in src.items():
        np.testing.assert_array_equal(back.read_tensor(hf), value, err_msg=hf)
    ref = torch_logits(torch_model, IDS)
    _check(solar_jax.load_model(out)(IDS), ref)
    # ... and by transformers' GGUF loader
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name,
                                                  dtype=torch.float32).eval()
    assert loaded.config.model_type == family
    _check(torch_logits(loaded, IDS), ref)


# ---- training -----------------------------------------------------------------------------


def _train(tmp_path, model, tokenizer, objective, data, **extra) -> list[dict]:
    cfg = {"model": str(model), "tokenizer": str(tokenizer), "objective": objective,
           "data": data, "batch_size": 2, "steps": 3, "learning_rate": 1e-2,
           "warmup_steps": 0, "schedule": "constant", "weight_decay": 0.1,
           "run_dir": str(tmp_path / objective), "checkpoint_every": 100, "log_every": 1,
           "progress": False, "tensorboard": False, "async_checkpoint": False, **extra}
    path = tmp_path / f"{objective}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    return [json.loads(x) for x in (tmp_path / objective / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_sft_and_dpo_steps(family, tmp_path, byte_tokenizer):
    """From the HF folder: SFT then DPO steps run, losses are finite, and every family-
    specific tensor (biases, q/k norms) is trained."""
    hf = tmp_path / "hf"
    make_hf_model(hf, model_type=family, vocab_size=288, num_hidden_layers=2)
    sums = tmp_path / "sums.jsonl"
    sums.write_text("".join(json.dumps({"prompt": f"{a}+{a}=", "completion": str(2 * a)}) + "\n"
                            for a in range(8)))
    sft = _train(tmp_path, hf, byte_tokenizer, "sft",
                 {"path": str(sums), "format": "prompt_completion"}, seq_len=48)
    assert len(sft) == 3 and all(np.isfinite(r["loss"]) for r in sft)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"{a}+{a}=", "chosen": str(2 * a),
                                         "rejected": str(2 * a + 1)}) + "\n" for a in range(8)))
    dpo = _train(tmp_path, tmp_path / "sft", byte_tokenizer, "dpo",
                 {"path": str(pairs), "format": "preference"}, seq_len=48, dpo={"beta": 0.5})
    assert len(dpo) == 3 and all(np.isfinite(r["loss"]) for r in dpo)
    before, after = open_source(hf), open_source(tmp_path / "dpo")
    assert after.config.model_type == family
    extras = [r.path for r in after.config.arch.params_for(after.config)
              if r.role != "weight" or "bias" in r.path or "q_norm" in r.path]
    for path in extras:
        assert not np.array_equal(before.read_leaf(path), after.read_leaf(path)), path
