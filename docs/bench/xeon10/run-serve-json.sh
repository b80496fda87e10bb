#!/usr/bin/env bash
# Constrained requests through `decodelab serve`, before and after they joined continuous batching.
# "before" is the server of commit fd7b4a8 (constrained requests waited for the running batch to drain,
# then ran alone); "after" is this checkout's. The client is this checkout's serve bench either way
# (it sends each json-suite prompt's schema as `structured_outputs`). Servers alternate, two rounds.
#   git worktree add /tmp/before fd7b4a8   # once
#   bash docs/bench/xeon10/run-serve-json.sh
set -euo pipefail
out=docs/bench/xeon10
for round in 1 2; do
  for version in before after; do
    src=$([ "$version" = before ] && echo /tmp/before/src || echo src)
    PYTHONPATH=$src python -c "from decodelab.cli import main; main()" serve --port 8123 --max-batch 16 > "$out/serve-$version-$round.log" 2>&1 &
    pid=$!
    until curl -sf http://127.0.0.1:8123/health > /dev/null; do kill -0 "$pid"; sleep 1; done
    python -m decodelab.serve.bench --url http://127.0.0.1:8123 --server-pid "$pid" --suite json --concurrency 1,4,16 --requests 4 \
      --max-tokens 128 --time-limit 120 --out "$out/serve-json-$version-$round" | tail -6
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
