"""Sharded inference: `load_model(path, mesh=...)` on 8 simulated CPU devices gives the
same logits, log-likelihoods and generated tokens as the model on one device.

Runs in a subprocess: the CPU device count must be set before JAX starts, and the test
process has already started it with one device.
"""

import subprocess
import sys
import textwrap

import pytest

from solar_jax.cli import main
from solar_jax.errors import SolarError
from solar_jax.placement import parse_mesh

SCRIPT = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import numpy as np
    import solar_jax
    from solar_jax.eval.scoring import Scorer
    from solar_jax.generate import generate
    from solar_jax.generate.engine import Decoder
    from solar_jax.generate.sampling import Sampler
    from solar_jax.placement import leaf_shardings, as_mesh

    path = sys.argv[1]
    config = solar_jax.ModelConfig.from_preset(
        "tiny-llama", vocab_size=256, hidden_size=128, intermediate_size=256,
        num_heads=16, num_kv_heads=8, head_dim=8, num_layers=2)
    solar_jax.save_model(solar_jax.Model(config, solar_jax.init_params(config, seed=3)), path)

    rng = np.random.default_rng(0)
    ids = rng.integers(1, 256, (4, 24))
    prompts = [rng.integers(1, 256, n).tolist() for n in (5, 11, 3, 8)]
    requests = [(rng.integers(1, 256, n).tolist(), rng.integers(1, 256, m).tolist())
                for n, m in ((6, 3), (6, 2), (12, 5), (1, 4), (30, 7))]
    requests.append((requests[0][0], [9, 9]))  # shares a context: the packed path
    # few-shot style contexts over one preamble: the shared-prefix path (its KV cache is
    # prefilled once, under the model's mesh)
    from solar_jax.eval import shared_prefix
    shared_prefix.MIN_SHARED_PREFIX = 8
    prefilled = []
    real_prefill = shared_prefix.prefill
    shared_prefix.prefill = lambda c, p, prefix: prefilled.append(prefix) or real_prefill(c, p, prefix)
    preamble = rng.integers(1, 256, 14).tolist()
    requests += [(preamble + rng.integers(1, 256, n).tolist(), rng.integers(1, 256, m).tolist())
                 for n, m in ((3, 2), (5, 1), (2, 4), (3, 3))]

    def run(model):
        logits = np.asarray(model(ids))
        scores = Scorer(model, None, batch_size=4).loglikelihood_tokens(requests)
        tokens = [c.tokens for c in generate(model, prompts, 12, ignore_eos=True)]
        sampled = [c.tokens for c in generate(model, prompts, 6, ignore_eos=True,
                                              temperature=0.7, top_k=20, seed=5)]
        return logits, scores, tokens, sampled

    ref = run(solar_jax.load_model(path))
    for spec in ("tensor=8", "fsdp=2,tensor=4", "data=2,tensor=-1"):
        model = solar_jax.load_model(path, mesh=spec)
        q = model.params["layers"]["attn"]["q_proj"]["kernel"]
        assert "tensor" in q.sharding.spec, q.sharding.spec
        shard = q.addressable_shards[0].data
        assert shard.size * model.mesh.shape["tensor"] <= q.size, (shard.shape, q.shape)
        prefilled.clear()
        logits, scores, tokens, sampled = run(model)
        assert prefilled, (spec, "the shared-prefix path was not taken")
        err = float(np.abs(logits - ref[0]).max())
        assert err < 1e-5, (spec, err)
        for (a, ga), (b, gb) in zip(scores, ref[1]):
            assert abs(a - b) < 1e-4 and ga == gb, (spec, a, b)
        assert tokens == ref[2], (spec, tokens, ref[2])
        assert sampled == ref[3], (spec, sampled, ref[3])
        decoder = Decoder(model, prompts, 4, sampler=Sampler(0.0, 0, 1.0), seed=0,
                          end_ids=(), pad_id=0, chunk=2)
        decoder.start()
        cache_spec = decoder.state.cache.k.sharding.spec
        assert cache_spec[2] == "tensor", (spec, cache_spec)  # kv heads split, not gathered
        print(spec, "ok", err)

    # The same programs from shapes alone, as `solar-jax compile` builds them: their
    # params arrive sharded exactly as load_model(mesh=) places them.
    from solar_jax.aot import rules_for
    from solar_jax.aot.programs import eval_programs, generate_programs, model_config
    from solar_jax.sharding import make_mesh
    from solar_jax.train.config import TrainConfig
    cfg = TrainConfig(model=path, seq_len=32, mesh={"fsdp": 2, "tensor": 4})
    mesh = make_mesh(cfg.mesh, jax.devices())
    sharded = solar_jax.load_model(path, mesh="fsdp=2,tensor=4")
    abstract = model_config(cfg)
    for program in [*eval_programs(cfg, abstract, mesh, rules_for(cfg), batch_size=4),
                    *generate_programs(cfg, abstract, mesh, rules_for(cfg), batch_size=2,
                                       prompt_len=20, max_new_tokens=8, chunk=4)]:
        compiled = program.lower().compile()
        program.compiled = compiled
        got = compiled.input_shardings[0][0]["layers"]["attn"]["q_proj"]["kernel"]
        want = sharded.params["layers"]["attn"]["q_proj"]["kernel"].sharding
        assert got.is_equivalent_to(want, 4), (program.name, got, want)
        assert compiled.memory_analysis().argument_size_in_bytes > 0
        print(program.name, "compiled")

    # SOLAR-10.7B at tensor=8, from shapes alone: what each chip holds, in bf16.
    solar = solar_jax.ModelConfig.from_preset("solar-10.7b")
    shardings = leaf_shardings(solar, as_mesh("tensor=8"))
    abstract = solar_jax.model.transformer.abstract_params(solar)
    per_chip = sum(2 * np.prod(s.shard_shape(a.shape)) for a, s in
                   zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)))
    total = sum(2 * np.prod(a.shape) for a in jax.tree.leaves(abstract))
    print(f"solar per chip {per_chip / 2**30:.2f} GiB of {total / 2**30:.2f} GiB")
    assert per_chip < total / 7.5 and per_chip < 3 * 2**30, per_chip
""")


@pytest.mark.slow
def test_sharded_model_matches_single_device(tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "model")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count(" ok ") == 3, result.stdout
    assert "solar per chip" in result.stdout
    assert result.stdout.count(" compiled") == 3, result.stdout


def test_mesh_spec_parses_like_the_train_config():
    assert parse_mesh("tensor=8") == {"tensor": 8}
    assert parse_mesh("fsdp=2, tensor=4") == {"fsdp": 2, "tensor": 4}
    assert parse_mesh("data=-1,tensor=2") == {"data": -1, "tensor": 2}
    for bad, message in (("tensor", "axis=size"), ("tensor=x", "must be an integer"),
                         ("tensor=2,tensor=4", "given twice")):
        with pytest.raises(SolarError, match=message):
            parse_mesh(bad)


@pytest.mark.parametrize("spec, message", [("tensor=3", "needs 3 devices"),
                                           ("pipe=1", "unknown mesh axis"),
                                           ("tensor:8", "axis=size")])
def test_bad_mesh_flag_is_one_line_error(tmp_path, capsys, spec, message):
    code = main(["generate", str(tmp_path / "missing"), "--prompt", "hi", "--mesh", spec])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
