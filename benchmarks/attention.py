"""Attention throughput: TFLOP/s of forward and forward+backward for each implementation.

Shape (issue 6): S = 1024, 2048, 4096, 8192; head_dim 128; 32 query / 8 KV heads (GQA 4);
bf16; causal; batch = max(1, tokens // S) so every S moves the same number of tokens.
Implementations: xla (reference), pallas (our kernels), cudnn (GPU only). Before timing, the
Pallas kernels are checked against the XLA reference at S=1024 on the device itself.

FLOPs use the FlashAttention papers' convention: forward 4*B*H*S^2*D, halved for causal;
backward 2.5x forward (so forward+backward = 3.5x); recomputation is not counted.

On a machine without a GPU/TPU there is nothing to time: the script then runs the kernels
of both backends in Pallas interpret mode at a tiny size, checks them against the
reference, and says so. Goal on H100: pallas forward+backward >= 1.0x cudnn and >= 2x xla.

    .venv/bin/python benchmarks/attention.py                      # all S, all impls
    .venv/bin/python benchmarks/attention.py --seq 4096 --impls pallas cudnn
    .venv/bin/python benchmarks/attention.py --blocks 128,64,32,128,128,32 --warps 8
    .venv/bin/python benchmarks/attention.py --markdown   # rows for benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import solar_jax
from solar_jax.kernels import BlockSizes, default_block_sizes, flash_attention
from solar_jax.model.attention import xla_attention

HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128


def attention_fn(impl: str, blocks: BlockSizes | None):
    if impl == "pallas":
        return lambda q, k, v: flash_attention(q, k, v, causal=True, block_sizes=blocks)
    return lambda q, k, v: solar_jax.attention(q, k, v, causal=True, impl=impl)


def inputs(batch, seq, dtype=jnp.bfloat16, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (batch, seq, HEADS, HEAD_DIM), dtype)
    k = jax.random.normal(keys[1], (batch, seq, KV_HEADS, HEAD_DIM), dtype)
    v = jax.random.normal(keys[2], (batch, seq, KV_HEADS, HEAD_DIM), dtype)
    do = jax.random.normal(keys[3], q.shape, dtype)
    return q, k, v, do


def fwd_and_train_step(fn):
    forward = jax.jit(fn)

    @jax.jit
    def train_step(q, k, v, do):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(do)

    return forward, train_step


def time_ms(f, *args, iters: int) -> float:
    jax.block_until_ready(f(*args))  # compile + warm up
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def causal_flops(batch, seq) -> float:
    return 4 * batch * HEADS * seq * seq * HEAD_DIM / 2


def max_errors(got, want):
    return [float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want))]


def check_on_device(blocks, seq=1024) -> bool:
    q, k, v, do = inputs(1, seq)
    _, kernel = fwd_and_train_step(attention_fn("pallas", blocks))
    _, reference = fwd_and_train_step(attention_fn("xla", None))
    errors = max_errors(kernel(q, k, v, do), reference(q, k, v, do))
    ok = max(errors) < 0.1  # bf16 outputs/grads of O(1)
    print(f"check pallas vs xla at S={seq} bf16: max |diff| out/dq/dk/dv = "
          + ", ".join(f"{e:.2e}" for e in errors) + ("  OK" if ok else "  MISMATCH"))
    return ok


def check_interpreted() -> bool:
    """No accelerator: correctness of both backends' kernels in interpret mode, tiny size."""
    print(f"no GPU/TPU here (jax backend: {jax.default_backend()}): nothing to time. Checking "
          "the Pallas kernels in interpret mode at a tiny size instead; run this script on a "
          "GPU or TPU for TFLOP/s.")
    rng = np.random.default_rng(0)
    b, s, h, kvh, d = 1, 40, 4, 1, 64
    q, do = (jnp.asarray(rng.standard_normal((b, s, h, d)), jnp.float32) for _ in range(2))
    k, v = (jnp.asarray(rng.standard_normal((b, s, kvh, d)), jnp.float32) for _ in range(2))
    tiles = BlockSizes(16, 16, 16, 16, 16, 16)
    ok = True
    for backend in ("gpu", "tpu"):
        _, kernel = fwd_and_train_step(lambda q, k, v: flash_attention(
            q, k, v, causal=True, backend=backend, interpret=True, block_sizes=tiles))
        _, reference = fwd_and_train_step(lambda q, k, v: xla_attention(
            q, k, v, q_segment_ids=None, kv_segment_ids=None,
            q_positions=jnp.arange(s)[None], kv_positions=jnp.arange(s)[None], causal=True,
            sliding_window=None, scale=d ** -0.5))
        errors = max_errors(kernel(q, k, v, do), reference(q, k, v, do))
        good = max(errors) < 1e-4
        ok &= good
        print(f"  {backend} kernels (interpreted), fp32 S={s} GQA {h}/{kvh}: max |diff| "
              "out/dq/dk/dv = " + ", ".join(f"{e:.1e}" for e in errors)
              + ("  OK" if good else "  MISMATCH"))
    return ok


def parse_blocks(text: str | None) -> BlockSizes | None:
    if not text:
        return None
    sizes = [int(x) for x in text.split(",")]
    if len(sizes) != 6:
        raise SystemExit("--blocks wants 6 sizes: q,kv,q_dkv,kv_dkv,q_dq,kv_dq")
    return BlockSizes(*sizes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--impls", nargs="+", default=None,
                        help="default: xla pallas (+ cudnn on GPU)")
    parser.add_argument("--tokens", type=int, default=8192, help="batch = max(1, tokens // S)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--blocks", help="Pallas tiles q,kv,q_dkv,kv_dkv,q_dq,kv_dq")
    parser.add_argument("--warps", type=int, help="Triton num_warps (GPU)")
    parser.add_argument("--stages", type=int, help="Triton num_stages (GPU)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args(argv)

    platform = jax.default_backend()
    if platform not in ("gpu", "tpu"):
        return 0 if check_interpreted() else 1

    blocks = parse_blocks(args.blocks)
    if args.warps or args.stages:
        blocks = dataclasses.replace(blocks or default_block_sizes(platform, interpret=False),
                                     **({"num_warps": args.warps} if args.warps else {}),
                                     **({"num_stages": args.stages} if args.stages else {}))
    impls = args.impls or (["xla", "pallas", "cudnn"] if platform == "gpu" else ["xla", "pallas"])
    device = jax.devices()[0].device_kind
    print(f"device: {device}; jax {jax.__version__}; bf16, causal, {HEADS} q / {KV_HEADS} kv "
          f"heads, head_dim {HEAD_DIM}, {args.tokens} tokens per step")
    if "pallas" in impls and not check_on_device(blocks):
        print("pallas kernels disagree with the reference on this device; timings follow "
              "but are not meaningful", file=sys.stderr)

    rows = []
    for seq in args.seq:
        batch = max(1, args.tokens // seq)
        q, k, v, do = inputs(batch, seq)
        flops = causal_flops(batch, seq)
        for impl in impls:
            forward, train_step = fwd_and_train_step(attention_fn(impl, blocks))
            try:
                fwd_ms = time_ms(forward, q, k, v, iters=args.iters)
                step_ms = time_ms(train_step, q, k, v, do, iters=args.iters)
            except Exception as e:  # OOM (xla at long S), cudnn unsupported, ...
                print(f"S={seq:5d} {impl:7s} failed: {type(e).__name__}: {str(e)[:200]}")
                continue
            row = (seq, batch, impl, fwd_ms, flops / fwd_ms / 1e9, step_ms,
                   3.5 * flops / step_ms / 1e9)
            rows.append(row)
            print(f"S={seq:5d} B={batch:2d} {impl:7s} fwd {fwd_ms:8.3f} ms {row[4]:7.1f} TFLOP/s"
                  f" | fwd+bwd {step_ms:8.3f} ms {row[6]:7.1f} TFLOP/s", flush=True)

    if args.markdown:
        print(f"\n### Attention on {device} (jax {jax.__version__}, bf16, causal, "
              f"{HEADS}/{KV_HEADS} heads, d={HEAD_DIM})\n")
        print("| S | batch | impl | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |")
        print("|---|---|---|---|---|---|---|")
        for seq, batch, impl, fwd_ms, fwd_tf, step_ms, step_tf in rows:
            print(f"| {seq} | {batch} | {impl} | {fwd_ms:.3f} | {fwd_tf:.1f} | {step_ms:.3f} "
                  f"| {step_tf:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
