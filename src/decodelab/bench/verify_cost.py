"""`python -m decodelab.bench.verify_cost`: what one batched verify forward of the native backend costs.

A speculative step over B rows feeds each row its pending token plus its draft; rows draft different
amounts, so the batch is ragged. This times that forward (the target's KV cache holding `--context`
tokens per row) for uniform widths (every row n tokens) and for a ragged batch (one row 11 tokens, the
others 1), through three routes of model/native.py:

- `padded, SDPA`: every row padded to the widest, torch's fused attention (the route before packing);
- `padded, grouped`: the same, attention by `_grouped_attention` (GQA folded into one matmul per KV head);
- `packed, grouped`: the pads taken out of every matmul (`NativeModel.forward_packed`; attention still
  runs over the padded layout), what `methods/loop.py` uses whenever a fourth of the slots are pads.

The ratios to the one-token step (a batched greedy step) say how much a drafted token costs; they are
the cost model behind docs/BENCHMARKS.md's discussion of where speculation stops paying as B grows.
Rounds are interleaved and the median is reported; the machine's load is recorded.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import torch

from . import machine


@contextmanager
def _route(grouped: bool):
    from ..model import native

    saved = native.GROUPED_MAX_QUERIES
    native.GROUPED_MAX_QUERIES = saved if grouped else 0
    try:
        yield
    finally:
        native.GROUPED_MAX_QUERIES = saved


ROUTES = {"padded, SDPA": (False, False), "padded, grouped": (False, True), "packed, grouped": (True, True)}


def shapes(batch: int) -> dict[str, list[int]]:
    """Label → per-row token counts of the verify forward."""
    out = {f"{n} per row": [n] * batch for n in (1, 2, 4, 8, 11)}
    if batch > 1:
        out["ragged 11 + 1s"] = [11] + [1] * (batch - 1)
    return out


@torch.inference_mode()
def measure(model: str | None, batches: list[int], context: int, repeats: int) -> dict:
    from ..model import load

    lm = load(model, backend="native")
    gen = torch.Generator().manual_seed(0)
    before, start = machine.snapshot(), machine.sample()
    times: dict[tuple, list[float]] = {}
    for _ in range(repeats):
        for batch in batches:
            session = lm.session(batch)
            session.forward(torch.randint(3, lm.vocab_size, (batch, context), generator=gen))
            for label, lengths in shapes(batch).items():
                ids = torch.randint(3, lm.vocab_size, (batch, max(lengths)), generator=gen)
                for route, (packed, grouped) in ROUTES.items():
                    with _route(grouped):
                        session.forward(ids, lengths=lengths if packed else None)  # warm-up
                        session.truncate(context)
                        t0 = time.perf_counter()
                        for _ in range(5):
                            session.forward(ids, lengths=lengths if packed else None)
                            session.truncate(context)
                    times.setdefault((batch, label, route), []).append((time.perf_counter() - t0) / 5 * 1e3)
    load_info = machine.report(before, machine.others_share(start, machine.sample()), machine.snapshot())
    table = {f"{b} | {label} | {route}": round(statistics.median(v), 3) for (b, label, route), v in times.items()}
    return {"model": lm.name, "context": context, "threads": torch.get_num_threads(), "repeats": repeats,
            "batches": batches, "ms": table, "load": load_info}


def markdown(result: dict) -> str:
    lines = [f"{result['model']}: one verify forward, ms (median of {result['repeats']}), {result['context']} "
             f"cached tokens per row, {result['threads']} threads; × = over the same route's one-token step",
             "", "| rows | new tokens | " + " | ".join(ROUTES) + " |", "|---:|---|" + "---:|" * len(ROUTES)]
    ms = result["ms"]
    for b in result["batches"]:
        for label in shapes(b):
            cells = []
            for route in ROUTES:
                t, one = ms[f"{b} | {label} | {route}"], ms[f"{b} | 1 per row | {route}"]
                cells.append(f"{t:.2f} ({t / one:.2f}×)")
            lines.append(f"| {b} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m decodelab.bench.verify_cost", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="default builtin:pyco")
    p.add_argument("--batch", default="1,4,8")
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    args = p.parse_args(argv)
    machine.set_threads(args.threads)
    result = measure(args.model, [int(b) for b in args.batch.split(",")], args.context, args.repeats)
    machine.emit(result, markdown(result), args.json)


if __name__ == "__main__":
    main()
