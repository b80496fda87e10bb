"""The grammar mask's cost per token, one call per verify step (batched.py) against one call per node.

`python -m decodelab.constraints.mask_cost --out docs/constraints`: the `json` suite's prompts and schemas
(constraints/json_suite.py) on builtin:pyco, each requested method run twice at temperature 0 — with the
batched route (every mask of a verify step, for every draft node, from one llguidance call) and without it
(`batched.ENABLED = False`: each node's mask computed when verification asks). Per method and route: mask
time per emitted token (processor calls + batched calls, constraints/timing.py), masks computed per token
(in batched calls + computed one node at a time), llguidance calls per token, target forward time per
pass, mask time per token ÷ one forward pass (the issue's goal: ≤ 5 % of a decode step), wall time per
token; and whether both routes gave the same tokens (they must). The two routes run interleaved per
prompt, after one warm-up generation per method; the machine's load is recorded (bench/machine.py) and a
busy machine is flagged.
"""

from __future__ import annotations

import argparse
import time

METHODS = "greedy,pld,speculative,recycling,tree,lookahead"
SIZES = {"recycling": {"widths": "4,6,4,2"}, "speculative": {"num_draft_tokens": 4}}


def run(model: str = "builtin:pyco", methods: list[str] | None = None, limit: int | None = None,
        backend: str = "auto", executor_threads: int | None = None) -> dict:
    from .. import generate, load
    from ..bench import machine
    from . import batched
    from .json_suite import CASES, MAX_NEW_TOKENS
    from .timing import grammar_timing

    lm = load(model, backend=backend)
    batched.executor(executor_threads)
    cases = CASES[:limit]
    methods = methods or METHODS.split(",")
    totals = {(m, on): {"tokens": 0, "mask_s": 0.0, "masks": 0, "calls": 0, "forward_s": 0.0, "passes": 0,
                        "wall_s": 0.0} for m in methods for on in (True, False)}
    same = {m: 0 for m in methods}
    before, a = machine.snapshot(), machine.sample()
    try:
        for m in methods:  # warm-up: the tokenizer conversion, the grammar compiler, the draft model
            generate(lm, cases[0][1], method=m, max_new_tokens=8, constraint={"json_schema": cases[0][2]},
                     **SIZES.get(m, {}))
        for _, prompt, schema, _ in cases:
            for m in methods:
                out = {}
                for on in (True, False):
                    batched.ENABLED = on
                    with grammar_timing() as timer:
                        t0 = time.perf_counter()
                        g = generate(lm, prompt, method=m, max_new_tokens=MAX_NEW_TOKENS,
                                     constraint={"json_schema": schema}, **SIZES.get(m, {}))
                        wall = time.perf_counter() - t0
                    t = totals[m, on]
                    t["tokens"] += len(g.token_ids)
                    t["mask_s"] += sum(timer.mask_s) + sum(timer.batch_s)
                    t["masks"] += timer.batch_masks + timer.mask_rows - timer.mask_hits
                    t["calls"] += len(timer.batch_s) + timer.mask_rows - timer.mask_hits
                    t["forward_s"] += g.stats.target_time_s
                    t["passes"] += g.stats.forward_passes
                    t["wall_s"] += wall
                    out[on] = g.token_ids
                same[m] += out[True] == out[False]
    finally:
        batched.ENABLED = True
    during = machine.others_share(a, machine.sample())
    rows = []
    for (m, on), t in totals.items():
        n, forward_us = t["tokens"] or 1, 1e6 * t["forward_s"] / max(t["passes"], 1)
        mask_us = 1e6 * t["mask_s"] / n
        rows.append({"method": m, "batched": on, "prompts": len(cases), "tokens": t["tokens"],
                     "mask_us_per_token": round(mask_us, 1), "masks_per_token": round(t["masks"] / n, 3),
                     "llguidance_calls_per_token": round(t["calls"] / n, 3),
                     "forward_us_per_pass": round(forward_us, 1),
                     "mask_share_of_forward": round(mask_us / forward_us, 4) if forward_us else None,
                     "wall_ms_per_token": round(1e3 * t["wall_s"] / n, 3),
                     "same_tokens": f"{same[m]}/{len(cases)}"})
    return {"model": model, "backend": lm.backend if hasattr(lm, "backend") else backend,
            "executor_threads": executor_threads or "llguidance default",
            "machine_load": machine.report(before, during, machine.snapshot()), "rows": rows}


def markdown(result: dict, command: str) -> str:
    from .bench import share, with_warning

    lines = [f"Command: `{command}`", "",
             f"{result['model']}, the `json` suite, temperature 0, batch size 1, llguidance executor threads: "
             f"{result['executor_threads']}. Batched: every mask of a verify step "
             "from one llguidance call (constraints/batched.py); one node: each mask when verification asks.", "",
             "| method | route | mask µs / token | masks / token | llguidance calls / token | forward µs / pass | "
             "mask ÷ forward | wall ms / token | same tokens |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {'batched' if r['batched'] else 'one node'} | {r['mask_us_per_token']} | "
                     f"{r['masks_per_token']} | {r['llguidance_calls_per_token']} | {r['forward_us_per_pass']} | "
                     f"{share(r['mask_share_of_forward'])} | {r['wall_ms_per_token']} | {r['same_tokens']} |")
    return with_warning(lines, result["machine_load"])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m decodelab.constraints.mask_cost", description=__doc__)
    ap.add_argument("--model", default="builtin:pyco")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--methods", default=METHODS, help=f"comma-separated (default {METHODS})")
    ap.add_argument("--limit", type=int, default=None, help="prompts of the json suite (default all 12)")
    ap.add_argument("--executor-threads", type=int, default=None,
                    help="llguidance executor threads for the batched calls (default: llguidance's)")
    ap.add_argument("--out", default=None, help="directory for mask_cost.json and mask_cost.md")
    args = ap.parse_args(argv)
    from .. import methods as registry

    unknown = [m for m in args.methods.split(",") if m not in registry() or registry()[m].kind != "causal"]
    if unknown:
        ap.error(f"unknown or non-causal method {unknown[0]!r}")
    from .bench import publish

    if args.executor_threads is not None and args.executor_threads < 1:
        ap.error("--executor-threads must be at least 1")
    result = run(args.model, args.methods.split(","), args.limit, args.backend, args.executor_threads)
    return publish("decodelab.constraints.mask_cost", argv, result, markdown, args.out, "mask_cost")


if __name__ == "__main__":  # pragma: no cover
    main()
