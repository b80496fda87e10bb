"""Rows of several methods at once: one mixed batch against one batch per method.

`python -m decodelab.bench.mixed --methods greedy,pld --rows 8` adds `--rows` rows of every method
(prompts of the `code` and `edit` suites, temperature 0) and decodes them twice:

- **mixed**: one `Engine(lm, mixed=True)` — every row drafts with its own method's proposer and one
  target forward per step verifies all of them (how `decodelab serve` batches overlapping requests of
  different methods, docs/SERVING.md);
- **separate**: one `Engine` per method, stepped in turn (how it batched them before: each step serves
  one method's rows).

It prints tokens/s of each and their ratio, checks that every row's tokens are the same both ways
(temperature 0: each equals greedy), and records the machine's load (`bench/machine.py`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..errors import DecodelabError, UserError
from . import machine


def _prompts(n: int) -> list[str]:
    from .suites import load_suite

    texts = [p.text for name in ("code", "edit") for p in load_suite(name).prompts]
    return [texts[i % len(texts)] for i in range(n)]


def _run(lm, methods: list[str], prompts: list[str], max_new: int, mixed: bool) -> tuple[float, dict]:
    """Wall seconds and {(method, i): token ids}."""
    from ..engine import Engine

    engines = {"*": Engine(lm, mixed=True)} if mixed else {m: Engine(lm, m) for m in methods}
    owner, out = {}, {}
    t0 = time.perf_counter()
    for m in methods:
        engine = engines["*" if mixed else m]
        for i, prompt in enumerate(prompts):
            kw = {"method": m} if mixed else {}
            owner[(id(engine), engine.add(prompt, max_new_tokens=max_new, **kw))] = (m, i)
    while any(e.busy for e in engines.values()):
        for engine in engines.values():
            for event in engine.step():
                if event.generation is not None:
                    out[owner[(id(engine), event.row)]] = event.generation.token_ids
    wall = time.perf_counter() - t0
    for engine in engines.values():
        engine.close()
    return wall, out


def run(args) -> dict:
    from .. import load

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if len(methods) < 2 or args.rows < 1 or args.max_new_tokens < 1:
        raise UserError("--methods needs two or more methods; --rows and --max-new-tokens must be ≥ 1")
    machine.set_threads(args.threads)
    lm = load(args.model, **({"backend": args.backend} if args.backend else {}))
    prompts = _prompts(args.rows)
    _run(lm, methods, prompts[:1], 4, True)  # warm-up
    before, cpu0 = machine.snapshot(), machine.sample()
    results = {}
    for _ in range(args.repeats):
        for mode in ("mixed", "separate"):
            wall, out = _run(lm, methods, prompts, args.max_new_tokens, mode == "mixed")
            results.setdefault(mode, []).append((wall, out))
    load_info = machine.report(before, machine.others_share(cpu0, machine.sample()), machine.snapshot())
    tokens = sum(len(t) for t in results["mixed"][0][1].values())
    best = {mode: min(w for w, _ in runs) for mode, runs in results.items()}
    same = all(out == results["mixed"][0][1] for runs in results.values() for _, out in runs)
    return {"model": args.model, "methods": methods, "rows_per_method": args.rows,
            "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "tokens": tokens,
            "tokens_per_s": {mode: round(tokens / w, 1) for mode, w in best.items()},
            "mixed_vs_separate": round(best["separate"] / best["mixed"], 3), "same_tokens": same,
            "machine_load": load_info, "command": "python -m decodelab.bench.mixed " + " ".join(sys.argv[1:])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m decodelab.bench.mixed", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:pyco")
    p.add_argument("--backend", default=None)
    p.add_argument("--methods", default="greedy,pld", help="comma-separated continuous methods (≥ 2)")
    p.add_argument("--rows", type=int, default=8, help="rows of every method")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="the fastest of N runs of each mode")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    try:
        result = run(args)
    except DecodelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    if warning := machine.warning(result["machine_load"]):
        print(warning, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
