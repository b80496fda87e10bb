"""Cheap timers for the grammar work of a constrained generation: mask and fast-forward time.

The issue's cost question is how long computing the grammar mask takes per token next to a forward
pass (llguidance reports ~50 µs of one core per mask on a 128k vocabulary; JSONSchemaBench,
arXiv:2501.10868). `GrammarMask` and `RowConstraint.allowed` (full masks), `RowConstraint.validate`
(token checks: AWRS, draft pruning) and `RowConstraint.forced_tokens` (matcher.py) time themselves with
two `perf_counter` calls and hand the duration to the collector that is active in this context, if
any, so nothing is paid or stored when nobody measures:

    with grammar_timing() as timer:
        g = decodelab.generate(lm, prompt, constraint=...)
    timer.summary()  # mask_calls, mask_rows, mask_s, mask_us_mean, mask_us_p99, ff_calls, ff_s, check_calls, check_s

A "mask call" is one processor call: the masks of the rows it is handed at one position each (at
batch size 1, one token's mask; a speculative verify asks once per tree node; a batched loop asks
once per batch or once per row); `mask_rows` counts the row masks. It covers seeking the row's
matcher to the node's history, llguidance's mask computation, unpacking the bitmask and masking
the scores. Since a verify step's masks are computed together (batched.py: one llguidance call per
step for every draft node of every row), most processor calls read a mask (`mask_hits`) instead of
computing one; the batched calls are timed apart (`batch_calls`, `batch_masks`, `batch_s`), and the
mask time per token is the sum of both. The collector is a `contextvars.ContextVar`, so concurrent generations in other threads
(the server) are not mixed in; the batched call's worker thread (batched.py) records into the timer of
the generation that started it. These are compute times: with the batched call overlapped with the
forward, what the decode step waits for is less, and constraints/mask_cost.py measures that by replay.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

_ACTIVE: ContextVar["GrammarTimer | None"] = ContextVar("decodelab_grammar_timer", default=None)
clock = time.perf_counter


@dataclass
class GrammarTimer:
    """Durations of the grammar work done while this timer was active."""

    mask_s: list[float] = field(default_factory=list)  # one entry per GrammarMask call
    mask_rows: int = 0  # row masks computed (a call covers the batch's rows)
    ff_s: list[float] = field(default_factory=list)  # one entry per fast-forward query
    check_s: list[float] = field(default_factory=list)  # one entry per validate_tokens call (AWRS, pruning)
    mask_hits: int = 0  # row masks a GrammarMask call read from the step's batch instead of computing
    batch_s: list[float] = field(default_factory=list)  # one entry per batched call (batched.py)
    batch_masks: int = 0  # masks the batched calls computed

    def add(self, other: "GrammarTimer") -> None:
        """Fold another timer's records into this one (a nested measurement, constraints/mask_cost.py)."""
        self.mask_s += other.mask_s
        self.ff_s += other.ff_s
        self.check_s += other.check_s
        self.batch_s += other.batch_s
        self.mask_rows += other.mask_rows
        self.mask_hits += other.mask_hits
        self.batch_masks += other.batch_masks

    def total_s(self) -> float:
        """All the grammar work recorded: masks (processor and batched calls), checks, fast-forward queries."""
        return sum(self.mask_s) + sum(self.batch_s) + sum(self.check_s) + sum(self.ff_s)

    def summary(self) -> dict:
        calls = sorted(self.mask_s)
        return {"mask_calls": len(calls), "mask_rows": self.mask_rows, "mask_s": round(sum(calls), 6),
                "mask_us_mean": round(1e6 * sum(calls) / len(calls), 2) if calls else None,
                "mask_us_p99": round(1e6 * percentile(calls, 0.99), 2) if calls else None,
                "ff_calls": len(self.ff_s), "ff_s": round(sum(self.ff_s), 6),
                "check_calls": len(self.check_s), "check_s": round(sum(self.check_s), 6),
                "mask_hits": self.mask_hits, "batch_calls": len(self.batch_s), "batch_masks": self.batch_masks,
                "batch_s": round(sum(self.batch_s), 6)}


def percentile(xs: list[float], q: float) -> float:
    """The q-quantile of sorted `xs`, linear between order statistics (numpy's default)."""
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@contextmanager
def grammar_timing() -> Iterator[GrammarTimer]:
    """Collect the grammar work done in this context (this thread / task) into a fresh timer."""
    timer = GrammarTimer()
    token = _ACTIVE.set(timer)
    try:
        yield timer
    finally:
        _ACTIVE.reset(token)


def record_mask(seconds: float, rows: int, hits: int = 0) -> None:
    timer = _ACTIVE.get()
    if timer is not None:
        timer.mask_s.append(seconds)
        timer.mask_rows += rows
        timer.mask_hits += hits


def record_batch(seconds: float, masks: int) -> None:
    timer = _ACTIVE.get()
    if timer is not None:
        timer.batch_s.append(seconds)
        timer.batch_masks += masks


def record_ff(seconds: float) -> None:
    timer = _ACTIVE.get()
    if timer is not None:
        timer.ff_s.append(seconds)


def record_check(seconds: float) -> None:
    timer = _ACTIVE.get()
    if timer is not None:
        timer.check_s.append(seconds)
