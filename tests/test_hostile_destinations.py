"""A hostile user at the CLI (issue 18), part one: destinations that are, hold or sit
inside an input, and an overwrite that replaces the old output only once the new one is
complete. Every case asserts the inputs' bytes are unchanged, the exit status, a single
stderr line, and nothing half-written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from hostile_helpers import ckpt, hf, leftovers, one_line, tree_digest  # noqa: F401 (fixtures)
from solar_jax.cli import main


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
