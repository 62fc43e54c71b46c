"""The output-format flags commands that write checkpoints share (upscale, merge)."""

from __future__ import annotations

from solar_jax.checkpoint.output import FORMATS


def add_output_flags(p, default: str = "solar") -> None:
    p.add_argument("--to", choices=FORMATS, default=default,
                   help="output format (gguf: DST is a .gguf file for llama.cpp)")
    # No argparse `choices`: a bad value is a one-line SolarError (exit 2) like other bad input.
    p.add_argument("--quant", default=None, metavar="TYPE",
                   help="GGUF tensor type: f16 (default), bf16, f32, q8_0, q4_0; norms stay f32")
    p.add_argument("--no-tokenizer", dest="tokenizer", action="store_false",
                   help="GGUF: write the weights without a vocabulary (the source has none)")
