"""The diffusion samplers with and without a grammar on the `json` suite (constraints/diffusion.py).

`python -m decodelab.constraints.diffusion_bench --out docs/constraints`: the 12 prompts and schemas of
the `json` bench suite (constraints/json_suite.py) on `builtin:pyco-diffusion`, each sampler run without
and with the prompt's schema at batch size 1, temperature 0. Per configuration: outputs that validate
(constraints/validity.py: `jsonschema` when installed), outputs complete (the grammar ended / an EOS),
forward passes and wall time per item, and the grammar's own time per item — masks at the first
masked position plus the witness checks (constraints/timing.py) — as a share of the wall time. The
machine's load before, during and after is recorded (bench/machine.py); wall times from a busy machine
are flagged.
"""

from __future__ import annotations

import argparse
import time

CONFIGS = [("llada", {"block_length": 32}), ("fastdllm", {"threshold": 0.9, "block_length": 32}),
           ("sspd", {"block_length": 32, "draft_length": 8})]  # sspd = llada's output (constrained too), fewer calls


def run(model: str = "builtin:pyco-diffusion", max_new_tokens: int = 96, limit: int | None = None,
        methods: list[str] | None = None) -> dict:
    from .. import generate, load
    from ..bench import machine
    from . import compile_constraint, validity
    from .json_suite import CASES
    from .timing import grammar_timing

    lm = load(model)
    cases = CASES[:limit]
    before, a = machine.snapshot(), machine.sample()
    rows = []
    for method, params in [c for c in CONFIGS if methods is None or c[0] in methods]:
        for constrained in (False, True):
            n = len(cases)
            valid = complete = passes = wall = grammar_s = 0.0
            for _, prompt, schema, _ in cases:
                constraint = {"json_schema": schema}
                grammar = compile_constraint(lm, constraint)
                with grammar_timing() as timer:
                    t0 = time.perf_counter()
                    g = generate(lm, prompt, method=method, max_new_tokens=max_new_tokens,
                                 constraint=constraint if constrained else None, **params)
                    wall += time.perf_counter() - t0
                body = g.text.split("'", 1)[0] if not constrained else g.text  # free text ends at the quote
                valid += validity.satisfied(constraint, body, grammar)
                complete += g.finish_reason in ("stop", "eos") and not g.incomplete
                passes += g.stats.forward_passes
                grammar_s += sum(timer.mask_s) + sum(timer.check_s) + sum(timer.batch_s)
            rows.append({"method": method, "params": params, "constrained": constrained, "items": n,
                         "valid": int(valid), "complete": int(complete), "passes_per_item": round(passes / n, 2),
                         "wall_s_per_item": round(wall / n, 4), "grammar_ms_per_item": round(1e3 * grammar_s / n, 3),
                         "grammar_share_of_wall": round(grammar_s / wall, 4) if wall else None})
    during = machine.others_share(a, machine.sample())
    load = machine.report(before, during, machine.snapshot())
    return {"model": model, "max_new_tokens": max_new_tokens, "validator": validity.json_validator(),
            "machine_load": load, "rows": rows}


def markdown(result: dict, command: str) -> str:
    from .bench import share, with_warning

    lines = [f"Command: `{command}`", "",
             f"{result['model']}, canvas {result['max_new_tokens']} tokens, temperature 0, batch size 1; "
             f"validator: {result['validator']}. Unconstrained outputs are cut at the closing quote before "
             "validation.", "",
             "| sampler | grammar | valid | complete | passes / item | wall s / item | grammar ms / item | "
             "grammar share |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} {r['params']} | {'on' if r['constrained'] else 'off'} | "
                     f"{r['valid']}/{r['items']} | {r['complete']}/{r['items']} | {r['passes_per_item']} | "
                     f"{r['wall_s_per_item']} | {r['grammar_ms_per_item']} | {share(r['grammar_share_of_wall'])} |")
    return with_warning(lines, result["machine_load"])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m decodelab.constraints.diffusion_bench", description=__doc__)
    ap.add_argument("--model", default="builtin:pyco-diffusion")
    ap.add_argument("--max-new-tokens", type=int, default=96, help="canvas length (gen_length)")
    ap.add_argument("--limit", type=int, default=None, help="prompts of the json suite (default all 12)")
    ap.add_argument("--methods", default=None, help="comma-separated samplers of " + ",".join(c[0] for c in CONFIGS)
                    + " (default all)")
    ap.add_argument("--out", default=None, help="directory for diffusion.json and diffusion.md")
    args = ap.parse_args(argv)
    methods = args.methods.split(",") if args.methods else None
    unknown = sorted(set(methods or []) - {c[0] for c in CONFIGS})
    if unknown:
        ap.error(f"unknown sampler {unknown[0]!r}; choose from {', '.join(c[0] for c in CONFIGS)}")
    from .bench import publish

    result = run(args.model, args.max_new_tokens, args.limit, methods)
    return publish("decodelab.constraints.diffusion_bench", argv, result, markdown, args.out, "diffusion")


if __name__ == "__main__":  # pragma: no cover
    main()
