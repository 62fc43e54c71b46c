"""A hostile user at the CLI (issue 18): destinations that are, hold or sit inside an
input; interrupts at every moment of a write; usage mistakes; flags that do nothing.

Every case asserts the inputs' bytes are unchanged, the exit status, a single stderr line,
and nothing half-written. In-process `main([...])` where that suffices; real subprocesses
(a few, each pays the jax import) for signals, stopped at named points through the
SOLAR_JAX_TEST_PAUSE_AT hook so that the signal lands exactly there.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, make_hf_model, write_byte_tokenizer
from solar_jax.cli import main


def tree_digest(path: Path) -> dict[str, str]:
    """Every file under `path` (or the file itself) -> sha256 of its bytes."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path) if p != path else p.name):
            hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def leftovers(folder: Path) -> list[str]:
    """Staging or backup names a writer left behind."""
    return sorted(p.name for p in Path(folder).iterdir()
                  if ".partial-" in p.name or ".old-" in p.name)


def one_line(err: str, start: str = "error:") -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(start), err
    return lines[0]


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """A tiny HF model (byte tokenizer, so generate/chat/eval run) in ckpt/smol."""
    root = tmp_path_factory.mktemp("hostile")
    path = root / "ckpt" / "smol"
    make_hf_model(path, vocab_size=258, max_position_embeddings=64, bos_token_id=256,
                  eos_token_id=257)
    write_byte_tokenizer(path)
    return path


@pytest.fixture
def ckpt(hf, tmp_path):
    """A fresh copy of ckpt/ (so a bad guard would destroy a copy, not the fixture)."""
    import shutil
    shutil.copytree(hf.parent, tmp_path / "ckpt")
    return tmp_path / "ckpt" / "smol"


# ---- the destination guard -------------------------------------------------------------


def _overlapping_destinations(src: Path) -> dict[str, str]:
    link = src.parent.parent / "link"
    link.symlink_to(src, target_is_directory=True)
    return {"parent": str(src.parent),                    # contains the input
            "grandparent": str(src.parent.parent),
            "child": str(src / "out"),                    # lies inside the input
            "symlink": str(link),                         # is the input, by another name
            "dotdot": str(src / ".." / src.name),         # is the input, through ..
            "dot": f"{src.parent}/./{src.name}"}


def test_convert_and_upscale_refuse_overlapping_destinations(ckpt, capsys):
    before = tree_digest(ckpt.parent.parent)
    for name, dst in _overlapping_destinations(ckpt).items():
        for argv in (["convert", str(ckpt), dst, "--overwrite"],
                     ["convert", str(ckpt), dst, "--to", "hf", "--overwrite"],
                     ["upscale", str(ckpt), dst, "--m", "1", "--overwrite"]):
            assert main(argv) == 2, (name, argv)
            line = one_line(capsys.readouterr().err)
            assert ("is the input" in line or "contains the input" in line
                    or "lies inside the input" in line), line
    after = tree_digest(ckpt.parent.parent)
    after.pop("link", None)
    assert after == {k: v for k, v in before.items() if k != "link"}
    assert (ckpt / "config.json").is_file() and not (ckpt / "out").exists()


def test_gguf_export_and_merge_refuse_inputs(ckpt, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["convert", str(ckpt), str(other)]) == 0
    capsys.readouterr()
    before = {p: tree_digest(p) for p in (ckpt, other)}
    cases = [
        ["convert", str(ckpt), str(ckpt / "model.gguf"), "--to", "gguf"],      # inside
        ["convert", str(other), str(other / "x.gguf"), "--to", "gguf", "--overwrite"],
        # the case: --out inside an input replaced that input's params/
        ["merge", str(ckpt), str(other), "--out", str(other / "params"), "--method",
         "linear", "--overwrite"],
        ["merge", str(ckpt), str(other), "--out", str(tmp_path), "--method", "linear",
         "--overwrite"],
        ["merge", str(ckpt), "--out", str(tmp_path / "m1"), "--method", "linear"],
        ["merge", str(ckpt), "--base", str(ckpt), "--out", str(tmp_path / "m2"),
         "--method", "task_arithmetic"],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        one_line(capsys.readouterr().err)
    assert {p: tree_digest(p) for p in (ckpt, other)} == before
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()


def test_merge_recipe_file_is_an_input(ckpt, tmp_path, capsys):
    recipe = tmp_path / "r" / "recipe.yaml"
    recipe.parent.mkdir()
    recipe.write_text(yaml.safe_dump({"merge_method": "linear", "models": [
        {"model": str(ckpt), "parameters": {"weight": 0.5}},
        {"model": str(ckpt), "parameters": {"weight": 0.5}}]}))
    assert main(["merge", "--recipe", str(recipe), "--out", str(recipe.parent),
                 "--overwrite"]) == 2
    assert "contains the input" in one_line(capsys.readouterr().err)
    assert recipe.is_file()


def test_overwrite_replaces_only_after_the_new_output_is_complete(ckpt, tmp_path, capsys,
                                                                  monkeypatch):
    dst = tmp_path / "out"
    assert main(["convert", str(ckpt), str(dst), "--to", "hf"]) == 0
    old = tree_digest(dst)
    from solar_jax.checkpoint import writers

    def broken(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(writers, "write_safetensors", broken)
    with pytest.raises(OSError):
        main(["convert", str(ckpt), str(dst), "--to", "hf", "--overwrite"])
    assert tree_digest(dst) == old and leftovers(tmp_path) == []
    monkeypatch.undo()
    (dst / "extra.txt").write_text("from the old destination")
    assert main(["convert", str(ckpt), str(dst), "--overwrite"]) == 0  # solar over hf
    from solar_jax.checkpoint.solar_format import is_solar_checkpoint
    assert not (dst / "extra.txt").exists() and is_solar_checkpoint(dst)
    umask = os.umask(0)
    os.umask(umask)
    assert dst.stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir would make it
    assert leftovers(tmp_path) == [] and sorted(os.listdir(tmp_path)) == ["ckpt", "out"]


def test_build_math_and_eval_out_refuse_their_input(tmp_path, capsys):
    from conftest import DATA
    data = tmp_path / "d" / "sft.jsonl"
    data.parent.mkdir()
    data.write_bytes(b"".join((DATA / "gsm8k_train.jsonl").read_bytes().splitlines(True)[:8]))
    before = tree_digest(data)
    assert main(["build-math", str(data), str(data.parent), "--overwrite"]) == 2
    assert "is the input" in one_line(capsys.readouterr().err)
    assert main(["build-math", str(data), str(data.parent / "sub")]) == 0  # beside it: fine
    capsys.readouterr()
    for out in (str(data), str(data.parent / ".." / "d" / "sft.jsonl")):
        assert main(["eval", "no-model", "--task", "gsm8k", "--data", str(data),
                     "--out", out]) == 2
        assert "--out" in one_line(capsys.readouterr().err)
    assert tree_digest(data) == before


def test_train_run_dir_guard(ckpt, tmp_path, capsys):
    from solar_jax.train import load_train_config
    from solar_jax.train.run_dir import check_run_dir
    from solar_jax.errors import SolarError

    data = tmp_path / "corpus.txt"
    data.write_text("to be or not to be\n\nthat is the question\n")
    before = tree_digest(ckpt)
    for run_dir, what in ((ckpt, "is the input"), (ckpt.parent, "contains the input"),
                          (ckpt / "run", "lies inside the input"),
                          (tmp_path, "contains the input")):  # holds the data file
        cfg = load_train_config(None, [f"model={ckpt}", f"data.path={data}",
                                       f"run_dir={run_dir}", "steps=1"])
        with pytest.raises(SolarError, match=what):
            check_run_dir(cfg)
    # through the CLI: one line, and the model folder gets no checkpoints/ or tokenizer
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"model": str(ckpt), "data": {"path": str(data)},
                                      "run_dir": str(ckpt), "steps": 1}))
    assert main(["train", str(config)]) == 2
    assert "run_dir" in one_line(capsys.readouterr().err)
    assert tree_digest(ckpt) == before
    # a run dir that is the model is a resume of that run: allowed
    run = tmp_path / "runs" / "a"
    (run / "checkpoints").mkdir(parents=True)
    check_run_dir(load_train_config(None, [f"model={run}", f"data.path={data}",
                                           f"run_dir={run}"]))


def test_ablate_out_dir_guard(ckpt, capsys):
    before = tree_digest(ckpt)
    study = ckpt.parent / "study.yaml"
    study.write_text(yaml.safe_dump({"model": "smol", "eval_data": "smol/config.json",
                                     "m": [1], "out_dir": ".", "seq_len": 16}))
    assert main(["ablate", str(study)]) == 2  # out_dir "." (the config's folder) holds smol
    assert "out_dir" in one_line(capsys.readouterr().err)
    assert tree_digest(ckpt) == before


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


# ---- interrupts: real processes, real signals ---------------------------------------------


def _spawn(argv, tmp_path, pause=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SOLAR_JAX_COMPILE_CACHE": "off"}
    marker = tmp_path / f"paused-{pause}"
    if pause:
        env.update(SOLAR_JAX_TEST_PAUSE_AT=pause, SOLAR_JAX_TEST_PAUSE_FILE=str(marker))
    proc = subprocess.Popen([sys.executable, "-m", "solar_jax.cli", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, marker


def _interrupt_at(argv, tmp_path, pause, sig):
    proc, marker = _spawn(argv, tmp_path, pause)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            pytest.fail(f"never reached {pause}: rc={proc.returncode} {out} {err}")
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.parametrize("pause,sig,command", [
    ("startup", signal.SIGINT, "convert"),    # before jax is even imported
    ("read", signal.SIGTERM, "convert"),      # a leaf read, nothing staged yet
    ("write", signal.SIGINT, "upscale"),      # the issue's: upscale --to hf mid-write
    ("rename", signal.SIGINT, "merge"),       # complete in staging, not yet committed
    ("swap", signal.SIGTERM, "convert"),      # between the renames: rolled back
    ("write", signal.SIGTERM, "gguf"),        # GGUF export mid-file
])
def test_interrupt_leaves_the_previous_destination_or_nothing(ckpt, tmp_path, pause, sig,
                                                               command):
    out_root = tmp_path / "out"
    out_root.mkdir()
    dst = out_root / ("model.gguf" if command == "gguf" else "dst")
    previous = None
    if command == "convert":  # an existing destination, replaced with --overwrite
        dst.mkdir()
        (dst / "keep.txt").write_text("the previous destination")
        previous = tree_digest(dst)
    argv = {"convert": ["convert", str(ckpt), str(dst), "--to", "hf", "--overwrite"],
            "upscale": ["upscale", str(ckpt), str(dst), "--m", "1", "--to", "hf"],
            "merge": ["merge", str(ckpt), str(ckpt), "--out", str(dst), "--method", "linear"],
            "gguf": ["convert", str(ckpt), str(dst), "--to", "gguf", "--no-tokenizer"]}[command]
    inputs = tree_digest(ckpt)
    rc, out, err = _interrupt_at(argv, tmp_path, pause, sig)
    assert rc == 128 + sig, (rc, out, err)
    assert err.strip() == "interrupted", err
    assert out == ""
    assert tree_digest(ckpt) == inputs
    if previous is not None:
        assert tree_digest(dst) == previous
    else:
        assert not dst.exists()
    assert leftovers(out_root) == []


def test_interrupt_during_imports_is_one_line(ckpt, tmp_path):
    """No pause hook: SIGINT lands wherever start-up is (importing jax, parsing, opening
    the source); the answer is the same single line."""
    proc, _ = _spawn(["convert", str(ckpt), str(tmp_path / "dst")], tmp_path)
    time.sleep(1.5)  # past the interpreter's own start (the handlers go in first thing)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the conversion finished before the signal")
    assert (proc.returncode, err.strip()) == (130, "interrupted"), err
    assert not (tmp_path / "dst").exists() and leftovers(tmp_path) == []


# The gc-callback cases run in a subprocess of their own: a signal sent to the test
# process itself would reach pytest's (or an xdist worker's) handlers, and a stray one would
# end whichever test runs next.
GC_CASE = """
import gc, signal, sys, threading, time
from solar_jax import interrupts

started = []
class CountingTimer(threading.Timer):
    def start(self):
        started.append(self)
        super().start()
interrupts.threading.Timer = CountingTimer
calls = int(sys.argv[1])
def callback(phase, info):
    global calls
    if phase == "start" and calls:
        calls -= 1
        interrupts.handler(signal.SIGINT, sys._getframe())  # as if it landed here
interrupts.install()
gc.callbacks.append(callback)
try:
    gc.collect()
    gc.collect()
    gc.callbacks.remove(callback)
    time.sleep(5)  # the re-sent signal interrupts this sleep
    print("not interrupted")
except interrupts.Interrupted as e:
    time.sleep(0.3)  # a second re-send, if any, would land here (and be counted)
    print(e.exit_code, len(started))
"""


@pytest.mark.parametrize("callbacks", [1, 2])
def test_a_signal_inside_a_gc_callback_is_resent_once(callbacks):
    """jax's `_xla_gc_callback` case: an exception raised inside a gc callback is printed
    as "Exception ignored" and lost. The handler defers it and re-sends the signal, once
    even when a second gc callback comes before it arrives (a second re-send would land
    after the first had ended the command)."""
    out = subprocess.run([sys.executable, "-c", GC_CASE, str(callbacks)], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["130", "1"], out.stdout + out.stderr
