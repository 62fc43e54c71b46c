"""A hostile user at the CLI (issue 18), part two: usage mistakes, flags that do nothing
(a warning, not silence), chat commands, and paths in config files. Every case asserts the
exit status, a single stderr line, and nothing half-written.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from hostile_helpers import hf, leftovers, one_line  # noqa: F401 (fixtures)
from solar_jax.cli import main


# ---- usage mistakes and flags that do nothing ---------------------------------------------


@pytest.mark.parametrize("argv", [
    ["upscale", "a.gguf", "dst", "smol.yaml"],          # the issue's: no --m / --recipe
    ["upscale", "a.gguf", "dst"],
    ["merge", "a", "b"],                                 # --out is required
    ["eval", "model", "--data", "x.jsonl"],              # --task is required
    ["convert", "a", "b", "--to", "onnx"],
    ["generate", "m", "--prompt", "x", "--temperature", "hot"],
    ["nonsense"],
    [],
])
def test_usage_mistakes_are_one_error_line(argv, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert captured.out == ""
    if argv and argv[0] != "nonsense":
        assert line.startswith(f"error: solar-jax {argv[0]}:"), line


@pytest.mark.slow  # four decodes, each compiled: ~15-30 s on 2 busy cores
def test_generate_warnings_and_printed_seed(hf, capsys):
    # flags greedy decoding ignores, --system without --chat, and a prompt that leaves
    # less room than --max-new-tokens: each said, not silent
    assert main(["generate", str(hf), "--prompt", "x" * 60, "--system", "be brief",
                 "--max-new-tokens", "10", "--seed", "3", "--top-k", "5"]) == 0
    err = capsys.readouterr().err
    assert "warning: --system has no effect without --chat" in err
    assert "warning: --top-k, --seed have no effect with greedy decoding" in err
    assert "warning: max-new-tokens 10 shortened to 4" in err
    outs, seeds = [], []
    for _ in range(2):
        assert main(["generate", str(hf), "--prompt", "hi", "--max-new-tokens", "8",
                     "--temperature", "1.0"]) == 0
        captured = capsys.readouterr()
        seed_line = [x for x in captured.err.splitlines() if x.startswith("seed: ")]
        assert len(seed_line) == 1, captured.err
        seeds.append(int(seed_line[0].split()[1]))
        outs.append(captured.out)
    assert seeds[0] != seeds[1]
    # the printed seed repeats the run
    assert main(["generate", str(hf), "--prompt", "hi", "--max-new-tokens", "8",
                 "--temperature", "1.0", "--seed", str(seeds[1])]) == 0
    assert capsys.readouterr().out == outs[1]


def test_chat_commands_confirm_and_unknown_ones_get_help(hf, capsys, monkeypatch):
    from solar_jax.generate import chat as chat_lib
    sent = []
    monkeypatch.setattr(chat_lib.ChatSession, "ask",
                        lambda self, text, on_text=None: sent.append(text) or "")
    monkeypatch.setattr(sys, "stdin", io.StringIO("/helo\n/reset\n//slash\nhi\n/exit\nlate\n"))
    assert main(["chat", str(hf)]) == 0
    err = capsys.readouterr().err
    assert "unknown command /helo" in err and "/reset" in err
    assert "(conversation reset)" in err
    assert sent == ["/slash", "hi"]


def test_eval_limit_fewshot_pool_samples_and_max_length(hf, tmp_path, capsys):
    from conftest import DATA
    data = tmp_path / "gsm8k.jsonl"
    data.write_bytes(b"".join((DATA / "gsm8k_train.jsonl").read_bytes().splitlines(True)[:9]))
    out = tmp_path / "res" / "results.json"
    # 5-shot with --limit 2: the examples come from all 9 records (the issue: "needs at
    # least 6 examples to draw from, have 5" before)
    assert main(["eval", str(hf), "--task", "gsm8k", "--data", str(data), "--limit", "2",
                 "--max-gen-tokens", "2", "--max-length", "100000", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: max-length 100000 is above the model's context of 64 tokens" in err
    results = json.loads(out.read_text())
    assert results["n"] == 2 and results["max_length"] == 64
    first = json.loads(data.read_text().splitlines()[0])
    assert first["question"] in results["samples"][0]["question"]
    assert results["samples"][0]["prompt"].endswith(results["samples"][0]["question"])
    assert leftovers(out.parent) == []


def test_eval_flags_without_effect_warn(hf, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question. " * 3)
    assert main(["eval", str(hf), "--task", "perplexity", "--data", str(text),
                 "--max-gen-tokens", "5", "--num-fewshot", "2"]) == 0
    err = capsys.readouterr().err
    assert "warning: --max-gen-tokens has no effect on perplexity" in err
    assert "warning: --num-fewshot has no effect on perplexity" in err


def test_limit_prompts_equal_the_first_prompts_of_a_full_run():
    from conftest import DATA
    from solar_jax.eval.tasks import load_docs
    path = DATA / "gsm8k_train.jsonl"
    full = load_docs("gsm8k", path, limit=None)  # all 7,473 documents
    limited = load_docs("gsm8k", path, limit=3)
    assert [d.prompt for d in limited] == [d.prompt for d in full[:3]]
    assert len(limited) == 3


# ---- config files and the rest ----------------------------------------------------------


def test_config_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    from solar_jax.errors import SolarError
    from solar_jax.train import load_train_config
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "corpus.txt").write_text("hello\n")
    (tmp_path / "cfg" / "train.yaml").write_text(yaml.safe_dump(
        {"model": "tiny-llama", "data": {"path": "corpus.txt"}, "run_dir": "../runs/x",
         "steps": 100, "warmup_steps": 20}))
    monkeypatch.chdir(ROOT)
    cfg = load_train_config(tmp_path / "cfg" / "train.yaml")
    assert cfg.data.path == str(tmp_path / "cfg" / "corpus.txt")
    assert cfg.run_dir == str(tmp_path / "runs" / "x") and cfg.model == "tiny-llama"
    # command-line overrides stay relative to the current directory
    cfg = load_train_config(tmp_path / "cfg" / "train.yaml", ["data.path=here.txt"])
    assert cfg.data.path == "here.txt"
    with pytest.raises(SolarError, match="lower warmup_steps too"):
        load_train_config(tmp_path / "cfg" / "train.yaml", ["steps=10"])
    # the shipped configs still find their data from any directory
    monkeypatch.chdir(tmp_path)
    shipped = load_train_config(ROOT / "configs" / "train-tiny-cpu.yaml")
    assert Path(shipped.data.path).is_file()
    from solar_jax.ablate import load_ablate_config
    study = load_ablate_config(ROOT / "configs" / "ablate-smollm2-cpu.yaml")
    assert Path(study.eval_data).is_file() and study.model == "smollm2-gguf"


def test_plurals():
    from solar_jax.ablate.config import plural
    assert plural(1, "step") == "1 step" and plural(2, "warmup step") == "2 warmup steps"
    assert plural(0, "row") == "0 rows"
    assert "1 warmup steps" not in (ROOT / "docs" / "ablate" / "report.md").read_text()


# ---- the console command's exit ----------------------------------------------------------


def test_console_exit_skips_only_the_cycle_collector(tmp_path):
    """The console path (argv None) turns the cyclic collector off for the teardown, and
    nothing else: the exit status stands, and atexit handlers (orbax's, tempfile's) still
    run. An in-process call leaves the collector as it found it."""
    import gc
    import os
    import subprocess

    marker = tmp_path / "atexit_ran"
    child = (
        "import atexit, gc, pathlib, sys\n"
        "from solar_jax import cli\n"
        f"atexit.register(lambda: pathlib.Path({str(marker)!r}).write_text('yes'))\n"
        "sys.argv = ['solar-jax', 'eval', 'm', '--data', 'x.jsonl']\n"  # a usage mistake: 2
        "rc = cli.main()\n"
        "print('collector', gc.isenabled())\n"
        "sys.exit(rc)\n")
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                            env={**os.environ, "SOLAR_JAX_HUGEPAGES": "0"})
    assert result.returncode == 2, result.stderr
    assert "collector False" in result.stdout
    assert marker.read_text() == "yes"
    assert main(["eval", "m", "--data", "x.jsonl"]) == 2 and gc.isenabled()
