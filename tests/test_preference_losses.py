"""SimPO and ORPO against their formulas written out in numpy (TRL's CPOTrainer
loss_type="simpo" and ORPOTrainer), gradients included, plus train steps and runs that
must never touch a reference model."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from solar_jax.cli import main
from solar_jax.config import ModelConfig
from solar_jax.errors import SolarError
from solar_jax.train import objectives
from solar_jax.train.config import load_train_config
from solar_jax.train.dpo import make_dpo_step, pair_logps, preference_loss
from solar_jax.train.optimizer import make_optimizer, make_schedule
from solar_jax.train.preference_losses import log1mexp, uses_reference


def _logsig(x):
    return -np.logaddexp(0, -x)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def simpo_numpy(sc, sr, nc, nr, beta, gamma, ls=0.0, alpha=0.0):
    ac, ar = sc / nc, sr / nr
    logits = (ac - ar) - gamma / beta  # TRL: pi_logratios - simpo_gamma / beta
    losses = -_logsig(beta * logits) * (1 - ls) - _logsig(-beta * logits) * ls
    return losses.mean() + alpha * (-sc.sum() / nc.sum())


def orpo_numpy(sc, sr, nc, nr, beta):
    ac, ar = sc / nc, sr / nr
    log_odds = (ac - ar) - (np.log1p(-np.exp(ac)) - np.log1p(-np.exp(ar)))
    ratio = _logsig(log_odds)
    nll = -sc.sum() / nc.sum()
    return nll - beta * ratio.mean(), ratio.mean(), log_odds.mean()


def _batch_logps(seed=0, n=6):
    rng = np.random.default_rng(seed)
    nc = rng.integers(3, 40, n).astype(np.float64)
    nr = rng.integers(3, 40, n).astype(np.float64)
    sc = -rng.uniform(0.05, 3.0, n) * nc  # average log-probs in (-3, -0.05)
    sr = -rng.uniform(0.05, 3.0, n) * nr
    return sc, sr, nc, nr


def _f32(*xs):
    return [jnp.asarray(x, jnp.float32) for x in xs]


@pytest.mark.parametrize("ls, alpha", [(0.0, 0.0), (0.1, 0.0), (0.0, 0.5)])
def test_simpo_loss_metrics_and_gradient_match_numpy(ls, alpha):
    sc, sr, nc, nr = _batch_logps()
    beta, gamma = 2.0, 0.7
    kw = dict(beta=beta, loss="simpo", label_smoothing=ls, simpo_gamma=gamma, cpo_alpha=alpha)
    value, aux = preference_loss(*_f32(sc, sr, nc, nr), **kw)
    np.testing.assert_allclose(value, simpo_numpy(sc, sr, nc, nr, beta, gamma, ls, alpha),
                               rtol=1e-5)
    # TRL's rewards are beta times the length-averaged log-probs
    np.testing.assert_allclose(aux["rewards/chosen"], beta * (sc / nc).mean(), rtol=1e-5)
    np.testing.assert_allclose(aux["rewards/margins"], beta * (sc / nc - sr / nr).mean(),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(aux["rewards/accuracies"], np.mean(sc / nc > sr / nr))
    np.testing.assert_allclose(aux["logps/rejected"], (sr / nr).mean(), rtol=1e-5)
    np.testing.assert_allclose(aux["nll_loss"], -sc.sum() / nc.sum(), rtol=1e-5)

    grad_c, grad_r = jax.grad(lambda a, b: preference_loss(a, b, *_f32(nc, nr), **kw)[0],
                              argnums=(0, 1))(*_f32(sc, sr))
    # hand-derived: d/dz of -(1-ls) logsig(bz) - ls logsig(-bz) is b((1-ls)(s(bz)-1) + ls s(bz))
    z = (sc / nc - sr / nr) - gamma / beta
    dz = beta * ((1 - ls) * (_sigmoid(beta * z) - 1) + ls * _sigmoid(beta * z)) / len(sc)
    np.testing.assert_allclose(grad_c, dz / nc - alpha / nc.sum(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(grad_r, -dz / nr, rtol=1e-4, atol=1e-7)
    # and by central differences of the numpy formula
    eps = 1e-5
    e0 = np.eye(len(sc))[0] * eps
    numeric = (simpo_numpy(sc + e0, sr, nc, nr, beta, gamma, ls, alpha)
               - simpo_numpy(sc - e0, sr, nc, nr, beta, gamma, ls, alpha)) / (2 * eps)
    np.testing.assert_allclose(grad_c[0], numeric, rtol=1e-3)


def test_orpo_loss_metrics_and_gradient_match_numpy():
    sc, sr, nc, nr = _batch_logps(1)
    beta = 0.25
    kw = dict(beta=beta, loss="orpo")
    value, aux = preference_loss(*_f32(sc, sr, nc, nr), **kw)
    want, ratio, log_odds = orpo_numpy(sc, sr, nc, nr, beta)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    np.testing.assert_allclose(aux["log_odds_ratio"], ratio, rtol=1e-5)  # mean logsig(lo)
    np.testing.assert_allclose(aux["log_odds_chosen"], log_odds, rtol=1e-5)  # mean lo
    np.testing.assert_allclose(aux["nll_loss"], -sc.sum() / nc.sum(), rtol=1e-5)
    np.testing.assert_allclose(aux["rewards/rejected"], beta * (sr / nr).mean(), rtol=1e-5)
    np.testing.assert_allclose(aux["logps/chosen"], (sc / nc).mean(), rtol=1e-5)

    grad_c, grad_r = jax.grad(lambda a, b: preference_loss(a, b, *_f32(nc, nr), **kw)[0],
                              argnums=(0, 1))(*_f32(sc, sr))
    # hand-derived: d log_odds / d a_c = 1/(1 - e^a_c), d log_odds / d a_r = -1/(1 - e^a_r)
    ac, ar = sc / nc, sr / nr
    lo = (ac - ar) - (np.log1p(-np.exp(ac)) - np.log1p(-np.exp(ar)))
    w = beta * _sigmoid(-lo) / len(sc)
    np.testing.assert_allclose(grad_c, -1 / nc.sum() - w / (1 - np.exp(ac)) / nc,
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(grad_r, w / (1 - np.exp(ar)) / nr, rtol=1e-4, atol=1e-7)
    eps = 1e-5
    e2 = np.eye(len(sr))[2] * eps
    numeric = (orpo_numpy(sc, sr + e2, nc, nr, beta)[0]
               - orpo_numpy(sc, sr - e2, nc, nr, beta)[0]) / (2 * eps)
    np.testing.assert_allclose(grad_r[2], numeric, rtol=1e-3)


def test_log1mexp_is_accurate_and_finite_near_zero():
    x = np.array([-1e-6, -1e-3, -0.5, -0.7, -2.0, -30.0])
    np.testing.assert_allclose(log1mexp(jnp.asarray(x, jnp.float32)),
                               np.log(-np.expm1(x)), rtol=1e-5, atol=1e-12)
    # probability 1 (log-prob 0): finite loss and gradient, where log1p(-exp(0)) is -inf
    g = jax.grad(lambda a: preference_loss(a, jnp.array([-4.0]), jnp.ones(1), jnp.ones(1),
                                           beta=0.1, loss="orpo")[0])(jnp.array([0.0]))
    assert np.all(np.isfinite(g))


# ---- a train step on a tiny model -----------------------------------------------------------


TINY = ModelConfig.from_preset("tiny-llama", vocab_size=64, hidden_size=32,
                               intermediate_size=48, num_layers=2, num_heads=4,
                               num_kv_heads=2)


def _pair_batch(b=4, s=16, seed=0):
    rng = np.random.default_rng(seed)
    batch = {}
    for side in ("chosen", "rejected"):
        prompt = 5
        ends = rng.integers(prompt + 2, s, b)
        pos = np.arange(s)[None]
        batch[f"{side}_input_ids"] = rng.integers(0, 64, (b, s)).astype(np.int32)
        batch[f"{side}_targets"] = rng.integers(0, 64, (b, s)).astype(np.int32)
        batch[f"{side}_loss_weights"] = ((pos >= prompt) & (pos < ends[:, None])).astype(np.float32)
        batch[f"{side}_segment_ids"] = (pos < ends[:, None] + 1).astype(np.int32)
        batch[f"{side}_positions"] = np.broadcast_to(pos, (b, s)).astype(np.int32)
    return {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.mark.parametrize("loss", ["simpo", "orpo"])
def test_train_step_reports_the_formula_and_needs_no_reference(loss):
    from solar_jax.model.transformer import init_params
    from solar_jax.train.config import TrainConfig

    cfg = TrainConfig(steps=4, learning_rate=1e-2, schedule="constant")
    optimizer, schedule = make_optimizer(cfg), make_schedule(cfg)
    params = jax.jit(lambda: init_params(TINY, 0))()
    state = {"params": params, "opt_state": optimizer.init(params),
             "step": jnp.zeros((), jnp.int32)}
    batch = _pair_batch()
    (sc, sr), (nc, nr), _ = jax.jit(lambda p, b: pair_logps(TINY, p, b, chunk=8))(params, batch)
    sc, sr, nc, nr = (np.asarray(x, np.float64) for x in (sc, sr, nc, nr))
    beta = 0.5
    want = (simpo_numpy(sc, sr, nc, nr, beta, 0.5) if loss == "simpo"
            else orpo_numpy(sc, sr, nc, nr, beta)[0])
    # no ref_* keys in the batch and no reference params: a DPO loss would fail here
    step = jax.jit(make_dpo_step(TINY, optimizer, schedule, beta=beta, loss=loss,
                                 label_smoothing=0.0, chunk=8, live_reference=False))
    losses = []
    for _ in range(3):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[0] == pytest.approx(want, rel=1e-4)
    assert losses[-1] < losses[0]
    assert metrics["finite"]
    expected = {"rewards/chosen", "rewards/margins", "logps/chosen", "logits/chosen", "nll_loss"}
    if loss == "orpo":
        expected |= {"log_odds_ratio", "log_odds_chosen"}
    assert expected <= set(metrics)


# ---- config checks and whole runs -------------------------------------------------------------


def test_reference_free_config_checks(tmp_path):
    assert not uses_reference("simpo") and not uses_reference("orpo") and uses_reference("ipo")
    with pytest.raises(SolarError, match="dpo.loss orpo is reference-free: remove reference_model"):
        load_train_config(None, ["objective=dpo", "dpo.loss=orpo", "reference_model=x"])
    with pytest.raises(SolarError, match="label_smoothing does not apply to dpo.loss orpo"):
        load_train_config(None, ["dpo.loss=orpo", "dpo.label_smoothing=0.1"])
    with pytest.raises(SolarError, match="cpo_alpha applies to dpo.loss simpo only"):
        load_train_config(None, ["dpo.loss=sigmoid", "dpo.cpo_alpha=1"])
    with pytest.raises(SolarError, match="dpo.loss must be one of"):
        load_train_config(None, ["dpo.loss=kto"])
    cfg = load_train_config(None, ["dpo.loss=simpo", "dpo.simpo_gamma=1.5", "dpo.cpo_alpha=0.2"])
    assert (cfg.dpo.simpo_gamma, cfg.dpo.cpo_alpha) == (1.5, 0.2)


@pytest.fixture
def pairs_file(tmp_path):
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}.", "rejected": f"{2 * i + 1}."}
            for i in range(8)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["simpo", "orpo"])
def test_reference_free_run_skips_the_reference(tmp_path, byte_tokenizer, pairs_file,
                                                monkeypatch, loss):
    def no_reference(*args, **kwargs):
        raise AssertionError("a reference-free loss computed reference log-probs")

    monkeypatch.setattr(objectives, "reference_table", no_reference)
    monkeypatch.setattr("solar_jax.train.dpo.make_reference_fn", no_reference)
    cfg = {"model": "tiny-llama", "tokenizer": str(byte_tokenizer),
           "model_overrides": {"vocab_size": 288, "hidden_size": 32, "intermediate_size": 64,
                               "num_layers": 2, "num_heads": 4, "num_kv_heads": 2},
           "objective": "dpo", "data": {"path": str(pairs_file), "format": "preference"},
           "seq_len": 48, "batch_size": 8, "steps": 10, "learning_rate": 5e-3,
           "schedule": "constant", "weight_decay": 0.0, "run_dir": str(tmp_path / "run"),
           "checkpoint_every": 100, "log_every": 1, "progress": False, "tensorboard": False,
           "async_checkpoint": False,
           # `live` would copy the model for a DPO loss; here it must change nothing
           "dpo": {"beta": 1.0 if loss == "simpo" else 0.2, "loss": loss, "reference": "live"}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    run = tmp_path / "run"
    assert not (run / "reference_logps.npz").exists()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 10
    keys = {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
            "rewards/margins", "logps/chosen", "logps/rejected", "nll_loss"}
    if loss == "orpo":
        keys |= {"log_odds_ratio", "log_odds_chosen"}
        # ORPO's loss is NLL(chosen) - beta * mean logsig(log odds)
        r = records[0]
        assert r["loss"] == pytest.approx(r["nll_loss"] - 0.2 * r["log_odds_ratio"], rel=1e-5)
    assert keys <= set(records[-1])
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["rewards/margins"] > records[0]["rewards/margins"]
    # the real run as `solar-jax report` sees it (its config from the checkpoint)
    from solar_jax.report import read_candidate
    row = read_candidate(run)
    assert (row.stage, row.start, row.data, row.steps) == (f"dpo ({loss})", "tiny-llama",
                                                           "pairs", 10)
    assert row.train_loss == records[-1]["loss"] and row.eval_perplexity is None
