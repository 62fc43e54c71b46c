"""`solar-jax ablate`: diagnostics against a direct numpy computation, the held-out loss
against an independent forward pass, a resumed sweep that recomputes only what is missing,
healing resumed mid-candidate, and one-line errors for bad input."""

import csv
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from solar_jax import Model, ModelConfig, abstract_params, save_model, upscale
from solar_jax.ablate import layer_similarity, load_ablate_config, seam_distance, token_mask
from solar_jax.ablate import sweep as sweep_lib
from solar_jax.cli import main
from solar_jax.model.transformer import bind

N = 6
TINY = dict(vocab_size=288, hidden_size=32, intermediate_size=64, num_layers=N, num_heads=4,
            num_kv_heads=2)


@pytest.fixture(scope="module")
def tiny():
    """A random tiny Llama built with numpy (init_params' jit costs more than this file's
    whole budget of compilation on two CPU cores)."""
    config = ModelConfig.from_preset("tiny-llama", **TINY)
    rng = np.random.default_rng(1)

    def leaf(path, shape):
        scale = 0.1 if "norm" in jax.tree_util.keystr(path) else 0.2
        base = 1.0 if "norm" in jax.tree_util.keystr(path) else 0.0
        return jnp.asarray(base + scale * rng.standard_normal(shape.shape), jnp.float32)
    return config, jax.tree_util.tree_map_with_path(leaf, abstract_params(config))


@pytest.fixture(scope="module")
def tiny_ckpt(tiny, tmp_path_factory):
    config, params = tiny
    return save_model(Model(config, params), tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture
def study(tmp_path, tiny_ckpt, byte_tokenizer, shakespeare_slice):
    def make(**overrides):
        cfg = {"model": str(tiny_ckpt), "tokenizer": str(byte_tokenizer),
               "m": [1], "cut_points": [[4, 0]], "eval_data": str(shakespeare_slice), "seq_len": 32,
               "batch_size": 4, "eval_tokens": 192, "calibration_tokens": 128,
               "heal_tokens": 256, "heal": {"learning_rate": 3e-3, "warmup_steps": 1},
               "out_dir": str(tmp_path / "out"), "plots": False}
        cfg.update(overrides)
        path = tmp_path / f"study{len(list(tmp_path.glob('study*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path
    return make


def _batches(config, seed=0):
    """Two batches of packed-looking rows: several documents, trailing padding, and a
    padding row (valid=0) in the second batch."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(2):
        ids = rng.integers(3, config.vocab_size, size=(3, 12)).astype(np.int32)
        seg = np.array([[1] * 5 + [2] * 7, [1] * 9 + [0] * 3, [1] * 3 + [2] * 4 + [3] * 3
                        + [0] * 2], np.int32)
        pos = np.zeros_like(seg)
        for r in range(3):
            for s in np.unique(seg[r]):
                where = np.flatnonzero(seg[r] == s)
                pos[r, where] = np.arange(len(where))
        valid = np.array([1, 1, 0 if b else 1], np.float32)
        out.append({"input_ids": ids, "segment_ids": seg, "positions": pos, "valid": valid})
    return out


def _numpy_diagnostics(hiddens, masks):
    """Direct definitions: mean over masked tokens of cos and arccos(cos)/pi, float64."""
    k = hiddens[0].shape[0]
    cos_sum, ang_sum, count = np.zeros((k, k)), np.zeros((k, k)), 0.0
    for h, mask in zip(hiddens, masks):
        h = np.asarray(h, np.float64)
        sel = mask.reshape(-1) > 0
        vecs = h.reshape(k, -1, h.shape[-1])[:, sel]  # [k, tokens, H]
        for i in range(k):
            for j in range(k):
                dot = np.sum(vecs[i] * vecs[j], -1)
                cos = dot / (np.linalg.norm(vecs[i], axis=-1) * np.linalg.norm(vecs[j], axis=-1))
                cos_sum[i, j] += cos.sum()
                ang_sum[i, j] += (np.arccos(np.clip(cos, -1, 1)) / np.pi).sum()
        count += sel.sum()
    return ang_sum / count, cos_sum / count


def _hidden(config, params, b):
    fn = jax.jit(lambda p, i, s, q: bind(config, p).hidden_states(i, s, q, collect=True)[1])
    return np.asarray(fn(params, b["input_ids"], b["segment_ids"], b["positions"]))


def test_diagnostics_equal_numpy(tiny):
    config, params = tiny
    batches = _batches(config)
    hiddens = [_hidden(config, params, b) for b in batches]
    assert hiddens[0].shape == (N + 1, 3, 12, config.hidden_size)
    # h_k really is the output of the first k layers: a k-layer truncation's last output.
    for k in (4,):
        sub, sub_config = upscale(params, config, [(0, k)])
        np.testing.assert_allclose(hiddens[0][k], _hidden(sub_config, sub, batches[0])[-1],
                                   rtol=1e-5, atol=1e-5)
    for last_only in (False, True):
        masks = [np.asarray(token_mask(jnp.asarray(b["segment_ids"]), jnp.asarray(b["valid"]),
                                       last_only=last_only)) for b in batches]
        # real tokens only (or each document's last token), the padding row excluded
        if last_only:
            assert masks[0][2].tolist() == [0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0]
        assert masks[1][2].sum() == 0 and masks[0][1].sum() == (1 if last_only else 9)

        want_ang, want_cos = _numpy_diagnostics(hiddens, masks)
        got = layer_similarity(config, params, batches, last_only=last_only)
        assert got["tokens"] == sum(int(m.sum()) for m in masks)
        np.testing.assert_allclose(got["angular_distance"], want_ang, atol=2e-6)
        np.testing.assert_allclose(got["cosine"], want_cos, atol=2e-6)
        np.testing.assert_allclose(got["block_influence"],
                                   [1 - want_cos[i, i + 1] for i in range(N)], atol=2e-6)
        assert np.all(np.diag(got["angular_distance"]) < 1e-6)
        assert got["angular_distance"][0, N] > 0.05  # a non-trivial model
        for m in range(N):  # SOLAR's seam: d(h_{n-m}, h_m); m = n/2 is the original model
            assert seam_distance(got["angular_distance"], N - m, m) == pytest.approx(
                want_ang[N - m, m], abs=2e-6)
        assert seam_distance(got["angular_distance"], N // 2, N // 2) < 1e-6


def _table(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row.pop("seconds")
    return rows


def test_sweep_resumes_and_matches_independent_loss(study, tmp_path, tiny, monkeypatch):
    path = study(plots=True)
    assert main(["ablate", str(path)]) == 0
    out = tmp_path / "out"
    for name in ("results.csv", "results.json", "report.md", "loss.png", "similarity.png",
                 "block_influence.png"):
        assert (out / name).is_file(), name
    first = _table(out / "results.csv")
    assert [(r["m"], r["cut_a"], r["cut_b"]) for r in first] == [("1", "5", "1"), ("", "4", "0")]
    assert list(first[0])[:8] == ["m", "cut_a", "cut_b", "layers", "params", "seam_distance",
                                  "loss_before", "ppl_before"]
    config, params = tiny
    results = json.loads((out / "results.json").read_text())
    base, rows = results["base"], results["rows"]
    assert [r["layers"] for r in rows] == [10, 10]
    assert rows[0]["params"] == config.replace(num_layers=10).num_params
    diag = np.asarray(results["diagnostics"]["angular_distance"])
    assert rows[0]["seam_distance"] == pytest.approx(diag[5, 1]) and diag[5, 1] > 0.01
    assert rows[1]["seam_distance"] == pytest.approx(diag[4, 0])
    for r in rows:
        assert r["heal_steps"] == 2 and r["heal_status"] == "ok"
        assert math.isfinite(r["loss_after"]) and r["loss_after"] != r["loss_before"]
        assert r["ppl_before"] == pytest.approx(math.exp(r["loss_before"]))
    assert results["best"]["m"] in (1, None)
    assert "under this budget" in (out / "report.md").read_text()

    # The held-out loss of m=1 from an independent forward pass over the same rows.
    cfg = load_ablate_config(path)
    from solar_jax.tokenizer import load_tokenizer
    data = sweep_lib.build_data(cfg, load_tokenizer(cfg.tokenizer))
    dus, dus_config = upscale(params, config, [(0, N - 1), (1, N)])
    nll = weight = 0.0
    model = Model(dus_config, dus)
    for b in data.eval_rows.batches():
        logits = np.asarray(model(b["input_ids"], b["segment_ids"], b["positions"]), np.float64)
        top = logits.max(-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        picked = np.take_along_axis(logp, b["targets"][..., None], -1)[..., 0]
        nll -= (picked * b["loss_weights"]).sum()
        weight += b["loss_weights"].sum()
    assert weight == base["tokens"] and 150 < weight <= 192
    assert rows[0]["loss_before"] == pytest.approx(nll / weight, rel=1e-5)

    # Restart after losing one record: only that candidate is recomputed, same table. The
    # first restart also crashes mid-healing (after a healing checkpoint at step 1); the
    # next one resumes healing from that checkpoint and ends where the uninterrupted run did.
    calls = []
    real_point, real_batch = sweep_lib.run_point, sweep_lib.RowStream.batch
    monkeypatch.setattr(sweep_lib, "run_point",
                        lambda *a, **k: calls.append(a[5].m) or real_point(*a, **k))

    steps = []

    def crash(self, step):
        steps.append(step)
        if step == 1 and len(calls) == 1:  # first restart: die after step 1's checkpoint
            assert (out / "heal" / "a5-b1" / "checkpoints" / "1").is_dir()
            raise KeyboardInterrupt
        return real_batch(self, step)
    monkeypatch.setattr(sweep_lib.RowStream, "batch", crash)
    (out / "points" / "a5-b1.json").unlink()
    assert main(["ablate", str(path), "heal_checkpoint_every=1"]) == 130
    assert (out / "heal" / "a5-b1").is_dir() and not (out / "points" / "a5-b1.json").exists()
    assert steps == [0, 1]
    assert main(["ablate", str(path), "heal_checkpoint_every=1"]) == 0
    assert steps == [0, 1, 1]  # healing resumed at step 1, step 0 was not redone
    assert calls == [1, 1]
    assert not (out / "heal" / "a5-b1").exists()
    again = _table(out / "results.csv")
    for row, want in zip(again, first):
        for key in ("loss_after", "ppl_after"):
            assert float(row.pop(key)) == pytest.approx(float(want[key]), rel=1e-6)
    assert again == [{k: v for k, v in r.items() if k not in ("loss_after", "ppl_after")}
                     for r in first]
    # Nothing missing: no candidate and not even the weights are loaded again.
    from solar_jax.train import state as state_lib
    monkeypatch.setattr(state_lib, "create_params",
                        lambda *a, **k: pytest.fail("weights loaded for a finished sweep"))
    assert main(["ablate", str(path), "plots=false"]) == 0
    assert calls == [1, 1]


def test_identity_point_and_changed_setup(study, tmp_path, capsys):
    # m = n/2 rebuilds the original model: the base model's loss, seam distance 0.
    path = study(m=[N // 2], cut_points=[], heal_tokens=0)
    assert main(["ablate", str(path)]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (row,) = results["rows"]
    assert row["loss_before"] == pytest.approx(results["base"]["loss"], abs=1e-5)
    assert row["seam_distance"] < 1e-6 and row["layers"] == N
    assert row["loss_after"] is None and row["heal_steps"] == 0
    # A restart with another setup in the same out_dir is refused, not mixed in.
    assert main(["ablate", str(path), "seq_len=16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seq_len" in err and "overwrite=true" in err


@pytest.mark.parametrize("override, message", [
    ("m=[6]", "m=6 is out of range for the model's 6 layers"),
    ("m=[-1]", "m=-1 is negative"),
    ("m=[]", "m is empty"),
    ("eval_data=null", "eval_data is not set"),
    ("eval_data=/no/such/heldout.txt", "eval_data: data path /no/such/heldout.txt does not exist"),
    ("cut_points=[[7,2]]", "cut_points[0] = [7, 2] is out of range"),
    ("heal.warmup_steps=5", "heal.warmup_steps=5 exceeds the 2 healing steps"),
    ("eval_tokens=100000", "none are left to heal on"),
    ("mx=[1]", "unknown config key mx (did you mean m?)"),
])
def test_bad_input_is_one_line_error(study, capsys, override, message):
    assert main(["ablate", str(study()), override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and message in err, err


def _point(out, key="a5-b1"):
    return json.loads((out / "points" / f"{key}.json").read_text())["record"]


def test_healing_runs_the_training_step_loop(study, tmp_path, monkeypatch, capsys):
    """Healing goes through train/step_loop.py: its non-finite guard ends a candidate's
    healing at the last good state (recorded, the sweep goes on), and its stop flag turns
    a SIGTERM mid-healing into a checkpoint of the finished step; the restart resumes there
    and ends exactly where an uninterrupted sweep does."""
    import os
    import signal

    real_batch = sweep_lib.RowStream.batch
    steps = []

    def poisoned(self, step):  # step 2's targets weigh NaN: a non-finite loss
        batch = real_batch(self, step)
        if step == 1:
            batch["loss_weights"] = batch["loss_weights"] * np.nan
        return batch
    monkeypatch.setattr(sweep_lib.RowStream, "batch", poisoned)
    path = study(cut_points=[], out_dir=str(tmp_path / "nan"))
    assert main(["ablate", str(path)]) == 0
    record = _point(tmp_path / "nan")
    assert record["heal_status"] == "non-finite loss/gradient at step 2; stopped"
    assert record["heal_steps"] == 1 and math.isfinite(record["heal_final_train_loss"])
    # The last good state is step 1's, whose learning rate is 0 (one warmup step from 0):
    # the parameters evaluated after healing are the candidate's own.
    assert record["loss_after"] == pytest.approx(record["loss_before"], rel=1e-6)

    def logged(self, step):
        steps.append(step)
        return real_batch(self, step)
    monkeypatch.setattr(sweep_lib.RowStream, "batch", logged)
    straight = study(cut_points=[], out_dir=str(tmp_path / "straight"))
    assert main(["ablate", str(straight)]) == 0
    assert steps == [0, 1]
    want = _point(tmp_path / "straight")
    assert want["heal_status"] == "ok" and want["heal_steps"] == 2

    def terminated(self, step):  # the signal arrives while step 1 runs
        steps.append(step)
        if step == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_batch(self, step)
    monkeypatch.setattr(sweep_lib.RowStream, "batch", terminated)
    out = tmp_path / "term"
    path = study(cut_points=[], out_dir=str(out), heal_checkpoint_every=5)
    steps.clear()
    capsys.readouterr()
    assert main(["ablate", str(path)]) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"
    assert steps == [0]  # step 1 finished, nothing after it read
    assert (out / "heal" / "a5-b1" / "checkpoints" / "1").is_dir()
    assert not (out / "points" / "a5-b1.json").exists() and not (out / "results.csv").exists()
    monkeypatch.setattr(sweep_lib.RowStream, "batch", logged)
    assert main(["ablate", str(path)]) == 0
    assert steps == [0, 1]  # resumed at step 1
    assert "resumed healing at step 1" in capsys.readouterr().out
    got = _point(out)
    for key in ("loss_after", "ppl_after", "acc_after", "heal_final_train_loss", "heal_steps",
                "heal_status"):
        assert got[key] == want[key], key  # bit-identical
    assert not (out / "heal" / "a5-b1").exists()
