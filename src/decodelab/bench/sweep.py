"""`decodelab bench --batch-size 1,4,8,16`: every method's throughput at every batch size, side by side.

Each batch size is one ordinary bench run (its own results.json and report under OUT/batch-B/, methods
interleaved, machine load recorded); this module adds the 2-D table: tokens/s per method and batch size,
and each method's ratio to decodelab's batched greedy and to transformers' batched greedy (`hf:greedy`,
left-padded `generate`) at the same batch size. A ratio is only compared within one batch size, i.e.
within one run.
"""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path

from ..errors import UserError


def batch_sizes(text: str) -> list[int]:
    """'8' or '1,4,8,16' → sorted distinct batch sizes, each ≥ 1."""
    try:
        sizes = sorted({int(x) for x in str(text).split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--batch-size takes an integer or a list like 1,4,8,16, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise UserError(f"--batch-size must be ≥ 1, got {text!r}")
    return sizes


def sweep(args, names: list[str], params: dict, bench) -> dict:
    """Run `bench(args_for_B, names, params)` for every batch size; write OUT/sweep.{json,md}."""
    from .report import write

    rows, out = {}, Path(args.out)
    for size in batch_sizes(args.batch_size):
        one = copy.copy(args)
        one.batch_size, one.out = size, str(out / f"batch-{size}")
        results = bench(one, names, params)
        write(results, Path(one.out))
        rows[size] = {"load": results["machine"]["load"], "methods": _throughput(results)}
    summary = {"schema": "decodelab.bench-sweep/1", "model": results["config"]["model"],
               "command": results["config"]["command"], "batch_sizes": sorted(rows), "by_batch_size": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(summary, indent=1))
    (out / "sweep.md").write_text(markdown(summary))
    return summary


def _throughput(results: dict) -> dict[str, dict]:
    """Per method: tokens/s over all records (Σ tokens ÷ Σ wall time), exactness, τ."""
    out = {}
    for rec in results["records"]:
        m = out.setdefault(rec["method"], {"tokens": 0, "wall": 0.0, "exact": True, "tau": [], "latency": []})
        m["tokens"] += rec["new_tokens"]
        m["wall"] += rec["wall_time_s"]
        m["latency"] += rec.get("row_latency_s", [])
        if rec.get("mean_accepted"):
            m["tau"].append(rec["mean_accepted"])
    for a in results["aggregates"]:
        if a["method"] in out and a.get("exact") is False:
            out[a["method"]]["exact"] = False
    table = {}
    for name, m in out.items():
        table[name] = {"tokens_per_s": round(m["tokens"] / m["wall"], 2) if m["wall"] else 0.0,
                       "exact": m["exact"], "tau": round(sum(m["tau"]) / len(m["tau"]), 2) if m["tau"] else None,
                       "row_latency_p50_s": round(statistics.median(m["latency"]), 3) if m["latency"] else None}
    greedy = table.get("greedy", {}).get("tokens_per_s") or 0
    peer = table.get("hf:greedy", {}).get("tokens_per_s") or 0
    for entry in table.values():
        entry["vs_greedy"] = round(entry["tokens_per_s"] / greedy, 3) if greedy else None
        entry["vs_hf_greedy"] = round(entry["tokens_per_s"] / peer, 3) if peer else None
    return table


def markdown(summary: dict) -> str:
    sizes = summary["batch_sizes"]
    methods = sorted({m for b in sizes for m in summary["by_batch_size"][b]["methods"]},
                     key=lambda m: (m != "greedy", m.startswith("hf:"), m))
    lines = [f"# Batch sweep — {summary['model']}", "", f"Command: `{summary['command']}`", "",
             "tokens/s (× decodelab batched greedy at the same batch size; exact = every row equals greedy alone)", "",
             "| method | " + " | ".join(f"batch {b}" for b in sizes) + " |",
             "|---|" + "---:|" * len(sizes)]
    for m in methods:
        cells = []
        for b in sizes:
            e = summary["by_batch_size"][b]["methods"].get(m)
            if e is None:
                cells.append("—")
                continue
            ratio = f" ({e['vs_greedy']:.2f}×)" if e["vs_greedy"] is not None and m != "greedy" else ""
            cells.append(f"{e['tokens_per_s']:.1f}{ratio}{'' if e['exact'] else ' NOT exact'}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Median time from a row's arrival in the batch to its last token, s (decodelab methods):", "",
              "| method | " + " | ".join(f"batch {b}" for b in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for m in methods:
        cells = [summary["by_batch_size"][b]["methods"].get(m, {}).get("row_latency_p50_s") for b in sizes]
        if any(c is not None for c in cells):
            lines.append(f"| {m} | " + " | ".join("—" if c is None else f"{c:.3f}" for c in cells) + " |")
    lines += ["", "decodelab batched greedy ÷ transformers batched greedy: " + ", ".join(
        f"batch {b}: {summary['by_batch_size'][b]['methods'].get('greedy', {}).get('vs_hf_greedy')}" for b in sizes),
        "", "Machine load per run (load average before → after, other processes' CPU share): " + "; ".join(
        f"batch {b}: {_load(summary['by_batch_size'][b]['load'])}" for b in sizes), ""]
    return "\n".join(lines)


def _load(load: dict) -> str:
    before, after = load.get("before", {}), load.get("after", {})
    return (f"{before.get('load_avg_1m', '?')} → {after.get('load_avg_1m', '?')}, others "
            f"{load.get('during_others_cpu_share', '?')}{' (BUSY)' if load.get('busy') else ''}")
