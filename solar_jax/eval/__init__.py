"""Benchmarks with lm-evaluation-harness's definitions, run on solar-jax models.

    from solar_jax import load_model
    from solar_jax.eval import evaluate
    results = evaluate(load_model("model/"), "arc", "ARC-Challenge-Test.jsonl", limit=100)
    results["acc"], results["acc_norm"], results["samples"][0]["loglikelihoods"]

Tasks: arc (also OpenBookQA), hellaswag, winogrande, mmlu, truthfulqa_mc1, truthfulqa_mc2,
gsm8k, perplexity. See docs/generate_eval.md for file formats and metric definitions.
"""

from solar_jax.eval.runner import evaluate, extract_answer, format_table, normalize_answer
from solar_jax.eval.scoring import Scorer
from solar_jax.eval.tasks import TASKS, load_docs

__all__ = ["evaluate", "format_table", "extract_answer", "normalize_answer", "TASKS",
           "Scorer", "load_docs"]
