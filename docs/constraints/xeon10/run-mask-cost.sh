#!/usr/bin/env bash
# Grammar-mask cost per token before and after commit 85634f9 (a lone head's mask without a stand-in
# draft token; no finite-row check on raw logits), interleaved: before / after, three rounds.
#   git worktree add /tmp/before2 f652246   # once: the commit before the change
#   bash docs/constraints/xeon10/run-mask-cost.sh
set -euo pipefail
for round in 1 2 3; do
  for version in before after; do
    src=$([ "$version" = before ] && echo /tmp/before2/src || echo src)
    PYTHONPATH=$src python -m decodelab.constraints.mask_cost --backend native --methods greedy,pld \
      --routes batched --out "docs/constraints/xeon10/$version-r$round" | grep -E '^\| (greedy|pld)'
  done
done
