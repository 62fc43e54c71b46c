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
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ckpt_gen import (DTYPES, GIB, largest_stacked_param, machine_info,  # noqa: E402
                       mistral_shape, write_random_checkpoint)

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


def run_interleaved(steps: list[tuple[str, list[str], Path]], workdir: Path,
                    preload: str | None, repeat: int) -> dict:
    """Each round runs every step once, in order (DST removed before each), so the peer and
    solar-jax see the same load on a shared machine; per step: the fastest run's figures,
    the highest peak RSS, and every run's wall time (`all_step_s`, one per round)."""
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in steps}
    failed: dict[str, dict] = {}
    for _ in range(repeat):
        for name, args, dst in steps:
            if name in failed or (name == "to_hf" and "to_solar" in failed):
                continue
            shutil.rmtree(dst, ignore_errors=True)
            r = run_step(name, args, workdir, preload)
            if "failed" in r:
                failed[name] = r
                continue
            runs[name].append(r)
            _done(name, r)
    out = dict(failed)
    for name, rs in runs.items():
        if name in failed or not rs:
            continue
        best = dict(min(rs, key=lambda r: r["step_s"]))
        best["peak_rss"] = max(r["peak_rss"] for r in rs)
        best["all_step_s"] = [r["step_s"] for r in rs]
        best["all_process_s"] = [r["process_s"] for r in rs]
        best["all_peak_rss"] = [r["peak_rss"] for r in rs]
        out[name] = best
    return out


def paired_ratio(results: dict, ours: list[str], peer: str, key: str) -> float | None:
    """Median over rounds of (sum of our steps) / peer, each round's runs side by side."""
    if any(k not in results or "failed" in results[k] for k in (*ours, peer)):
        return None
    rounds = zip(*(results[k][key] for k in ours), results[peer][key])
    ratios = sorted(sum(r[:-1]) / r[-1] for r in rounds)
    return ratios[len(ratios) // 2] if len(ratios) % 2 else \
        (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2


def run_step(step: str, args: list[str], workdir: Path, preload: str | None = None) -> dict:
    result = workdir / f"result-{step}.json"
    result.unlink(missing_ok=True)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    if preload:
        env["CONVERT_MEMORY_PRELOAD"] = str(Path(preload).absolute())
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", step, str(result), *args]
    # Untimed: the page cache's dirty pages go to disk first, so the previous step's
    # write-back (transformers never fsyncs; the source was just generated) is not paid
    # inside the next step's time.
    os.sync()
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
                    help="N interleaved rounds of the measured steps (to_solar, to_hf, "
                         "transformers): fastest wall time, highest peak RSS, paired ratios")
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
        steps = [("to_solar", [str(src), str(solar)], solar),
                 ("to_hf", [str(solar), str(hf_out)], hf_out)]
        if not opts.skip_transformers:
            steps.append(("transformers", [str(src), str(tf_out), dtype_name], tf_out))
        results.update(run_interleaved(steps, workdir, pre, opts.repeat))
        if "failed" not in results.get("to_hf", {"failed": 1}):
            t0 = time.perf_counter()
            n = verify_roundtrip(src, hf_out)
            print(f"round trip verified: {n} tensors bitwise equal "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)
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
        for key, what in (("all_step_s", "step"), ("all_process_s", "whole process")):
            ratio = paired_ratio(results, ["to_solar", "to_hf"], "transformers", key)
            if ratio is not None:
                print(f"round trip HF -> solar -> HF vs transformers load + save ({what} wall, "
                      f"median of {opts.repeat} paired rounds): {ratio:.2f}x")
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
