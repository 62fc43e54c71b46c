"""Benchmarks with lm-evaluation-harness's definitions, run on solar-jax models.

    from solar_jax import load_model
    from solar_jax.eval import evaluate
    results = evaluate(load_model("model/"), "arc", "ARC-Challenge-Test.jsonl", limit=100)
    results["acc"], results["acc_norm"], results["samples"][0]["loglikelihoods"]

Tasks: arc (also OpenBookQA), hellaswag, winogrande, mmlu, truthfulqa_mc1, truthfulqa_mc2,
gsm8k, perplexity. See docs/generate_eval.md for file formats and metric definitions.
"""

import importlib

# Names resolve on first use (PEP 562): `solar-jax eval --help` and the CLI's parser read
# TASKS from eval.tasks (stdlib only), and must not pay for the scorer's jax import.
_EXPORTS = {"evaluate": "runner", "extract_answer": "runner", "format_table": "runner",
            "normalize_answer": "runner", "Scorer": "scoring", "TASKS": "tasks",
            "load_docs": "tasks"}

__all__ = ["evaluate", "format_table", "extract_answer", "normalize_answer", "TASKS",
           "Scorer", "load_docs"]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"solar_jax.eval.{_EXPORTS[name]}"), name)


def __dir__():
    return sorted(list(globals()) + __all__)
