"""The shipped SOLAR-10.7B recipe configs fit the slice each names (`topology:`), with at
least 10% of HBM per chip to spare.

Compiled by XLA:TPU at the config's own topology, batch, mesh, remat and attention. To keep
CI's time, each is compiled with 4 and 8 layers of SOLAR's widths and extrapolated to its
48 (solar_jax/aot/scaling.py: memory is affine in the layer count of the scanned stack);
benchmarks/tpu_compile.py checks that against the full 48-layer compile. Never skipped:
without libtpu it fails, saying to run `make test`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from solar_jax.aot.scaling import compile_extrapolated
from solar_jax.aot.topology import have_packages, missing_packages_message
from solar_jax.train import load_train_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "solar-10.7b"
GiB = 1024 ** 3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pretrain", "sft", "dpo"])
def test_recipe_config_fits_its_topology(name):
    if not have_packages("tpu"):
        pytest.fail(missing_packages_message("tpu"))
    cfg = load_train_config(CONFIGS / f"{name}.yaml")
    assert cfg.topology, f"{name}.yaml names no topology"
    rows, reports = compile_extrapolated(cfg)
    assert reports[0]["topology"]["name"] == cfg.topology
    for row in rows:
        # Per-layer memory is positive: the extrapolation is not of noise.
        assert row["total_bytes_per_layer"] > 0, row
        assert row["hbm_margin"] >= 0.10, (
            f"{name}.yaml {row['program']}: {row['total_bytes'] / GiB:.1f} GiB of "
            f"{row['hbm_bytes'] / GiB:.1f} GiB per chip at {cfg.topology}")
