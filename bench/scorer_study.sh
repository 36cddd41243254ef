#!/usr/bin/env bash
# The scorer study of bench/README.md on the embedded subject model, offline:
# 104 MLP neurons of SmolLM2-135M (layers 3, 11, 19, 27; units 0-25), two explanations
# each (the token-lookup and random baselines: no explainer LLM, so the spread in quality
# comes from the units), scored by embedding, simulation (exact) and intruder (the
# embedded model as judge), then `neuroscribe study scorers` with the ground-truth check.
#   bash bench/scorer_study.sh [RUN_DIR]        (~1.5 h on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-/tmp/neuroscribe-scorer-study}
N=.venv/bin/neuroscribe
export NO_COLOR=1
$N record --out "$RUN" --layers 3,11,19,27 --units 0-25 --max-tokens 16000
$N explain "$RUN" --explainer-method token-lookup --quiet
$N explain "$RUN" --explainer-method random --quiet
$N score "$RUN" --scorer embedding,simulation,intruder --simulator hf:embedded --quiet
$N study scorers "$RUN" --groundtruth --split test
