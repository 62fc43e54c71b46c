"""Peak memory and wall time of `solar-jax convert`, both ways, against transformers.

Builds a random Mistral-shaped Hugging Face checkpoint of about --size-gb on disk (written
tensor by tensor into sharded safetensors files, never holding the model), then runs, each
in a fresh Python process so that every peak RSS belongs to one step:

    1. solar-jax convert SRC solar/            (HF -> solar-jax, orbax)
    2. solar-jax convert solar/ hf/ --to hf     (solar-jax -> HF)
    3. transformers AutoModelForCausalLM.from_pretrained(SRC, dtype=...) + save_pretrained

and two reference processes that only import (solar_jax + orbax + jax backend; torch +
transformers), so the fixed cost of an interpreter with those libraries is visible.

Peak RSS is the child's own VmHWM from /proc/self/status (exact, kept by the kernel; not
ru_maxrss, which Linux seeds with the parent's high-water mark across fork + exec); a 20 ms
poll of /proc/PID/status adds the split into anonymous and file-backed pages (mmap'd
safetensors count as file-backed RSS). After step 2 every tensor of the re-exported HF
folder is compared with the source, one tensor at a time.

The goal (issue 2): peak RSS <= 2 x the largest stacked parameter + a small constant, in
both directions. The constant is taken as the RSS of the import-only solar-jax process.

    .venv/bin/python benchmarks/convert_memory.py                 # ~2 GB bf16
    .venv/bin/python benchmarks/convert_memory.py --size-gb 0.2 --dtype fp32 --keep
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GIB = 2**30
NUM_LAYERS = 32
NUM_HEADS = 32
NUM_KV_HEADS = 8
VOCAB = 32000
MLP_RATIO = 3.5
DTYPES = {"bf16": ("bfloat16", 2), "fp32": ("float32", 4)}


# --------------------------------------------------------------------------- the model

def mistral_shape(size_bytes: float, itemsize: int) -> dict:
    """Mistral-7B's ratios (32 layers, intermediate 3.5 x hidden, 32 heads / 8 kv heads,
    head_dim = hidden / 32, vocab 32000, untied head) with hidden chosen so that
    params x itemsize is about size_bytes. hidden is a multiple of 64 (even head_dim)."""
    # per layer: q, o: h^2; k, v: h^2/4 each; mlp: 3 * 3.5 h^2; 2 norms: 2h
    # plus embed + lm_head: 2 V h, final norm: h
    a = NUM_LAYERS * (2 + 0.5 + 3 * MLP_RATIO)
    b = 2 * VOCAB + 2 * NUM_LAYERS + 1
    target = size_bytes / itemsize
    hidden = (-b + math.sqrt(b * b + 4 * a * target)) / (2 * a)
    hidden = max(64, round(hidden / 64) * 64)
    return {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "vocab_size": VOCAB,
        "hidden_size": hidden,
        "intermediate_size": int(MLP_RATIO * hidden),
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "num_key_value_heads": NUM_KV_HEADS,
        "head_dim": hidden // NUM_HEADS,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "initializer_range": 0.02,
        "use_cache": True,
        "attention_bias": False,
    }


def hf_tensor_specs(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """HF names and shapes in model order, from the family's parameter table."""
    from solar_jax.config import ModelConfig

    config = ModelConfig.from_hf(cfg)
    rows = config.arch.params_for(config)
    specs = [(r.hf_name, r.hf_shape(r.shape(config))) for r in rows if not r.stacked][:1]
    for n in range(config.num_layers):  # HF order: the embedding, each layer, then the rest
        specs += [(r.hf_name.format(i=n), r.hf_shape(r.shape(config))) for r in rows if r.stacked]
    specs += [(r.hf_name, r.hf_shape(r.shape(config))) for r in rows if not r.stacked][1:]
    return specs


def largest_stacked_param(cfg: dict, itemsize: int) -> tuple[str, int]:
    """Biggest leaf of the solar-jax pytree (a kernel stacked over layers, or the
    embedding), from the family's parameter table."""
    from solar_jax.config import ModelConfig

    config = ModelConfig.from_hf(cfg)
    sizes = {r.name: math.prod(r.shape(config)) * (config.num_layers if r.stacked else 1)
             for r in config.arch.params_for(config)}
    name = max(sizes, key=sizes.get)
    return name, sizes[name] * itemsize


def _write_shard(path: Path, specs, fetch) -> None:
    """One safetensors file, header from shapes, then each tensor as it is generated."""
    import numpy as np

    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype in specs:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        header[name] = {"dtype": {"bfloat16": "BF16", "float32": "F32"}[dtype.name],
                        "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, shape, dtype in specs:
            array = np.ascontiguousarray(fetch(name, shape))
            assert array.dtype == dtype and array.shape == tuple(shape)
            f.write(array.reshape(-1).view(np.uint8).data)  # bf16 has no buffer protocol
            del array


def write_random_checkpoint(dst: Path, cfg: dict, dtype_name: str, shard_bytes: int,
                            seed: int = 0) -> int:
    """Random HF folder, one tensor in memory at a time. Returns the bytes of weights."""
    import ml_dtypes
    import numpy as np

    from solar_jax.checkpoint.safetensors_io import plan_shards

    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype_name == "bfloat16" else np.dtype(np.float32)
    rng = np.random.default_rng(seed)
    specs = [(name, shape, np_dtype) for name, shape in hf_tensor_specs(cfg)]

    def fetch(name: str, shape):
        x = rng.standard_normal(shape, dtype=np.float32)
        if name.endswith("norm.weight"):
            x *= 0.05
            x += 1.0
        else:
            x *= 0.02
        return x.astype(np_dtype, copy=False)

    dst.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(specs, shard_bytes)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        fname = ("model.safetensors" if len(shards) == 1
                 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors")
        _write_shard(dst / fname, shard, fetch)
        for name, shape, dt in shard:
            weight_map[name] = fname
            total += int(np.prod(shape)) * dt.itemsize
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (dst / "config.json").write_text(json.dumps({**cfg, "torch_dtype": dtype_name}, indent=2) + "\n")
    (dst / "generation_config.json").write_text(
        json.dumps({"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}) + "\n")
    return total


# --------------------------------------------------------------------------- the child

def _status(key: str) -> int:
    """A /proc/self/status figure in bytes: VmRSS (now) or VmHWM (peak of this process)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def child_main(step: str, args: list[str], result_path: str) -> None:
    """Runs one step in this (fresh) process and writes its own figures as JSON."""
    t_start = time.perf_counter()
    extra: dict = {}
    if os.environ.get("CONVERT_MEMORY_PRELOAD"):
        import runpy
        runpy.run_path(os.environ["CONVERT_MEMORY_PRELOAD"])
    if step in ("import_solar", "to_solar", "to_hf"):
        import solar_jax  # noqa: F401
        from solar_jax import cli
        if step == "import_solar":
            # everything a conversion touches: orbax and an initialised jax CPU backend
            import jax
            import orbax.checkpoint  # noqa: F401
            from orbax.checkpoint.experimental.v1 import partial  # noqa: F401
            jax.devices()
    else:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM
        extra["transformers"] = transformers.__version__
        extra["torch"] = torch.__version__
    rss_after_imports = _status("VmRSS")
    hwm_after_imports = _status("VmHWM")
    t0 = time.perf_counter()
    if step == "to_solar":
        src, dst = args
        rc = cli.main(["convert", src, dst])
        assert rc == 0, rc
    elif step == "to_hf":
        src, dst = args
        rc = cli.main(["convert", src, dst, "--to", "hf"])
        assert rc == 0, rc
    elif step == "transformers":
        src, dst, dtype_name = args
        dtype = getattr(torch, dtype_name)
        major = int(transformers.__version__.split(".")[0])
        kw = {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}
        model = AutoModelForCausalLM.from_pretrained(src, **kw)
        extra["load_s"] = time.perf_counter() - t0
        model.save_pretrained(dst)
    t1 = time.perf_counter()
    out = {"step_s": t1 - t0, "imports_s": t0 - t_start,
           "rss_after_imports": rss_after_imports, "hwm_after_imports": hwm_after_imports,
           "peak_rss": _status("VmHWM"),
           # not used: Linux carries the parent's high-water mark into a forked+exec'd
           # child's ru_maxrss, so it over-reports whenever the parent is bigger
           "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, **extra}
    Path(result_path).write_text(json.dumps(out))


# --------------------------------------------------------------------------- the parent

def _poll(pid: int, peaks: dict, stop: threading.Event, period: float = 0.02) -> None:
    keys = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    key = keys.get(line.split(":", 1)[0] + ":")
                    if key:
                        peaks[key] = max(peaks.get(key, 0), int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
        stop.wait(period)


def run_repeated(step: str, args: list[str], workdir: Path, preload: str | None,
                 repeat: int, dst: Path | None = None) -> dict:
    """run_step `repeat` times (DST removed before each); keeps the fastest run's figures
    and the highest peak RSS over all runs."""
    runs = []
    for _ in range(repeat):
        if dst is not None:
            shutil.rmtree(dst, ignore_errors=True)
        r = run_step(step, args, workdir, preload)
        if "failed" in r:
            return r
        runs.append(r)
    best = dict(min(runs, key=lambda r: r["step_s"]))
    best["peak_rss"] = max(r["peak_rss"] for r in runs)
    best["all_step_s"] = [r["step_s"] for r in runs]
    best["all_peak_rss"] = [r["peak_rss"] for r in runs]
    return best


def run_step(step: str, args: list[str], workdir: Path, preload: str | None = None) -> dict:
    result = workdir / f"result-{step}.json"
    result.unlink(missing_ok=True)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    if preload:
        env["CONVERT_MEMORY_PRELOAD"] = str(Path(preload).absolute())
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", step, str(result), *args]
    peaks: dict = {}
    stop = threading.Event()
    with open(workdir / f"log-{step}.txt", "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        poller = threading.Thread(target=_poll, args=(proc.pid, peaks, stop), daemon=True)
        poller.start()
        _, status, _ = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        stop.set()
        poller.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not result.is_file():
        tail = (workdir / f"log-{step}.txt").read_text().strip().splitlines()
        error = tail[-1] if tail else f"exit {proc.returncode}"
        print(f"step {step} FAILED (exit {proc.returncode}): {error}", flush=True)
        print("\n".join("    " + line for line in tail[-12:]), flush=True)
        out = {"failed": error}
    else:
        out = json.loads(result.read_text())
    out["process_s"] = wall
    out["poll_peaks"] = peaks
    return out


def verify_roundtrip(src: Path, out: Path) -> int:
    """Every tensor of `out` equals `src` (bitwise), one tensor at a time."""
    from safetensors import safe_open

    def where(folder: Path) -> dict[str, Path]:
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            return {n: folder / f for n, f in json.loads(index.read_text())["weight_map"].items()}
        with safe_open(folder / "model.safetensors", framework="pt") as f:
            return {n: folder / "model.safetensors" for n in f.keys()}  # noqa: SIM118

    a, b = where(src), where(out)
    if set(a) != set(b):
        raise SystemExit(f"round trip changed the tensor set: only in source "
                         f"{sorted(set(a) - set(b))[:5]}, only in output {sorted(set(b) - set(a))[:5]}")
    import torch
    for name in a:
        with safe_open(a[name], framework="pt") as fa, safe_open(b[name], framework="pt") as fb:
            x, y = fa.get_tensor(name), fb.get_tensor(name)
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(
                x.view(torch.int16) if x.dtype == torch.bfloat16 else x.view(torch.int32),
                y.view(torch.int16) if y.dtype == torch.bfloat16 else y.view(torch.int32)):
            raise SystemExit(f"round trip changed {name}: {x.dtype}{tuple(x.shape)} vs "
                             f"{y.dtype}{tuple(y.shape)}")
        del x, y
    return len(a)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def machine_info() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), "?")
    except OSError:
        pass
    free = subprocess.run(["free", "-g"], check=False, capture_output=True, text=True).stdout.strip()
    versions = {"python": platform.python_version()}
    for dist in ("jax", "orbax-checkpoint", "tensorstore", "numpy", "transformers", "torch",
                 "safetensors"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = "?"
    return {"nproc": os.cpu_count(), "cpu": cpu, "free_g": free, "versions": versions,
            "kernel": platform.release()}


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        child_main(sys.argv[2], sys.argv[4:], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=2.0,
                    help="approximate weight bytes of the random checkpoint, in GB (1e9)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--workdir", default=None, help="default: a fresh temp dir under /tmp")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints afterwards")
    ap.add_argument("--shard-size-gb", type=float, default=1.0,
                    help="shard size of the random source checkpoint (default 1 GB)")
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each measured step N times: fastest wall time, highest peak RSS")
    ap.add_argument("--json", default=None, help="also write all figures to this JSON file")
    ap.add_argument("--child-preload", default=None, metavar="FILE.py",
                    help="run this Python file in every measured process before its step "
                         "(to try a patch without editing the library)")
    opts = ap.parse_args()

    dtype_name, itemsize = DTYPES[opts.dtype]
    cfg = mistral_shape(opts.size_gb * 1e9, itemsize)
    leaf_name, leaf_bytes = largest_stacked_param(cfg, itemsize)
    workdir = Path(opts.workdir) if opts.workdir else Path(tempfile.mkdtemp(prefix="convert_memory-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    src, solar, hf_out, tf_out = (workdir / "src_hf", workdir / "solar", workdir / "hf_roundtrip",
                                  workdir / "transformers_out")
    for p in (src, solar, hf_out, tf_out):
        shutil.rmtree(p, ignore_errors=True)
    try:
        info = machine_info()
        print(f"machine: {info['nproc']} CPUs ({info['cpu']}), kernel {info['kernel']}; "
              + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
        print(f"workdir {workdir}")
        print(f"model: hidden {cfg['hidden_size']}, intermediate {cfg['intermediate_size']}, "
              f"{cfg['num_hidden_layers']} layers, heads {cfg['num_attention_heads']}/"
              f"{cfg['num_key_value_heads']}, head_dim {cfg['head_dim']}, vocab {cfg['vocab_size']}, "
              f"{opts.dtype}", flush=True)
        t0 = time.perf_counter()
        total = write_random_checkpoint(src, cfg, dtype_name, int(opts.shard_size_gb * 1e9))
        n_shards = len(list(src.glob("*.safetensors")))
        print(f"wrote random source: {total / 1e9:.3f} GB ({total / GIB:.3f} GiB, "
              f"{total // itemsize / 1e9:.3f} B params) in {n_shards} shards, "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        print(f"largest stacked param: {leaf_name} = {leaf_bytes / 1e6:.1f} MB "
              f"({gib(leaf_bytes)} GiB)", flush=True)

        results = {}
        load_before = os.getloadavg()
        pre = opts.child_preload
        results["import_solar"] = run_step("import_solar", [], workdir, pre)
        if not opts.skip_transformers:
            results["import_hf"] = run_step("import_hf", [], workdir, pre)
        print("baselines measured", flush=True)
        rep = opts.repeat
        results["to_solar"] = run_repeated("to_solar", [str(src), str(solar)], workdir, pre, rep,
                                           solar)
        _done("HF -> solar", results["to_solar"])
        if "failed" not in results["to_solar"]:
            results["to_hf"] = run_repeated("to_hf", [str(solar), str(hf_out)], workdir, pre, rep,
                                            hf_out)
            _done("solar -> HF", results["to_hf"])
        if "failed" not in results.get("to_hf", {"failed": 1}):
            t0 = time.perf_counter()
            n = verify_roundtrip(src, hf_out)
            print(f"round trip verified: {n} tensors bitwise equal "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
        if not opts.skip_transformers:
            results["transformers"] = run_repeated(
                "transformers", [str(src), str(tf_out), dtype_name], workdir, pre, rep, tf_out)
            _done("transformers", results["transformers"])
        sizes = {name: dir_bytes(path) for name, path in
                 (("source", src), ("solar", solar), ("hf_roundtrip", hf_out),
                  ("transformers_out", tf_out)) if path.exists()}

        constant = results["import_solar"].get("peak_rss", 0)
        goal = 2 * leaf_bytes + constant
        tf = results.get("transformers")
        tf = None if tf is None or "failed" in tf else tf
        rows = [("solar-jax HF -> solar", "to_solar"), ("solar-jax solar -> HF", "to_hf"),
                ("transformers from_pretrained + save_pretrained", "transformers")]
        print()
        print(report_table(results, rows, leaf_bytes, tf))
        print()
        print(f"largest stacked param ({leaf_name}): {gib(leaf_bytes)} GiB; constant (RSS of an "
              f"import-only solar-jax process): {gib(constant)} GiB")
        print(f"goal: peak RSS <= 2 x {gib(leaf_bytes)} + {gib(constant)} = {gib(goal)} GiB")
        for label, key in rows[:2]:
            r = results.get(key)
            if r is None or "failed" in r:
                print(f"  {label}: FAILED / not run")
                continue
            peak = r["peak_rss"]
            verdict = "meets" if peak <= goal else "EXCEEDS"
            print(f"  {label}: peak {gib(peak)} GiB -> {verdict} the goal by "
                  f"{(peak - goal) / 2**20:+.0f} MiB (peak - constant = "
                  f"{(peak - constant) / leaf_bytes:.2f} x largest)")
        print(f"load average (1 min) before / after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f} "
              f"on {os.cpu_count()} CPUs (other work on the machine inflates wall times)")
        print("on-disk sizes: " + ", ".join(f"{k} {gib(v)} GiB" for k, v in sizes.items()))
        if opts.json:
            Path(opts.json).write_text(json.dumps(
                {"config": cfg, "dtype": opts.dtype, "total_bytes": total, "largest": [leaf_name, leaf_bytes],
                 "constant": constant, "goal": goal, "sizes": sizes, "results": results,
                 "machine": info, "argv": sys.argv,
                 "loadavg_before_after": [load_before, os.getloadavg()]}, indent=2))
    finally:
        if opts.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _done(label: str, r: dict) -> None:
    if "failed" not in r:
        print(f"{label} done: {r['step_s']:.1f} s, peak RSS {gib(r['peak_rss'])} GiB", flush=True)


def report_table(results: dict, rows, leaf_bytes: int, tf: dict | None) -> str:
    head = ("| step | wall s (step) | wall s (process) | peak RSS GiB | RSS after imports GiB "
            "| peak anon / file GiB | peak RSS / largest | wall vs transformers | RSS vs transformers |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for label, key in rows:
        r = results.get(key)
        if r is None:
            continue
        if "failed" in r:
            lines.append(f"| {label} | FAILED: {r['failed'][:80]} |" + " - |" * 7)
            continue
        peaks = r["poll_peaks"]
        vs_wall = f"{r['step_s'] / tf['step_s']:.2f}x" if tf else "-"
        vs_rss = f"{r['peak_rss'] / tf['peak_rss']:.2f}x" if tf else "-"
        lines.append(f"| {label} | {r['step_s']:.1f} | {r['process_s']:.1f} | {gib(r['peak_rss'])} | "
                     f"{gib(r['rss_after_imports'])} | {gib(peaks.get('anon', 0))} / "
                     f"{gib(peaks.get('file', 0))} | {r['peak_rss'] / leaf_bytes:.2f} | "
                     f"{vs_wall} | {vs_rss} |")
    for label, key in (("(import solar_jax + orbax + jax backend only)", "import_solar"),
                       ("(import torch + transformers only)", "import_hf")):
        r = results.get(key)
        if r is not None:
            lines.append(f"| {label} | - | {r['process_s']:.1f} | {gib(r['peak_rss'])} | "
                         f"{gib(r['rss_after_imports'])} | - | {r['peak_rss'] / leaf_bytes:.2f} | - | - |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
