"""The Pallas kernels compiled for real hardware, without the hardware: Mosaic for TPU v5e,
v5p and v6e, Triton (through ptxas, sm_90a) for H100, forward and forward+backward.

Each case is a real shape: head_dim 64 and 128, the target's own tile sizes (several tiles
per sequence), GQA ratios 1, 3, 4, 8 and MQA, segment ids, sliding windows, bidirectional
attention and sequences that are not a multiple of the tile. The sequences are as short as
those tiles allow: compile time follows the tiles, not the length.

The compiles run in one subprocess per target (solar_jax.kernels.aot), all started at
once: the GPU compile needs JAX_PLATFORMS=cpu before JAX starts, and in parallel they use
both of CI's cores. They need the test extras (libtpu, the CUDA plugin, absl-py); without
them the tests fail and say so, they never skip.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from solar_jax.kernels.aot import Case

pytestmark = pytest.mark.slow

CASES = [
    Case("mha_d128_segments", head_dim=128, heads=4, kv_heads=4, seq=2048, segments=True),
    Case("gqa3_d128_window_ragged", head_dim=128, heads=6, kv_heads=2, seq=1800, window=512),
    Case("gqa4_d64_segments_window", head_dim=64, heads=8, kv_heads=2, seq=2048,
         segments=True, window=700, batch=2),
    Case("gqa8_d64_ragged", head_dim=64, heads=16, kv_heads=2, seq=2500),
    Case("mqa_d128_bidirectional_segments_ragged", head_dim=128, heads=4, kv_heads=1,
         seq=1800, segments=True, causal=False),
]
PROGRAMS = [c for case in CASES for c in (case, dataclasses.replace(case, grad=False))]
# What the compiler must refuse: a 4096 x 4096 fp32 score tile is 64 MiB of VMEM.
REFUSED = Case("vmem_overflow", head_dim=128, heads=1, kv_heads=1, seq=4096, grad=False,
               blocks=(4096,) * 6)
TARGETS = {"v5e": PROGRAMS + [REFUSED], "v5p": PROGRAMS, "v6e": PROGRAMS, "h100": PROGRAMS}
KIND = {"v5e": "TPU v5 lite", "v5p": "TPU v5", "v6e": "TPU v6 lite",
        "h100": "NVIDIA H100 80GB HBM3"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Starts every target's compiles at once; {target: Popen} to wait on."""
    folder = tmp_path_factory.mktemp("aot")
    # libtpu takes a machine-wide lock unless told that several processes may load it.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
    procs = {}
    for target, cases in TARGETS.items():
        path = folder / f"{target}.json"
        path.write_text(json.dumps([dataclasses.asdict(c) for c in cases]))
        procs[target] = subprocess.Popen(
            [sys.executable, "-m", "solar_jax.kernels.aot", target, str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()


def results(compiled, target) -> dict:
    proc = compiled[target]
    out, err = proc.communicate(timeout=1200)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 0, "\n".join(errors) or err[-3000:]
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(rows) == len(TARGETS[target]), out[-2000:]
    return {(r["case"]["name"], r["case"]["grad"]): r for r in rows}


@pytest.mark.parametrize("target", TARGETS)
def test_kernels_compile_for(compiled, target):
    rows = results(compiled, target)
    tpu = target != "h100"
    for case in PROGRAMS:
        row = rows[case.name, case.grad]
        label = f"{target} {case.name} {'fwd+bwd' if case.grad else 'fwd'}"
        assert row["ok"], f"{label}: {row['error']}"
        # Traced for the target, not for the host CPU: its kernels, tiles and "auto".
        assert row["target"] == {"platform": "tpu" if tpu else "gpu",
                                 "device_kind": KIND[target]}, label
        assert row["auto"] == ("pallas" if tpu else "xla"), label
        assert row["kernel_calls"] == (3 if case.grad else 1), label  # compiled, not interpreted
        # Flash attention never holds a [seq, seq] score matrix (fp32: 4 bytes a score).
        scores = 4 * case.batch * case.heads * case.seq ** 2
        assert row["memory"]["temp"] < scores / 4, (label, row["memory"])
        if tpu:  # the kernels' cost estimates reach XLA's cost model (else ~0 FLOPs)
            keys = min(case.seq, case.window or case.seq)
            floor = case.batch * case.heads * case.seq * keys * case.head_dim
            assert row["cost"]["flops"] > floor, (label, row["cost"])
    if target == "v5e":
        row = rows[REFUSED.name, False]
        assert not row["ok"] and "vmem" in row["error"].lower(), row.get("error", row)
