"""Step metrics: metrics.jsonl (every step), TensorBoard events, a progress bar, and MFU.

MFU uses the standard estimate: 6 x (params except the input embedding, a gather) FLOPs per
token, plus 12 x layers x heads x head_dim x seq for the attention matmuls (the full S x S
the XLA reference computes; no credit taken for causal skipping).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax

from solar_jax.config import ModelConfig

# Dense bf16 peak FLOP/s per device, from vendor datasheets.
PEAK_FLOPS = {"tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12,
              "tpu v5": 459e12, "tpu v6 lite": 918e12, "tpu v6e": 918e12,
              "h100": 989e12, "h200": 989e12, "a100": 312e12, "l4": 121e12}


def peak_flops_per_device(override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    kind = jax.devices()[0].device_kind.lower()
    for name, flops in PEAK_FLOPS.items():
        if name in kind:
            return flops
    return None


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token."""
    embedding = config.vocab_size * config.hidden_size
    dense = config.num_params - embedding + (embedding if config.tie_word_embeddings else 0)
    attention = 12 * config.num_layers * config.num_heads * config.head_dim * seq_len
    return 6 * dense + attention


class MetricsWriter:
    def __init__(self, run_dir: Path, *, tensorboard: bool, progress: bool, total_steps: int,
                 start_step: int, is_main: bool):
        self.is_main = is_main
        self._jsonl = open(run_dir / "metrics.jsonl", "a") if is_main else None
        self._tb = None
        if is_main and tensorboard:
            try:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                print("tensorboardX is not installed: no TensorBoard events", file=sys.stderr)
        self._bar = None
        if is_main and progress:
            from tqdm import tqdm
            self._bar = tqdm(total=total_steps, initial=start_step, unit="step",
                             dynamic_ncols=True, file=sys.stderr)

    def write(self, record: dict, *, show: bool) -> None:
        if not self.is_main:
            return
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        step = record["step"]
        if self._tb is not None and show:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"train/{key}", value, step)
        if self._bar is not None:
            self._bar.update(1)
            if show:
                self._bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                      tok_s=f"{record['tokens_per_sec']:.0f}")

    def write_eval(self, record: dict) -> None:
        """An evaluation's record (its own line: `step` and `eval/...` keys)."""
        if not self.is_main:
            return
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])
        shown = {"eval_loss": record.get("eval/loss"), "eval_ppl": record.get("eval/perplexity")}
        shown = {k: f"{v:.4g}" for k, v in shown.items() if v is not None}
        if self._bar is not None and shown:
            self._bar.set_postfix(**shown)
        self.note(f"eval at step {record['step']}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in record.items() if k.startswith("eval/")))

    def note(self, text: str) -> None:
        """A line in the log (stderr), above the progress bar."""
        if not self.is_main:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
