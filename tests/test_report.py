"""`solar-jax report`: the paper-style table from hand-written run directories, eval
results and merge recipes (and a real merge's recorded recipe)."""

from __future__ import annotations

import csv
import io
import json

import pytest
import yaml

from solar_jax.cli import main
from solar_jax.errors import SolarError
from solar_jax.recipes import parse_recipe, recipe_to_dict
from solar_jax.report import collect, format_report, read_candidate


def _run_dir(root, name, config, records, step=None, raw_lines=()):
    """A run directory as `solar-jax train` leaves it: metrics.jsonl and a checkpoint whose
    `run` item holds {"config": ..., "model_config": ...}."""
    run = root / name
    run.mkdir(parents=True)
    lines = [json.dumps(r) for r in records] + list(raw_lines)
    (run / "metrics.jsonl").write_text("".join(x + "\n" for x in lines))
    if config is not None:
        ckpt = run / "checkpoints" / str(step or records[-1]["step"]) / "run"
        ckpt.mkdir(parents=True)
        (ckpt / "metadata").write_text(json.dumps({"config": config, "model_config": {}}))
    return run


MIXTURE = {"model": "runs/base_model", "objective": "sft",
           "data": {"path": "", "format": "alpaca", "mixture": [
               {"path": "data/instructions.jsonl", "format": "alpaca", "weight": 0.7},
               {"path": "data/math/sft.jsonl", "format": "gsm8k", "weight": 0.3,
                "name": "math", "limit": 500}]},
           "dpo": {"loss": "sigmoid"}}


@pytest.fixture
def runs(tmp_path):
    v1 = _run_dir(tmp_path, "sft_v1", {"model": "smollm2", "objective": "sft",
                                       "data": {"path": "data/instructions.jsonl",
                                                "format": "alpaca", "fraction": 0.25}},
                  [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5},
                   {"step": 2, "eval/loss": 2.0, "eval/perplexity": 7.389,
                    "eval/gsm8k/exact_match": 0.0, "eval/gsm8k/exact_match_flexible": 0.125,
                    "eval/gsm8k/n": 8}])
    # resumed after a kill: step 3 logged twice (the later one counts), a torn last line,
    # two evaluations (the last one counts)
    v3 = _run_dir(tmp_path, "sft_v3", MIXTURE,
                  [{"step": 2, "loss": 2.9, "eval/perplexity": 20.0},
                   {"step": 3, "loss": 2.8}, {"step": 3, "loss": 2.7},
                   {"step": 4, "loss": 2.6, "eval/perplexity": 12.5,
                    "eval/gsm8k/exact_match_flexible": 0.25}],
                  raw_lines=['{"step": 5, "loss": 2.'])
    return tmp_path, v1, v3


def test_runs_give_data_steps_loss_and_eval(runs):
    _, v1, v3 = runs
    a, b = collect([v1, v3])
    assert (a.candidate, a.stage, a.start, a.data) == ("sft_v1", "sft", "smollm2",
                                                       "instructions (first 25%)")
    assert (a.steps, a.train_loss, a.eval_perplexity) == (2, 2.5, 7.389)
    assert (a.gsm8k_exact_match, a.gsm8k_n) == (0.125, 8)
    assert b.data == "instructions 0.7 + math 0.3 (first 500)"
    assert [s["name"] for s in b.sources] == ["instructions", "math"]
    assert b.sources[1]["format"] == "gsm8k" and b.start == "base_model"
    assert (b.steps, b.train_loss, b.eval_perplexity, b.gsm8k_exact_match) == (4, 2.6, 12.5,
                                                                               0.25)
    assert b.gsm8k_n is None

    table = format_report([a, b]).splitlines()
    assert table[0] == ("| candidate | stage | from | data | steps | train loss | held-out ppl "
                        "| GSM8K EM | GSM8K n |")
    assert table[2] == ("| sft_v1 | sft | smollm2 | instructions (first 25%) | 2 | 2.5000 | "
                        "7.389 | 0.1250 | 8 |")
    assert table[3].endswith("| 4 | 2.6000 | 12.500 | 0.2500 |  |")

    rows = list(csv.DictReader(io.StringIO(format_report([a, b], "csv"))))
    assert rows[1]["data"] == "instructions 0.7 + math 0.3 (first 500)"
    assert float(rows[0]["eval_perplexity"]) == 7.389 and rows[1]["gsm8k_n"] == ""
    js = json.loads(format_report([a, b], "json"))
    assert js[0]["eval"]["eval/loss"] == 2.0 and js[1]["sources"][1]["limit"] == 500


def test_eval_results_files_win_over_metrics(runs):
    _, v1, _ = runs
    # `solar-jax eval --out` writes one task's results per file
    (v1 / "eval_results.json").write_text(json.dumps(
        {"task": "gsm8k", "n": 50, "exact_match": 0.3, "exact_match_flexible": 0.34,
         "num_fewshot": 5, "samples": [{"id": "0"}], "model": "x"}))
    (v1 / "eval_results_ppl.json").write_text(json.dumps(
        [{"task": "perplexity", "n": 10, "perplexity": 5.5, "bits_per_byte": 1.1}]))
    c = read_candidate(v1)
    assert (c.gsm8k_exact_match, c.gsm8k_n, c.eval_perplexity) == (0.34, 50, 5.5)
    assert c.eval_results["perplexity"]["bits_per_byte"] == 1.1
    assert "samples" not in c.eval_results["gsm8k"]
    # a mapping task -> results is read too
    (v1 / "eval_results_ppl.json").unlink()
    (v1 / "eval_results.json").write_text(json.dumps({"perplexity": {"perplexity": 4.0}}))
    c = read_candidate(v1)
    assert (c.eval_perplexity, c.gsm8k_exact_match) == (4.0, 0.125)  # gsm8k from metrics


def test_missing_values_are_empty_cells(tmp_path):
    bare = tmp_path / "bare"
    (bare / "checkpoints").mkdir(parents=True)  # a run killed before its first checkpoint
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    rows = format_report(collect([bare, model])).splitlines()
    assert rows[2] == "| bare |  |  |  |  |  |  |  |  |"
    assert rows[3] == "| model | model |  |  |  |  |  |  |  |"
    # no metrics.jsonl: steps from final_metrics.json, else the checkpoint
    _run_dir(tmp_path, "ck", {"objective": "dpo", "dpo": {"loss": "orpo"}, "data": {}},
             [{"step": 7}])
    (tmp_path / "ck" / "metrics.jsonl").unlink()
    # an eval task given a name logs under it (eval/<name>/<metric>)
    named = _run_dir(tmp_path, "named", {"objective": "sft", "eval_tasks": [
        {"task": "gsm8k", "name": "gsm8k_test", "data": "t.jsonl", "limit": 4}]},
        [{"step": 1, "loss": 1.0}, {"step": 1, "eval/gsm8k_test/exact_match_flexible": 0.75,
                                    "eval/gsm8k_test/n": 4}])
    assert (read_candidate(named).gsm8k_exact_match, read_candidate(named).gsm8k_n) == (0.75, 4)
    c = read_candidate(tmp_path / "ck")
    assert (c.stage, c.steps, c.train_loss, c.data) == ("dpo (orpo)", 7, None, "")


def test_merge_recipe_gives_parents_and_method(tmp_path):
    m = tmp_path / "sft_v3_v4"
    m.mkdir()
    (m / "solar_config.json").write_text("{}")
    (m / "mergekit_config.yml").write_text(yaml.safe_dump(
        {"merge_method": "linear", "models": [
            {"model": "runs/sft_v3", "parameters": {"weight": 0.5}},
            {"model": "runs/sft_v4", "parameters": {"weight": 0.5}}],
         "parameters": {"normalize": True}}))
    (m / "eval_results.json").write_text(json.dumps({"task": "gsm8k", "n": 8,
                                                     "exact_match_flexible": 0.5}))
    c = read_candidate(m)
    assert (c.kind, c.stage, c.data, c.method) == ("merge", "merge (linear)",
                                                   "sft_v3 0.5 + sft_v4 0.5", "linear")
    assert (c.steps, c.train_loss, c.gsm8k_exact_match) == (None, None, 0.5)
    (m / "mergekit_config.yml").write_text(yaml.safe_dump(
        {"merge_method": "slerp", "base_model": "a", "parameters": {"t": 0.3},
         "slices": [{"sources": [{"model": "a", "layer_range": [0, 4]},
                                 {"model": "b", "layer_range": [0, 4]}]}]}))
    assert read_candidate(m).data == "a -> b (t=0.3)"


def _tiny_hf_model(path, seed):
    """A random tiny HF folder written by solar-jax itself (no torch: this test is cheap)."""
    import jax
    import numpy as np

    from solar_jax.checkpoint.memory_source import MemorySource
    from solar_jax.checkpoint.writers import write_hf
    from solar_jax.config import ModelConfig
    from solar_jax.model.transformer import abstract_params

    config = ModelConfig.from_preset("tiny-llama", vocab_size=64, hidden_size=16,
                                     intermediate_size=32, num_layers=2, num_heads=2,
                                     num_kv_heads=1)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32),
                          abstract_params(config))
    write_hf(MemorySource(config, params), path)


def test_real_merge_records_its_recipe(tmp_path):
    for name, seed in (("sft_v3", 0), ("sft_v4", 1)):
        _tiny_hf_model(tmp_path / name, seed)
    out = tmp_path / "merged"
    assert main(["merge", str(tmp_path / "sft_v3"), str(tmp_path / "sft_v4"), "--out", str(out),
                 "--method", "linear", "--weights", "0.6", "0.4", "--to", "hf"]) == 0
    recorded = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert recorded["merge_method"] == "linear"
    assert [m["parameters"]["weight"] for m in recorded["models"]] == [0.6, 0.4]
    c = read_candidate(out)
    assert (c.stage, c.data) == ("merge (linear)", "sft_v3 0.6 + sft_v4 0.4")
    # the recorded recipe reads back as the same recipe
    again = parse_recipe(recorded)
    assert recipe_to_dict(again) == recorded


def test_recipe_round_trip_slices_form():
    data = {"merge_method": "passthrough",
            "slices": [{"sources": [{"model": "m", "layer_range": [0, 24]}]},
                       {"sources": [{"model": "m", "layer_range": [8, 32],
                                     "parameters": {"scale": 0.5}}]}],
            "dtype": "bfloat16"}
    assert recipe_to_dict(parse_recipe(data)) == data


def test_cli_formats_out_file_and_errors(runs, capsys):
    root, v1, v3 = runs
    out = root / "tables" / "report.md"
    assert main(["report", str(v1), str(v3), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed and "| sft_v3 | sft |" in printed
    assert main(["report", str(v1), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["steps"] == 2

    (root / "empty").mkdir()
    cases = [([str(root / "nope")], "does not exist"),
             ([str(v1), str(root / "empty")], "is neither a training run"),
             ([str(v1), "--format", "xml"], "unknown report format 'xml'")]
    for argv, message in cases:
        assert main(["report", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    (v1 / "eval_results.json").write_text("{not json")
    with pytest.raises(SolarError, match="eval_results.json is not valid JSON"):
        read_candidate(v1)


def test_eval_dir_holds_results_written_beside_a_model(tmp_path, capsys):
    """`solar-jax eval --out` may not write inside the model it reads (the destination
    guard), so a merge's results live in EVAL_DIR/<name>/, which --eval-dir reads."""
    m = tmp_path / "sft_v3_v4"
    m.mkdir()
    (m / "solar_config.json").write_text("{}")
    evals = tmp_path / "evals"
    (evals / "sft_v3_v4").mkdir(parents=True)
    (evals / "sft_v3_v4" / "eval_results.json").write_text(json.dumps(
        {"task": "gsm8k", "n": 8, "exact_match_flexible": 0.25}))
    (evals / "sft_v3_v4" / "eval_results_perplexity.json").write_text(json.dumps(
        {"task": "perplexity", "perplexity": 12.5}))
    assert read_candidate(m).gsm8k_exact_match is None
    [c] = collect([m], eval_dir=evals)
    assert (c.gsm8k_exact_match, c.gsm8k_n, c.eval_perplexity) == (0.25, 8, 12.5)
    assert main(["report", str(m), "--eval-dir", str(evals), "--format", "csv"]) == 0
    assert "12.5" in capsys.readouterr().out
    assert main(["report", str(m), "--eval-dir", str(tmp_path / "none")]) == 2
    assert "eval_dir" in capsys.readouterr().err
    # the reason for the option: eval refuses to write inside its model
    assert main(["eval", str(m), "--task", "perplexity", "--data", str(m / "solar_config.json"),
                 "--out", str(m / "eval_results.json")]) == 2
    assert "lies inside the input" in capsys.readouterr().err
