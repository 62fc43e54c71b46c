#!/usr/bin/env bash
# SOLAR's SFT/DPO ablation end to end at CPU scale (`make paper`; about what the README's
# paper section says): data -> SFT v1, v3, v4 -> merge v3+v4 -> DPO v1, v2 on the merge ->
# merge v1+v2 -> evaluation of the merges -> the table (`solar-jax report`).
# Run from the repository root; SJ names the CLI (default: solar-jax on PATH).
set -euo pipefail
SJ=${SJ:-solar-jax}
PY=${PY:-python}
OUT=paper_out
EVAL_GSM8K=(--task gsm8k --data $OUT/data/math/heldout.jsonl --limit 8 --num-fewshot 3
            --max-gen-tokens 128 --batch-size 8)
EVAL_PPL=(--task perplexity --data $OUT/data/instruct/heldout.txt)

rm -rf $OUT    # every stage starts over: a run left by older code is not resumed
$SJ convert "$($PY -c 'from solar_jax.demo import smollm2_gguf; print(smollm2_gguf())')" $OUT/smollm2
$SJ build-instruct $OUT/data/instruct
$SJ build-math "$($PY -c 'from solar_jax.resources import data_file; print(data_file("gsm8k_train.jsonl"))')" \
    $OUT/data/math --limit 256 --heldout 24
for run in sft_v1 sft_v3 sft_v4; do $SJ train configs/paper/$run.yaml; done
$SJ merge --recipe configs/paper/merge_sft.yaml --out $OUT/sft_v3_v4
for run in dpo_v1 dpo_v2; do $SJ train configs/paper/$run.yaml; done
$SJ merge --recipe configs/paper/merge_dpo.yaml --out $OUT/dpo_v1_v2
# A merge has no training log: its evaluation is the JSON `solar-jax eval --out` writes,
# in $OUT/evals/<merge>/ (eval may not write inside the model it reads), which the
# report reads with --eval-dir.
for merged in sft_v3_v4 dpo_v1_v2; do
    $SJ eval $OUT/$merged "${EVAL_GSM8K[@]}" --out $OUT/evals/$merged/eval_results.json
    $SJ eval $OUT/$merged "${EVAL_PPL[@]}" --out $OUT/evals/$merged/eval_results_perplexity.json
done
$SJ report $OUT/runs/sft_v1 $OUT/runs/sft_v3 $OUT/runs/sft_v4 $OUT/sft_v3_v4 \
    $OUT/runs/dpo_v1 $OUT/runs/dpo_v2 $OUT/dpo_v1_v2 --eval-dir $OUT/evals \
    --out $OUT/report.md
