#!/usr/bin/env bash
# pld at batch 8 on `code`, transformers' lookup rule (min_ngram_size=1, the default) against min_ngram_size=2,
# five rounds each, the two configurations alternating twice; each run's ratio is against batched greedy in it.
#   bash docs/bench/xeon10/run-pld-min-ngram.sh
set -euo pipefail
for round in 1 2; do
  for min in 1 2; do
    decodelab bench --suite code --batch-size 8 --repeats 5 --max-new-tokens 128 --methods greedy,pld \
      -p pld.min_ngram_size=$min --out docs/bench/xeon10/batch8-code-r5-min$min-$round --json | tail -1
  done
done
