"""The training core: loss falls, sharding/multi-host invariance, exact resume, signals,
gradient accumulation, packing, and bad-input errors."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from solar_jax.cli import main

RUNNER = Path(__file__).with_name("train_runner.py")
TINY = {"vocab_size": 288, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2,
        "num_heads": 4, "num_kv_heads": 2}


@pytest.fixture
def config_file(tmp_path, byte_tokenizer, shakespeare_slice):
    def make(**overrides):
        cfg = {"model": "tiny-llama", "model_overrides": TINY, "tokenizer": str(byte_tokenizer),
               "data": {"path": str(shakespeare_slice), "format": "text"},
               "seq_len": 64, "batch_size": 8, "steps": 6, "learning_rate": 3e-3,
               "warmup_steps": 1, "run_dir": str(tmp_path / "run"), "checkpoint_every": 3,
               "log_every": 1, "progress": False, "tensorboard": False,
               "async_checkpoint": False}
        cfg.update(overrides)
        path = tmp_path / f"cfg{len(list(tmp_path.glob('cfg*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path
    return make


def losses(run_dir) -> dict[int, float]:
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        out[record["step"]] = record["loss"]
    return out


def run(devices: int, config: Path, *overrides, check=True, **kwargs):
    result = subprocess.run([sys.executable, str(RUNNER), str(devices), str(config), *overrides],
                            capture_output=True, text=True, **kwargs)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_loss_falls_on_tinyshakespeare(config_file, tmp_path):
    path = config_file(steps=30, learning_rate=1e-2, warmup_steps=3, tensorboard=True,
                       checkpoint_every=30)
    assert main(["train", str(path)]) == 0
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 31))
    for key in ("step", "loss", "lr", "grad_norm", "tokens_per_sec", "step_time", "mfu"):
        assert key in records[0]
    first, last = np.mean([r["loss"] for r in records[:3]]), np.mean([r["loss"] for r in records[-3:]])
    assert last < first - 1.0, (first, last)
    assert list((tmp_path / "run" / "tensorboard").iterdir())


def test_sharded_runs_equal_single_device(config_file, tmp_path):
    base = config_file(steps=5, checkpoint_every=5)
    run(1, base, f"run_dir={tmp_path / 'one'}")
    ref = losses(tmp_path / "one")
    for name, mesh in (("fsdp8", "{data: 1, fsdp: 8, tensor: 1}"),
                       ("dft", "{data: 2, fsdp: 2, tensor: 2}")):
        run(8, base, f"run_dir={tmp_path / name}", f"mesh={mesh}")
        got = losses(tmp_path / name)
        assert got.keys() == ref.keys()
        np.testing.assert_allclose([got[k] for k in ref], list(ref.values()), atol=1e-5)


def test_two_processes_equal_one(config_file, tmp_path):
    base = config_file(steps=4, checkpoint_every=4)
    run(8, base, f"run_dir={tmp_path / 'single'}", "mesh={data: 2, fsdp: 4, tensor: 1}")
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(
        [sys.executable, str(RUNNER), "4", str(base), f"run_dir={tmp_path / 'multi'}",
         "mesh={data: 2, fsdp: 4, tensor: 1}", f"distributed.coordinator_address=127.0.0.1:{port}",
         "distributed.num_processes=2", f"distributed.process_id={i}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    ref, got = losses(tmp_path / "single"), losses(tmp_path / "multi")
    assert got.keys() == ref.keys()
    np.testing.assert_allclose([got[k] for k in ref], list(ref.values()), atol=1e-5)


def _wait_for(predicate, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_sigkill_then_restart_is_bit_identical(config_file, tmp_path):
    k = 3
    base = config_file(steps=2 * k, checkpoint_every=k, learning_rate=1e-2)
    run(1, base, f"run_dir={tmp_path / 'straight'}")
    crash = tmp_path / "crash"
    proc = subprocess.Popen([sys.executable, str(RUNNER), "1", str(base), f"run_dir={crash}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (crash / "checkpoints" / str(k)).is_dir(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = run(1, base, f"run_dir={crash}")
    assert f"resumed from step {k}" in result.stdout
    ref, got = losses(tmp_path / "straight"), losses(crash)
    for step in range(1, 2 * k + 1):
        assert got[step] == ref[step], (step, got[step], ref[step])  # bit-identical


def test_sigterm_checkpoints_current_step_and_resumes(config_file, tmp_path):
    base = config_file(steps=40, checkpoint_every=100)
    out = tmp_path / "term"
    proc = subprocess.Popen([sys.executable, str(RUNNER), "1", str(base), f"run_dir={out}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    _wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    last = max(losses(out))
    assert last < 40
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == [last]
    result = run(1, base, f"run_dir={out}", "steps=" + str(last + 2))
    assert f"resumed from step {last}" in result.stdout
    assert max(losses(out)) == last + 2


# ---- the step function itself ------------------------------------------------------------

def _step_fixture(grad_accum, batch_size=8):
    from solar_jax.config import ModelConfig
    from solar_jax.model.transformer import init_params
    from solar_jax.train.config import TrainConfig
    from solar_jax.train.optimizer import make_optimizer, make_schedule
    from solar_jax.train.step import make_train_step

    cfg = TrainConfig(batch_size=batch_size, grad_accum=grad_accum, steps=10, loss_chunk=16)
    config = ModelConfig.from_preset("tiny-llama")
    params = init_params(config, seed=0)
    opt = make_optimizer(cfg)
    state = {"params": params, "opt_state": opt.init(params), "step": jnp.zeros((), jnp.int32)}
    step = jax.jit(make_train_step(config, opt, make_schedule(cfg), grad_accum=grad_accum,
                                   chunk=cfg.loss_chunk, z_loss=0.0))
    return config, state, step


def _random_batch(rng, b=8, s=32):
    ids = rng.integers(3, 256, (b, s + 1))
    weights = (rng.random((b, s)) > 0.2).astype(np.float32)
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_weights": weights,
            "segment_ids": np.ones((b, s), np.int32),
            "positions": np.broadcast_to(np.arange(s), (b, s)).astype(np.int32)}


def test_gradient_accumulation_equals_full_batch():
    from solar_jax.train.step import make_accumulated_grads
    batch = _random_batch(np.random.default_rng(0))
    config, state, _ = _step_fixture(1)
    full = jax.jit(make_accumulated_grads(config, grad_accum=1, chunk=16, z_loss=0.0))
    accum = jax.jit(make_accumulated_grads(config, grad_accum=4, chunk=16, z_loss=0.0))
    (g1, s1), (g4, s4) = full(state["params"], batch), accum(state["params"], batch)
    np.testing.assert_allclose(s1, s4, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(a).max()))
    # and the step's reported loss is the token-weighted mean of the whole batch
    _, state4, step4 = _step_fixture(4)
    _, metrics = step4(state4, batch)
    np.testing.assert_allclose(metrics["loss"], s1[0] / s1[3], rtol=1e-6)


def test_packed_row_loss_is_token_weighted_mean_of_documents():
    from solar_jax.train.step import batch_loss_sums
    config, state, _ = _step_fixture(1)
    rng = np.random.default_rng(1)
    doc_a, doc_b = rng.integers(3, 256, 10), rng.integers(3, 256, 15)

    def row(docs, length=32):
        ids, tgt, w, seg, pos = [], [], [], [], []
        for i, d in enumerate(docs, 1):
            ids += list(d)
            tgt += list(d[1:]) + [0]
            w += [1.0] * (len(d) - 1) + [0.0]
            seg += [i] * len(d)
            pos += list(range(len(d)))
        pad = length - len(ids)
        return {"input_ids": np.array([ids + [0] * pad]), "targets": np.array([tgt + [0] * pad]),
                "loss_weights": np.array([w + [0.0] * pad], np.float32),
                "segment_ids": np.array([seg + [0] * pad]), "positions": np.array([pos + [0] * pad])}

    def sums(b):
        _, (nll, _, _, weight) = batch_loss_sums(config, state["params"], b, chunk=8, z_loss=0.0)
        return float(nll), float(weight)

    packed_nll, packed_w = sums(row([doc_a, doc_b]))
    a_nll, a_w = sums(row([doc_a]))
    b_nll, b_w = sums(row([doc_b]))
    assert packed_w == a_w + b_w
    np.testing.assert_allclose(packed_nll / packed_w, (a_nll + b_nll) / (a_w + b_w), rtol=1e-5)


def test_non_finite_step_keeps_state():
    _, state, step = _step_fixture(1)
    bad = jax.tree.map(lambda x: x, state)
    bad["params"]["final_norm"]["scale"] = bad["params"]["final_norm"]["scale"].at[0].set(jnp.nan)
    new, metrics = step(bad, _random_batch(np.random.default_rng(0)))
    assert not bool(metrics["finite"])
    assert int(new["step"]) == 0
    np.testing.assert_array_equal(new["params"]["embed"]["embedding"],
                                  bad["params"]["embed"]["embedding"])


def test_chunked_cross_entropy_matches_direct():
    from solar_jax.train.loss import chunked_cross_entropy
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.standard_normal((2, 13, 8)), jnp.float32)
    head = jnp.asarray(rng.standard_normal((8, 50)), jnp.float32)
    t = jnp.asarray(rng.integers(0, 50, (2, 13)))
    w = jnp.asarray(rng.random((2, 13)) > 0.3, jnp.float32)
    logits = h @ head
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), t[..., None], -1)[..., 0]
    lse = jax.nn.logsumexp(logits, -1)
    got_nll, got_z, _ = chunked_cross_entropy(h, head, t, w, chunk=4, z_loss=1e-3)
    np.testing.assert_allclose(got_nll, jnp.sum(nll * w), rtol=1e-5)
    np.testing.assert_allclose(got_z, jnp.sum(1e-3 * lse ** 2 * w), rtol=1e-5)
    g1 = jax.grad(lambda hh: chunked_cross_entropy(hh, head, t, w, chunk=4)[0])(h)
    g2 = jax.grad(lambda hh: jnp.sum(-jnp.take_along_axis(
        jax.nn.log_softmax(hh @ head), t[..., None], -1)[..., 0] * w))(h)
    np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-6)


# ---- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["bogus_key=1"], "unknown config key bogus_key"),
    (["data.pth=x"], "unknown config key data.pth"),
    (["steps=many"], "steps must be an integer"),
    (["mesh={data: 3, fsdp: 1, tensor: 1}"], "needs 3 devices"),
    (["seq_len=100000"], "max_position_embeddings"),
    (["data.path=/nonexistent/corpus.txt"], "/nonexistent/corpus.txt"),
    (["tokenizer=null"], "tokenizer"),
    (["tokenizer=/nonexistent/tok"], "does not exist"),
    (["learning_rate=-1"], "learning_rate"),
])
def test_bad_config_is_one_line_error(config_file, capsys, overrides, message):
    path = config_file()
    capsys.readouterr()
    assert main(["train", str(path), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err


def test_empty_dataset_is_one_line_error(config_file, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    path = config_file(data={"path": str(empty), "format": "text"})
    capsys.readouterr()
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err


@pytest.mark.parametrize("dtype, chunk, z_loss", [("float32", 4, 0.0), ("float32", 5, 1e-3),
                                                   ("float32", 13, 1e-2), ("bfloat16", 4, 1e-3)])
def test_fused_cross_entropy_matches_autodiff(dtype, chunk, z_loss):
    """The custom-VJP loss: same sums and the same gradients (w.r.t. hidden and head) as
    autodiff of the chunked reference, including a chunk that does not divide the length."""
    from solar_jax.train.loss import chunked_cross_entropy, fused_cross_entropy
    rng = np.random.default_rng(1)
    h = jnp.asarray(rng.standard_normal((2, 13, 8)), dtype)
    head = jnp.asarray(rng.standard_normal((8, 50)), dtype)
    t = jnp.asarray(rng.integers(0, 50, (2, 13)))
    w = jnp.asarray(rng.random((2, 13)) > 0.3, jnp.float32)

    def reference(hh, hd):
        nll, z, correct = chunked_cross_entropy(hh, hd, t, w, chunk=chunk, z_loss=z_loss)
        return 3.0 * (nll + z), (nll, z, correct)

    def fused(hh, hd):
        objective, stats = fused_cross_entropy(hh, hd, t, w, chunk=chunk, z_loss=z_loss)
        return 3.0 * objective, stats

    (ref_grads, ref_stats) = jax.grad(reference, argnums=(0, 1), has_aux=True)(h, head)
    (got_grads, got_stats) = jax.grad(fused, argnums=(0, 1), has_aux=True)(h, head)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=2e-2, atol=2e-2)
    for got, ref in zip(got_stats, ref_stats):
        np.testing.assert_allclose(got, ref, rtol=1e-5)
    for got, ref in zip(got_grads, ref_grads):
        assert got.dtype == ref.dtype and got.shape == ref.shape
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref, np.float32),
                                   **tol)
