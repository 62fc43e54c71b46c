"""Train-step throughput and MFU of solar-jax beside PyTorch + transformers, and the compile
time of the scanned layer stack at 4 vs 48 layers.

Everything runs in one process on the CPU, on the SmolLM2-135M shape (vocab 49152, hidden
576, 30 layers, 9/3 heads, tied embeddings), fp32 params, fp32 compute (--dtype bfloat16:
bf16 compute in both), random init:

  solar-jax   make_train_step + compile_train_step (the code `solar-jax train` runs): chunked
              cross-entropy, optax AdamW (TrainConfig defaults: lr 3e-4 cosine, betas
              0.9/0.95, eps 1e-8, weight decay 0.1 masked off the norms), global-norm clip
              1.0, on a one-device mesh (XLA's CPU client uses every core for one device).
  PyTorch     transformers LlamaForCausalLM from ModelConfig.to_hf() (same shape, tied
              embeddings), `model(input_ids, labels=...).loss`, loss.backward(),
              clip_grad_norm_(1.0), torch.optim.AdamW with the same betas/eps/weight decay
              (no decay on norms, as optax's mask), torch.set_num_threads(--threads).

Both get the same batch of random tokens (--batch x --seq; one document per row, every loss
weight 1; torch gets solar-jax's targets as `shift_labels`, so both predict the same
batch x seq tokens). The two are timed in alternating rounds (jax, torch, jax, torch, ...)
so that background load on a shared machine hits both alike; each round is --steps steps,
after --warmup untimed steps. Every step is timed on its own (the JAX step waited for with
block_until_ready). tokens/s = batch x seq / step time. The table shows the best step (on a
shared machine the least disturbed one, the closest to an idle machine) and the median
step; the goal is judged on best steps. CPU-s/step is the process CPU time per step (all
threads): less sensitive to other jobs than wall time, but inflated by spin-waiting.

MFU = model FLOPs per second / measured peak, model FLOPs = flops_per_token x tokens/s with
solar_jax.train.metrics.flops_per_token (6 x params, the tied head counted once, plus
12 x layers x heads x head_dim x seq for the attention matmuls). The peak is measured in the
same run: a jitted 2048 x 2048 @ 2048 x 2048 matmul of --dtype in JAX and the same matmul in
torch (best of --peak-reps each); the denominator is the faster of the two, so neither
framework's MFU is flattered by the other's slower GEMM. "MFU (CPU time)" divides model
FLOPs per CPU-second by the matmul's FLOPs per CPU-second instead. The same model FLOPs
count is used for both frameworks, and neither is credited for recomputation (with --remat
the backward pass recomputes layer activations; solar-jax's fused cross-entropy builds each
chunk's logits once, forming their gradient right away, so the LM head is not recomputed).

The two steps and the measurements around them are in benchmarks/train_step_runners.py.

Compile time: `jax.jit(step, shardings, donation).lower(abstract state, batch).compile()`
for the same step at --small-layers and --large-layers (other dims of SmolLM2), with fresh
step functions each time, alternating sizes for --compile-reps; best of the repetitions.

    .venv/bin/python benchmarks/train_step.py                 # defaults: 5 steps x 2 rounds
    .venv/bin/python benchmarks/train_step.py --steps 2 --rounds 5 --json out.json
    .venv/bin/python benchmarks/train_step.py --skip-torch --skip-compile --loss-chunk 128
    XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= .venv/bin/python benchmarks/train_step.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax

from solar_jax.train.metrics import flops_per_token
from train_step_runners import (JaxRunner, TorchRunner, compile_time, jax_matmul_flops,
                                loadavg, machine_info, make_batch, model_config,
                                torch_matmul_flops, train_config)

GOAL_SPEEDUP = 1.0  # issue 19: the CPU train step at PyTorch's pace
GOAL_COMPILE_RATIO = 1.3


# --------------------------------------------------------------------------- main

def native_bf16() -> bool:
    """Whether the CPU multiplies bf16 natively (AVX512_BF16 or AMX-BF16)."""
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def summarize(rounds: list[list[tuple[float, float]]], tokens: int, per_token: float,
              peak: float, peak_per_cpu_s: float) -> dict:
    """Per-step statistics over all timed steps of all rounds. On a shared machine the best
    (fastest) step is the least disturbed one; the median shows the typical disturbance."""
    walls = [w for r in rounds for w, _ in r]
    cpus = [c for r in rounds for _, c in r]
    best, median = min(walls), statistics.median(walls)
    return {"step_wall_s": [[w for w, _ in r] for r in rounds],
            "step_cpu_s": [[c for _, c in r] for r in rounds],
            "step_s_best": best, "step_s_median": median,
            "tokens_per_s_best": tokens / best, "tokens_per_s_median": tokens / median,
            "round_step_s_median": [statistics.median(w for w, _ in r) for r in rounds],
            "cpu_s_per_step_best": min(cpus),
            "mfu": per_token * tokens / best / peak,
            "mfu_cpu_time": per_token * tokens / min(cpus) / peak_per_cpu_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
    ap.add_argument("--rounds", type=int, default=2,
                    help="alternating jax/torch timing rounds of --steps each")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-compile", action="store_true",
                    help="skip the 4-vs-48-layer compile-time measurement")
    ap.add_argument("--skip-step", action="store_true",
                    help="only the compile-time measurement")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--torch-attn", default="sdpa", help="attn_implementation (sdpa, eager)")
    ap.add_argument("--torch-fused-adamw", action="store_true",
                    help="torch.optim.AdamW(fused=True) instead of the default")
    ap.add_argument("--loss-chunk", type=int, default=0,
                    help="TrainConfig.loss_chunk (0 = its default, 512, i.e. min(512, seq))")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="compute dtype of both frameworks (params stay fp32): solar-jax's "
                         "compute_dtype, torch.autocast('cpu', bfloat16); also the peak's")
    ap.add_argument("--remat", default="none", choices=["none", "full", "save_dots", "save_qkv"])
    ap.add_argument("--small-layers", type=int, default=4)
    ap.add_argument("--large-layers", type=int, default=48)
    ap.add_argument("--compile-reps", type=int, default=2)
    ap.add_argument("--peak-size", type=int, default=2048)
    ap.add_argument("--peak-reps", type=int, default=10)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    jax.config.update("jax_platforms", "cpu")
    info = machine_info()
    print(f"machine: nproc={info['nproc']} cpu={info['cpu']!r} devices={info['jax_devices']}")
    print(f"versions: {info['versions']}")
    print(f"XLA_FLAGS={info['xla_flags']!r}  load average at start: {loadavg()}", flush=True)

    cfg = train_config(args)
    config = model_config(cfg)
    batch = make_batch(args.batch, args.seq, config.vocab_size, cfg.seed)
    tokens = args.batch * args.seq
    per_token = flops_per_token(config, args.seq)
    results: dict = {"machine": info, "args": vars(args), "flops_per_token": per_token,
                     "num_params": config.num_params, "load_start": loadavg()}
    run_torch = not (args.skip_torch or args.skip_step)
    if args.dtype == "bfloat16" and run_torch and not native_bf16():
        # Measured on a 2-core AVX2 EPYC: torch's bf16 2048^3 matmul ran at 0.3 GFLOP/s
        # (fp32: 103), so its bf16 train step would take hours, not seconds.
        raise SystemExit("error: this CPU has no AVX512_BF16/AMX, where torch's bf16 matmul "
                         "is a scalar fallback (~0.3 GFLOP/s); add --skip-torch")

    if not args.skip_step:
        # The peak first, while nothing else of ours is resident.
        peak_jax = jax_matmul_flops(args.peak_size, args.peak_reps, args.dtype)
        print(f"peak: jax matmul {args.peak_size}^3 {args.dtype} {peak_jax[0] / 1e9:.1f} GFLOP/s "
              f"({peak_jax[1] / 1e9:.1f} GFLOP per CPU-second)", flush=True)
        peak_torch = None
        if run_torch:
            import torch
            torch.set_num_threads(args.threads)
            peak_torch = torch_matmul_flops(args.peak_size, args.peak_reps, args.dtype)
            print(f"peak: torch matmul {args.peak_size}^3 {args.dtype} "
                  f"{peak_torch[0] / 1e9:.1f} GFLOP/s "
                  f"({peak_torch[1] / 1e9:.1f} GFLOP per CPU-second)", flush=True)
        peak = max(peak_jax[0], peak_torch[0] if peak_torch else 0.0)
        peak_cpu = max(peak_jax[1], peak_torch[1] if peak_torch else 0.0)
        results.update(peak_jax=peak_jax, peak_torch=peak_torch, peak=peak,
                       peak_per_cpu_s=peak_cpu)

        t0 = time.perf_counter()
        jr = JaxRunner(cfg, batch)
        print(f"solar-jax: state + compile {time.perf_counter() - t0:.1f} s "
              f"(compile {jr.compile_s:.1f} s), {config.num_params / 1e6:.1f} M params, "
              f"loss_chunk {min(cfg.loss_chunk, args.seq)}, remat {cfg.remat}", flush=True)
        jr.run(args.warmup)
        tr = None
        if run_torch:
            t0 = time.perf_counter()
            tr = TorchRunner(cfg, batch, args.threads, args.torch_attn, args.torch_fused_adamw)
            print(f"torch: build {time.perf_counter() - t0:.1f} s, "
                  f"attn_implementation={tr.attn}, tied={tr.tied}, "
                  f"{tr.num_params / 1e6:.1f} M params, threads={tr.torch.get_num_threads()}",
                  flush=True)
            tr.run(args.warmup)

        jax_rounds, torch_rounds, loads = [], [], []

        def show(name, times, loss):
            print(f"round {r + 1}: {name:9s} s/step " + " ".join(f"{w:6.2f}" for w, _ in times)
                  + "  CPU-s/step " + " ".join(f"{c:6.2f}" for _, c in times)
                  + f"  (loss {loss:.4f})  load {loadavg()}", flush=True)

        for r in range(args.rounds):
            loads.append(loadavg())
            jax_rounds.append(jr.run(args.steps))
            show("solar-jax", jax_rounds[-1], jr.losses[-1])
            if tr is not None:
                torch_rounds.append(tr.run(args.steps))
                show("torch", torch_rounds[-1], tr.losses[-1])
        results["jax"] = {**summarize(jax_rounds, tokens, per_token, peak, peak_cpu),
                          "compile_s": jr.compile_s, "losses": jr.losses}
        if tr is not None:
            rj, rt = results["jax"], {**summarize(torch_rounds, tokens, per_token, peak,
                                                  peak_cpu),
                                      "attn": tr.attn, "losses": tr.losses,
                                      "fused_adamw": args.torch_fused_adamw}
            results["torch"] = rt
            results["speedup"] = rt["step_s_best"] / rj["step_s_best"]
            results["speedup_median"] = rt["step_s_median"] / rj["step_s_median"]
            results["speedup_per_round"] = [t / j for j, t in zip(rj["round_step_s_median"],
                                                                  rt["round_step_s_median"])]
            results["speedup_cpu_time"] = rt["cpu_s_per_step_best"] / rj["cpu_s_per_step_best"]
        results["round_loads"] = loads
        del jr, tr

    if not args.skip_compile:
        comp: dict[int, list] = {args.small_layers: [], args.large_layers: []}
        for rep in range(args.compile_reps):
            for layers in (args.small_layers, args.large_layers):
                c = compile_time(cfg, layers, args.batch, args.seq)
                comp[layers].append(c)
                print(f"compile {layers:3d} layers (rep {rep + 1}): lower {c['lower_s']:.2f} s "
                      f"+ compile {c['compile_s']:.2f} s = {c['total_s']:.2f} s  "
                      f"load {loadavg()}", flush=True)
        best = {n: min(cs, key=lambda c: c["total_s"]) for n, cs in comp.items()}
        results["compile"] = {str(n): cs for n, cs in comp.items()}
        results["compile_best"] = {str(n): c for n, c in best.items()}
        small, large = best[args.small_layers], best[args.large_layers]
        results["compile_ratio"] = large["total_s"] / small["total_s"]
        results["compile_ratio_xla_only"] = large["compile_s"] / small["compile_s"]
    results["load_end"] = loadavg()
    report(results, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)


def report(results: dict, args) -> None:
    """The results as a Markdown table plus the goal verdicts."""
    print()
    if "jax" in results:
        pj, pt = results["peak_jax"], results["peak_torch"]
        print(f"SmolLM2-135M shape, fp32 params, {args.dtype} compute, "
              f"batch {args.batch} x {args.seq}, AdamW, "
              f"{args.steps} timed steps x {args.rounds} alternating rounds. "
              f"Peak ({args.dtype} {args.peak_size}^3 matmul, best of {args.peak_reps}): "
              f"jax {pj[0] / 1e9:.1f}"
              + (f", torch {pt[0] / 1e9:.1f}" if pt else "")
              + f" GFLOP/s -> {results['peak'] / 1e9:.1f}; per CPU-second: jax "
              f"{pj[1] / 1e9:.1f}" + (f", torch {pt[1] / 1e9:.1f}" if pt else "")
              + f" -> {results['peak_per_cpu_s'] / 1e9:.1f} GFLOP. "
              f"Model FLOPs/token {results['flops_per_token'] / 1e6:.0f} M.")
        print()
        print("| framework | tokens/s (best step) | tokens/s (median step) | s/step best "
              "| s/step median | CPU-s/step best | MFU (best step) | MFU (CPU time) |")
        print("|---|---|---|---|---|---|---|---|")
        rows = [("solar-jax (XLA CPU)", results["jax"])]
        if "torch" in results:
            rows.append((f"PyTorch + transformers ({results['torch']['attn']})",
                         results["torch"]))
        for name, r in rows:
            print(f"| {name} | {r['tokens_per_s_best']:.1f} | {r['tokens_per_s_median']:.1f} "
                  f"| {r['step_s_best']:.2f} | {r['step_s_median']:.2f} "
                  f"| {r['cpu_s_per_step_best']:.2f} "
                  f"| {100 * r['mfu']:.1f}% | {100 * r['mfu_cpu_time']:.1f}% |")
        print()
    verdicts = []
    if "speedup" in results:
        ok = results["speedup"] >= GOAL_SPEEDUP
        verdicts.append(
            f"solar-jax / torch tokens/s: best step {results['speedup']:.2f}x, median step "
            f"{results['speedup_median']:.2f}x, per round (medians) "
            + ", ".join(f"{x:.2f}x" for x in results["speedup_per_round"])
            + f"; CPU-time ratio {results['speedup_cpu_time']:.2f}x. "
            f"Goal >= {GOAL_SPEEDUP}x (best step): {'PASS' if ok else 'FAIL'}")
    if "compile_best" in results:
        small = results["compile_best"][str(args.small_layers)]
        large = results["compile_best"][str(args.large_layers)]
        print(f"| layers | lower s | compile s | total s (best of {args.compile_reps}) |")
        print("|---|---|---|---|")
        for n, c in ((args.small_layers, small), (args.large_layers, large)):
            print(f"| {n} | {c['lower_s']:.2f} | {c['compile_s']:.2f} | {c['total_s']:.2f} |")
        print()
        ok = results["compile_ratio"] <= GOAL_COMPILE_RATIO
        verdicts.append(
            f"compile time {args.large_layers} / {args.small_layers} layers = "
            f"{results['compile_ratio']:.2f}x (XLA compile alone "
            f"{results['compile_ratio_xla_only']:.2f}x). "
            f"Goal <= {GOAL_COMPILE_RATIO}x: {'PASS' if ok else 'FAIL'}")
    for v in verdicts:
        print(v)
    print(f"load average (1/5/15 min): start {results['load_start']}, rounds "
          f"{results.get('round_loads', [])}, end {results['load_end']}")


if __name__ == "__main__":
    main()
