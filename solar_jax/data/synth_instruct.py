"""Instruction data from plain play text (tinyshakespeare's `NAME:\\nlines` speeches), the
stand-ins at our scale for the paper's Alpaca-GPT4, OpenOrca and general preference sets:

* `alpaca.jsonl` (alpaca format): continue the passage. The instruction is one of a few
  phrasings, the input the speaker's name and lines of a speech up to a random cut (at
  most MAX_PROMPT_LINES), the output the lines that follow (at most MAX_OUTPUT_LINES).
* `openorca.jsonl` (openorca format): a system prompt, a speech (its first lines),
  "which character says these lines?", and the speaker's name as the response.
* `preference.jsonl` (prompt/chosen/rejected): the continuation task, chosen = the true
  continuation, rejected = the continuation of another speech.
* `*_eval.jsonl` the same records from the held-out tail of the text, and `heldout.txt`
  the tail itself (for perplexity); nothing in the tail is in a training file.

Deterministic given the seed (each speech draws from its own stream).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from solar_jax import interrupts
from solar_jax.destination import check_overlap, overlap, staged_files
from solar_jax.errors import SolarError

PARAGRAPH = re.compile(r"\n(?:[ \t\r]*\n)+")
SPEAKER = re.compile(r"^([A-Z][A-Za-z' .-]{0,40}):$")
MAX_OUTPUT_LINES = 3  # answer lines
MAX_PROMPT_LINES = 4  # lines shown in a prompt: records stay short (a few dozen tokens)
INSTRUCTIONS = ("Continue this passage from a play.",
                "Write the next lines of this speech.",
                "Finish the speech in the same style.",
                "What does the speaker say next?")
SYSTEM = "You are an assistant who knows the plays of Shakespeare well."
OUTPUTS = ("alpaca", "openorca", "preference")


def parse_speeches(text: str) -> list[tuple[str, list[str]]]:
    """(speaker, lines) for every paragraph that starts with `NAME:` and has lines."""
    speeches = []
    for paragraph in PARAGRAPH.split(text):
        head, *lines = paragraph.split("\n")
        m = SPEAKER.match(head.strip())
        lines = [x.strip() for x in lines if x.strip()]
        if m and lines:
            speeches.append((m.group(1), lines))
    return speeches


def speech_records(speeches, seed: int, offset: int = 0) -> dict[str, list[dict]]:
    """The three record sets of `speeches`; `offset` numbers their random streams."""
    out: dict[str, list[dict]] = {k: [] for k in OUTPUTS}
    continuable = [i for i, (_, lines) in enumerate(speeches) if len(lines) >= 2]
    for n, (name, lines) in enumerate(speeches):
        text = "\n".join(lines[:MAX_PROMPT_LINES])
        out["openorca"].append({"system_prompt": SYSTEM,
                                "question": f"Which character says these lines?\n\n{text}",
                                "response": name.title() if name.isupper() else name})
    for i in continuable:
        name, lines = speeches[i]
        rng = np.random.default_rng([seed, offset + i])
        cut = int(rng.integers(1, len(lines)))
        instruction = INSTRUCTIONS[int(rng.integers(len(INSTRUCTIONS)))]
        prompt = f"{name}:\n" + "\n".join(lines[max(0, cut - MAX_PROMPT_LINES):cut])
        answer = "\n".join(lines[cut:cut + MAX_OUTPUT_LINES])
        out["alpaca"].append({"instruction": instruction, "input": prompt, "output": answer})
        if len(continuable) > 1:
            other = i
            while other == i:
                other = continuable[int(rng.integers(len(continuable)))]
            o_lines = speeches[other][1]
            o_cut = int(rng.integers(1, len(o_lines)))
            rejected = "\n".join(o_lines[o_cut:o_cut + MAX_OUTPUT_LINES])
            if rejected.strip() and rejected != answer:
                out["preference"].append({"prompt": f"{instruction}\n\n{prompt}",
                                          "chosen": answer, "rejected": rejected})
    return out


def build_instruct_data(text_path: str | Path, out_dir: str | Path, *, seed: int = 0,
                        heldout_chars: int = 6000, overwrite: bool = False) -> dict[str, int]:
    """Write the files of the module docstring to out_dir; returns record counts."""
    text_path, out_dir = Path(text_path), Path(out_dir)
    if not text_path.is_file():
        raise SolarError(f"text file {text_path} does not exist")
    if heldout_chars < 0:
        raise SolarError(f"--heldout-chars must be >= 0, got {heldout_chars}")
    names = [f"{k}{suffix}.jsonl" for k in OUTPUTS for suffix in ("", "_eval")] + ["heldout.txt"]
    if not overwrite and any((out_dir / n).exists() for n in names):
        raise SolarError(f"{out_dir} already holds instruction data; pass --overwrite")
    # OUT_DIR is not replaced, only its files: those must not be the input (as build-math).
    if overlap(out_dir, text_path) in ("is", "lies inside"):
        raise SolarError(f"output directory {out_dir} is the input {text_path}; "
                         "choose another path")
    for name in names:
        check_overlap(out_dir / name, [text_path], what="output")
    text = text_path.read_text(encoding="utf-8")
    # Cut at the first paragraph boundary of the tail, so no speech is split between
    # training and held out (the held-out text is at most heldout_chars long).
    cut = len(text)
    if heldout_chars:
        boundary = text.find("\n\n", max(len(text) - heldout_chars, 0))
        cut = boundary + 2 if boundary >= 0 else len(text)
    staged = {}
    parts = {"": text[:cut], "_eval": text[cut:]}
    counts = {}
    for suffix, part in parts.items():
        records = speech_records(parse_speeches(part), seed, offset=0 if not suffix else 1 << 30)
        for key, rows in records.items():
            name = f"{key}{suffix}.jsonl"
            counts[name] = len(rows)
            staged[name] = "".join(json.dumps(r) + "\n" for r in rows)
    if not counts["alpaca.jsonl"]:
        raise SolarError(f"{text_path} has no `NAME:` speeches of two or more lines")
    staged["heldout.txt"] = parts["_eval"]
    with staged_files([out_dir / name for name in staged]) as stages:  # all, or none
        for stage, content in zip(stages, staged.values()):
            stage.write_text(content, encoding="utf-8")
            interrupts.pause_at("write")
    return counts
