"""The constrained side of `decodelab bench` (suites whose prompts carry a constraint, e.g. `json`).

Every method runs under each prompt's constraint, so the baseline `greedy` is *constrained* greedy
and the main table's speed-ups are against it. Per record (bench/runner.py `run_one`) this adds the
output text, whether it satisfies the constraint (validity.py: `jsonschema` for JSON schemas when
installed), the grammar-forced tokens fed as drafts (fast-forward, `Stats.forced_tokens`), the
target forward time, and the duration of every grammar-mask call (timing.py). Per method the
aggregate gives the validity rate, forced tokens per token, the mask time per processor call and per
batched call (mean, p99; constraints/batched.py) and per token, and the forward time per target pass
that it is compared with.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

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
            "mask_hits": timer.mask_hits, "batch_us": [round(1e6 * s, 1) for s in timer.batch_s],
            "batch_masks": timer.batch_masks,
            "checks": len(timer.check_s), "check_s": round(sum(timer.check_s), 6)}


def aggregate(recs: list[dict]) -> dict:
    """Validity, fast-forward and mask-time figures of one method over its constrained records."""
    recs = [r for r in recs if "valid" in r]
    new = sum(r["new_tokens"] for r in recs)
    passes = sum(r.get("forward_passes", 0) for r in recs)
    calls = sorted(us for r in recs for us in r["mask_us"])
    batches = sorted(us for r in recs for us in r.get("batch_us", []))
    masks = sum(r.get("batch_masks", 0) for r in recs)
    mask_mean = statistics.fmean(calls) if calls else None
    mask_s = (sum(calls) + sum(batches)) / 1e6  # one-node calls (or reads of a batched mask) + batched calls
    forward_us = 1e6 * sum(r["target_time_s"] for r in recs) / passes if passes else None
    from .validity import json_validator

    def per_token(x: float) -> float | None:
        return x / new if new else None

    return {
        "validity": round(sum(r["valid"] for r in recs) / len(recs), 4) if recs else None,
        "validator": json_validator(),  # for JSON schemas: "jsonschema" or "llguidance"
        "valid_outputs": f"{sum(r['valid'] for r in recs)}/{len(recs)}",
        "incomplete_outputs": sum(r["incomplete"] for r in recs),
        "forced_tokens": sum(r["forced_tokens"] for r in recs),
        "forced_tokens_per_token": _round(per_token(sum(r["forced_tokens"] for r in recs)), 4),
        "mask_calls_per_token": _round(per_token(len(calls)), 4),
        "mask_hit_share": _round(sum(r.get("mask_hits", 0) for r in recs) / len(calls) if calls else None, 4),
        "mask_us_mean": _round(mask_mean, 2),
        "mask_us_p99": _round(percentile(calls, 0.99) if calls else None, 2),
        "batch_calls_per_token": _round(per_token(len(batches)), 4),
        "masks_per_batch": _round(masks / len(batches) if batches else None, 2),
        "batch_us_mean": _round(statistics.fmean(batches) if batches else None, 2),
        "batch_us_p99": _round(percentile(batches, 0.99) if batches else None, 2),
        "mask_ms_per_token": _round(per_token(1e3 * mask_s), 4),
        "checks_per_token": _round(per_token(sum(r["checks"] for r in recs)), 4),
        "grammar_ms_per_token": _round(per_token(1e3 * (mask_s + sum(r["check_s"] + r["ff_s"] for r in recs))), 4),
        "forward_us_per_pass": _round(forward_us, 2),
        # all the mask work of one emitted token next to one target forward pass (a decode step)
        "mask_share_of_forward": _round(1e6 * per_token(mask_s) / forward_us if new and forward_us else None, 4),
    }


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def table(rows: list[dict]) -> list[str]:
    """Markdown lines: the constrained figures of a suite's aggregates (bench/report.py)."""
    def f(x, spec=".2f"):
        return "—" if x is None else format(x, spec)

    lines = ["Under the constraint (baseline: constrained greedy). Mask calls = the grammar-mask processor's "
             "calls (one row, one position), which read a mask computed by the step's batched call (hit %) or "
             "compute it; batched = one llguidance call per verify step for every draft node of every row "
             "(constraints/batched.py); mask ms/token = both; checks = single-token validity checks (AWRS; "
             "draft pruning); all grammar = masks + checks + fast-forward queries; mask ÷ forward = mask time "
             "per emitted token ÷ one target forward pass.", "",
             "| method | valid | forced tokens/token | mask calls/token | hit % | mask call µs mean | p99 | "
             "batched calls/token | masks/batched call | batched µs mean | p99 | checks/token | mask ms/token | "
             "all grammar ms/token | forward µs/pass | mask ÷ forward |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for a in rows:
        if a.get("validity") is None:
            continue
        lines.append(f"| {a['method']} | {a['valid_outputs']} | {f(a['forced_tokens_per_token'], '.3f')} | "
                     f"{f(a['mask_calls_per_token'])} | {f(a.get('mask_hit_share'), '.0%')} | "
                     f"{f(a['mask_us_mean'], '.1f')} | {f(a['mask_us_p99'], '.1f')} | "
                     f"{f(a.get('batch_calls_per_token'))} | {f(a.get('masks_per_batch'), '.1f')} | "
                     f"{f(a.get('batch_us_mean'), '.1f')} | {f(a.get('batch_us_p99'), '.1f')} | "
                     f"{f(a['checks_per_token'], '.1f')} | "
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


def share(x: float | None) -> str:
    """A share as a percentage cell ('' when unknown)."""
    return "" if x is None else f"{100 * x:.1f} %"


def with_warning(lines: list[str], machine_load: dict) -> str:
    """The markdown lines, then the busy-machine warning when the load calls for one (bench/machine.py)."""
    from ..bench import machine

    warning = machine.warning(machine_load)
    return "\n".join(lines + ([f"\n{warning}"] if warning else [])) + "\n"


def publish(module: str, argv: list[str] | None, result: dict, markdown, out: str | None, stem: str) -> dict:
    """Record the command in `result`, print its markdown, and with `out` write STEM.json and STEM.md there
    (the shared ending of the constraint bench scripts)."""
    command = (f"python -m {module} " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    result["command"] = command
    text = markdown(result, command)
    print(text)
    if out:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        (path / f"{stem}.json").write_text(json.dumps(result, indent=1))
        (path / f"{stem}.md").write_text(text)
    return result
