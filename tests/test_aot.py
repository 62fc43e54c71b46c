"""`solar-jax compile`: real XLA:TPU (libtpu) and XLA:GPU (CUDA plugin, ptxas) compiles with
no accelerator attached, on a tiny model; exit codes 0 / 1 / 2; the topology table.

These never skip: without libtpu or the CUDA plugin they fail, saying to run `make test`
(which installs the test extras)."""

from __future__ import annotations

import json

import pytest

from solar_jax.aot.topology import GENERATIONS, have_packages, missing_packages_message, parse_topology
from solar_jax.cli import main
from solar_jax.errors import SolarError

TINY = ["model=tiny-llama", "seq_len=128", "batch_size=8", "remat=full", "compute_dtype=bfloat16"]


def require(platform: str) -> None:
    if not have_packages(platform):
        pytest.fail(missing_packages_message(platform))


def compile_cli(tmp_path, capsys, *args):
    out = tmp_path / "report.json"
    code = main(["compile", "configs/train-tiny-cpu.yaml", *args, "--out", str(out)])
    captured = capsys.readouterr()
    report = json.loads(out.read_text()) if out.exists() else None
    return code, captured, report


@pytest.mark.parametrize("name, chips, shape", [
    ("v5p-128", 64, (4, 4, 4)), ("v4-8", 4, (2, 2, 1)), ("v4-256", 128, (4, 4, 8)),
    ("v5e-256", 256, (16, 16)), ("v5litepod-8", 8, (2, 4)), ("v6e-64", 64, (8, 8)),
    ("v5e-1", 1, (1, 1)), ("h100-8", 8, (1, 8)), ("h200-16", 16, (2, 8))])
def test_topology_names(name, chips, shape):
    topo = parse_topology(name)
    assert (topo.chips, topo.shape) == (chips, shape)
    assert topo.hbm_bytes == GENERATIONS[topo.generation.name].hbm_bytes


@pytest.mark.parametrize("name", ["v5p-6", "v3-8", "tpu", "h100-12", "v5e-3"])
def test_bad_topology_names(name):
    with pytest.raises(SolarError):
        parse_topology(name)


@pytest.mark.slow
def test_tpu_train_fits_with_report(tmp_path, capsys):
    """A tiny lm step compiled by XLA:TPU for v5p-8 (4 chips) with Pallas (Mosaic)
    attention, fsdp over the chips: every number of the report there and sane."""
    require("tpu")
    code, captured, report = compile_cli(
        tmp_path, capsys, *TINY, "attention_impl=pallas", "mesh={data: 1, fsdp: -1}",
        "--topology", "v5p-8")
    assert code == 0, captured.err
    (row,) = report["programs"]
    assert report["mesh"] == {"dcn": 1, "data": 1, "fsdp": 4, "tensor": 1}
    assert row["program"] == "train" and row["fits"]
    assert 0 < row["total_bytes"] < row["hbm_bytes"] == int(95.74 * 1024 ** 3)
    assert row["argument_bytes"] > 0 and row["temp_bytes"] > 0
    assert row["estimated_step_seconds"] > 0 and 0 < row["estimated_mfu"] < 1
    rate = row["compiler_flops_per_chip"] / row["compiler_optimal_seconds"]
    assert row["estimated_mfu"] == pytest.approx(rate / GENERATIONS["v5p"].peak_bf16_flops)
    assert "train" in captured.out and "est. MFU" in captured.out


@pytest.mark.slow
def test_tpu_two_slices(tmp_path, capsys):
    """--num-slices 2: a dcn axis of 2 across two v5p-8 slices, fsdp within each. The
    compiler's time estimate comes out negative for multi-slice programs: none is shown."""
    require("tpu")
    code, captured, report = compile_cli(tmp_path, capsys, *TINY, "mesh={fsdp: -1}",
                                         "--topology", "v5p-8", "--num-slices", "2")
    assert code == 0, captured.err
    assert report["mesh"] == {"dcn": 2, "data": 1, "fsdp": 4, "tensor": 1}
    assert report["topology"]["total_chips"] == 8 and report["fits"]
    assert "estimated_mfu" not in report["programs"][0]


@pytest.mark.slow
def test_gpu_train_and_generate_fit(tmp_path, capsys):
    """XLA:GPU for 8 H100s: the train step, eval's scoring forward, generate's prefill
    and decode loop. No cost estimate exists on GPU. (The Triton kernels' own compiles for
    H100 are tested with the kernels.)"""
    require("cuda")
    code, captured, report = compile_cli(tmp_path, capsys, *TINY, "attention_impl=xla",
                                         "--topology", "h100-8", "--program", "all")
    assert code == 0, captured.err
    names = [r["program"] for r in report["programs"]]
    assert names == ["train", "eval", "prefill", "decode"]
    assert all(r["fits"] and r["total_bytes"] > 0 for r in report["programs"])
    assert "estimated_mfu" not in report["programs"][0]


def test_does_not_fit_is_one_line_exit_1(tmp_path, capsys):
    """fp32 master weights + Adam moments of a 4M x 1024 embedding (48 GiB) on a 16 GiB
    v5e chip: exit 1, one line naming the program, the need, the HBM and what to change."""
    require("tpu")
    code, captured, report = compile_cli(
        tmp_path, capsys, "model=tiny-llama", "model_overrides={vocab_size: 4194304, "
        "hidden_size: 1024, num_layers: 1, num_heads: 8, num_kv_heads: 8, intermediate_size: 64}",
        "seq_len=128", "batch_size=1", "--topology", "v5e-1")
    assert code == 1
    lines = captured.err.strip().splitlines()
    assert lines[-1].startswith("error: does not fit: train needs ") and "16.0 GiB" in lines[-1]
    assert "remat=full" in lines[-1] and "v5e-2" in lines[-1]
    assert not [line for line in lines[:-1] if not line.startswith("compiling ")]
    assert report is not None and not report["fits"]


@pytest.mark.parametrize("args, message", [
    (["--topology", "v9-8"], "unknown topology"),
    (["mesh={data: 3}", "--topology", "v5p-8"], "needs 3 devices"),
    (["--topology", "h100-8", "--num-slices", "2"], "num-slices"),
    ([], "no topology")])
def test_bad_input_exit_2(tmp_path, capsys, args, message):
    code, captured, report = compile_cli(tmp_path, capsys, "model=tiny-llama", *args)
    assert code == 2 and report is None
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("error: ") and message in line
