#!/usr/bin/env bash
# Fine-tuned top-1 on digits with the searched table vs the all-equal regrowing table, same seeds.
# Usage: benchmarks/digits_search_vs_equal.sh [sparsity ...]   (default: 0.9 0.97)
set -euo pipefail
cd "$(dirname "$0")/.."
for target in "${@:-0.9 0.97}"; do
  for t in $target; do
    out="outputs/bench/digits_search_vs_equal_${t}"
    rm -rf "$out"
    .venv/bin/unipts-prune -m allocation=search,regrow seed=0,1,2 sparsity.target="$t" \
      trainer.enable_progress_bar=false hydra.sweep.dir="$out" > "$out.log" 2>&1
    .venv/bin/unipts-collect "$out"
  done
done
