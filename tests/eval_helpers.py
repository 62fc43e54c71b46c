"""Fixtures the eval tests share: a few ARC records, a JSONL writer, a float64 log-softmax."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


ARC = [
    {"id": "a1", "question": {"stem": "What is the capital of France?", "choices": [
        {"text": "Berlin", "label": "A"}, {"text": "Paris", "label": "B"},
        {"text": "Madrid", "label": "C"}, {"text": "Rome", "label": "D"}]}, "answerKey": "B"},
    {"id": "a2", "question": {"stem": "Which gas do plants take in to make food?", "choices": [
        {"text": "oxygen", "label": "A"}, {"text": "carbon dioxide", "label": "B"},
        {"text": "helium", "label": "C"}]}, "answerKey": "B"},
    {"id": "a3", "question": {"stem": "How many legs does a spider have?", "choices": [
        {"text": "six", "label": "1"}, {"text": "eight", "label": "2"},
        {"text": "ten", "label": "3"}, {"text": "four", "label": "4"}]}, "answerKey": "2"},
]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
