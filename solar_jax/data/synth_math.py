"""Synthetic math data from GSM8K, the paper's Synth. Math-Instruct / Math-Alignment at our
scale: SFT records, and preference pairs whose rejected answer is the reference solution
with one arithmetic step corrupted — the wrong result carried into the text that uses it —
and a wrong final answer. Deterministic given the seed (each record has its own stream).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from solar_jax import interrupts
from solar_jax.data.sources import iter_jsonl_records
from solar_jax.destination import check_overlap, overlap, staged_files
from solar_jax.errors import SolarError

STEP = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
FINAL = re.compile(r"####\s*(.+?)\s*$")


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").strip())
    except ValueError:
        return None


def _format(value: float, like: str) -> str:
    if "." not in like and float(value).is_integer():
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _shift(value: float, rng: np.random.Generator) -> float:
    delta = int(rng.integers(1, 10)) * (1 if rng.random() < 0.5 or value < 10 else -1)
    return value + delta


def corrupt_solution(answer: str, rng: np.random.Generator) -> str | None:
    """The answer with one calculator step's result changed (and its next mention in the
    text), and the final `#### N` changed; None if the answer has no numeric final line."""
    final = FINAL.search(answer)
    if not final or _number(final.group(1)) is None:
        return None
    steps = [m for m in STEP.finditer(answer) if _number(m.group(2)) is not None]
    text = answer
    carried = None
    if steps:
        m = steps[int(rng.integers(len(steps)))]
        old = m.group(2)
        new = _format(_shift(_number(old), rng), old)
        after = text[m.end():]
        # The result is usually restated right after the annotation ("<<6*4=24>>24").
        if after.startswith(old):
            after = new + after[len(old):]
        text = text[:m.start()] + f"<<{m.group(1)}={new}>>" + after
        if _number(old) == _number(final.group(1)):
            carried = new  # the corrupted step produced the answer: the error carries over
    final = FINAL.search(text)
    wrong = carried or _format(_shift(_number(final.group(1)), rng), final.group(1))
    return text[:final.start()] + f"#### {wrong}"


def build_math_data(src: str | Path, out_dir: str | Path, *, seed: int = 0,
                    limit: int | None = None, heldout: int = 0,
                    overwrite: bool = False) -> dict[str, int]:
    """Write out_dir/sft.jsonl (gsm8k format) and out_dir/preference.jsonl; with heldout=N,
    the last N records of src go to out_dir/heldout.jsonl instead (an eval set)."""
    src, out_dir = Path(src), Path(out_dir)
    if not src.is_file():
        raise SolarError(f"GSM8K file {src} does not exist")
    if heldout < 0:
        raise SolarError(f"--heldout must be >= 0, got {heldout}")
    outputs = {"sft": out_dir / "sft.jsonl", "preference": out_dir / "preference.jsonl"}
    if heldout:
        outputs["heldout"] = out_dir / "heldout.jsonl"
    # OUT_DIR is not replaced, only its files: those must not be the input (OUT_DIR may
    # well hold the input file beside them).
    if overlap(out_dir, src) in ("is", "lies inside"):
        raise SolarError(f"output directory {out_dir} is the input {src}; choose another path")
    for path in outputs.values():
        check_overlap(path, [src], what="output")
    if not overwrite and any(p.exists() for p in outputs.values()):
        raise SolarError(f"{out_dir} already holds {'/'.join(p.name for p in outputs.values())}; "
                         f"pass --overwrite")
    records = iter_jsonl_records(str(src))
    held: list[dict] = []
    if heldout:
        records = list(records)
        if heldout >= len(records):
            raise SolarError(f"--heldout {heldout} leaves none of the {len(records)} records of "
                             f"{src} to train on")
        for where, record in records[-heldout:]:
            if not all(isinstance(record.get(k), str) for k in ("question", "answer")):
                raise SolarError(f"{where}: record has no question/answer text")
            held.append({"question": record["question"], "answer": record["answer"]})
        records = records[:-heldout]
    sft, pairs = [], []
    for i, (where, record) in enumerate(records):
        if limit is not None and len(sft) >= limit:
            break
        for key in ("question", "answer"):
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise SolarError(f"{where}: record has no {key!r} text")
        sft.append({"question": record["question"], "answer": record["answer"]})
        rejected = corrupt_solution(record["answer"], np.random.default_rng([seed, i]))
        if rejected is not None and rejected != record["answer"]:
            pairs.append({"prompt": record["question"], "chosen": record["answer"],
                          "rejected": rejected})
    if not sft:
        raise SolarError(f"{src} holds no records")
    written = {"sft": sft, "preference": pairs, **({"heldout": held} if heldout else {})}
    with staged_files([outputs[name] for name in written]) as stages:  # all commit together
        for stage, rows in zip(stages, written.values()):
            stage.write_text("".join(json.dumps(r) + "\n" for r in rows))
            interrupts.pause_at("write")
    return {name: len(rows) for name, rows in written.items()}
