"""The constrained side of `decodelab bench` (suites whose prompts carry a constraint, e.g. `json`).

Every method runs under each prompt's constraint, so the baseline `greedy` is *constrained* greedy
and the main table's speed-ups are against it. Per record (bench/runner.py `run_one`) this adds the
output text, whether it satisfies the constraint (validity.py: `jsonschema` for JSON schemas when
installed), the grammar-forced tokens fed as drafts (fast-forward, `Stats.forced_tokens`), the
target forward time, and the duration of every grammar-mask call (timing.py). Per method the
aggregate gives the validity rate, forced tokens per token, the mask time per call (mean, p99) and
per token, and the forward time per target pass that it is compared with.
"""

from __future__ import annotations

import statistics

from .timing import GrammarTimer, percentile


def record_fields(lm, generation, constraint: dict, timer: GrammarTimer) -> dict:
    """The constrained fields of one bench record (added after the timed call)."""
    from .spec import compile_constraint
    from .validity import satisfied

    g = generation
    return {"text": g.text, "valid": satisfied(constraint, g.text, compile_constraint(lm, constraint)),
            "finish_reason": g.finish_reason, "incomplete": bool(g.incomplete),
            "forced_tokens": g.stats.forced_tokens, "target_time_s": g.stats.target_time_s,
            "mask_us": [round(1e6 * s, 1) for s in timer.mask_s], "ff_s": round(sum(timer.ff_s), 6),
            "checks": len(timer.check_s), "check_s": round(sum(timer.check_s), 6)}


def aggregate(recs: list[dict]) -> dict:
    """Validity, fast-forward and mask-time figures of one method over its constrained records."""
    recs = [r for r in recs if "valid" in r]
    new = sum(r["new_tokens"] for r in recs)
    passes = sum(r.get("forward_passes", 0) for r in recs)
    calls = sorted(us for r in recs for us in r["mask_us"])
    mask_mean = statistics.fmean(calls) if calls else None
    forward_us = 1e6 * sum(r["target_time_s"] for r in recs) / passes if passes else None
    from .validity import json_validator

    return {
        "validity": round(sum(r["valid"] for r in recs) / len(recs), 4) if recs else None,
        "validator": json_validator(),  # for JSON schemas: "jsonschema" or "llguidance"
        "valid_outputs": f"{sum(r['valid'] for r in recs)}/{len(recs)}",
        "incomplete_outputs": sum(r["incomplete"] for r in recs),
        "forced_tokens": sum(r["forced_tokens"] for r in recs),
        "forced_tokens_per_token": round(sum(r["forced_tokens"] for r in recs) / new, 4) if new else None,
        "mask_calls_per_token": round(len(calls) / new, 4) if new else None,
        "mask_us_mean": _round(mask_mean, 2),
        "mask_us_p99": _round(percentile(calls, 0.99) if calls else None, 2),
        "mask_ms_per_token": _round(sum(calls) / 1e3 / new if new else None, 4),
        "checks_per_token": round(sum(r["checks"] for r in recs) / new, 4) if new else None,
        "grammar_ms_per_token": _round(1e3 * sum(sum(r["mask_us"]) / 1e6 + r["check_s"] + r["ff_s"] for r in recs)
                                       / new if new else None, 4),
        "forward_us_per_pass": _round(forward_us, 2),
        "mask_share_of_forward": _round(mask_mean / forward_us if mask_mean is not None and forward_us else None, 4),
    }


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def table(rows: list[dict]) -> list[str]:
    """Markdown lines: the constrained figures of a suite's aggregates (bench/report.py)."""
    def f(x, spec=".2f"):
        return "—" if x is None else format(x, spec)

    lines = ["Under the constraint (baseline: constrained greedy). Mask = one grammar-mask computation "
             "(one row, one position); checks = single-token validity checks (AWRS; draft pruning); all "
             "grammar = masks + checks + fast-forward queries; share = mean mask time ÷ mean target forward "
             "pass.", "",
             "| method | valid | forced tokens/token | mask µs mean | mask µs p99 | masks/token | checks/token | "
             "mask ms/token | all grammar ms/token | forward µs/pass | mask ÷ forward |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for a in rows:
        if a.get("validity") is None:
            continue
        lines.append(f"| {a['method']} | {a['valid_outputs']} | {f(a['forced_tokens_per_token'], '.3f')} | "
                     f"{f(a['mask_us_mean'], '.1f')} | {f(a['mask_us_p99'], '.1f')} | "
                     f"{f(a['mask_calls_per_token'])} | {f(a['checks_per_token'], '.1f')} | "
                     f"{f(a['mask_ms_per_token'], '.3f')} | {f(a['grammar_ms_per_token'], '.3f')} | "
                     f"{f(a['forward_us_per_pass'], '.0f')} | {f(a['mask_share_of_forward'], '.1%')} |")
    return lines + [""]


def refusals(lm, entries, constraint: dict) -> dict[str, str]:
    """{label: reason} for the decodelab methods that refuse a constraint (ValueError), found with a
    one-token generation each before anything is timed. (Transformers peers are not asked: the bench
    runs them on unconstrained prompts only.)"""
    from ..api import generate

    out = {}
    for e in (e for e in entries if not e.is_peer):
        try:
            generate(lm, "x", method=e.method, max_new_tokens=1, seed=0, constraint=constraint, **e.params)
        except ValueError as exc:
            out[e.label] = f"refuses a constraint: {exc}"
    return out
