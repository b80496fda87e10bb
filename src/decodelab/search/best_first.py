"""Best-first beam search — Meister, Vieira and Cotterell, "Best-First Beam Search" (TACL 2020,
arXiv:2007.03909).

A priority queue of hypotheses ordered by score (sum of log-probabilities: monotonically
non-increasing as a hypothesis grows). Pop the best; skip it if k hypotheses of its length were
already popped; a complete hypothesis (EOS or the length limit) popped first is the answer; else push
its children. Only a parent's k best children can ever be popped (k better siblings of the same
length come first), so only those are pushed. With monotone scores this returns what beam search of
width k returns (the paper's equivalence; checked in tests/search/test_best_first.py), usually after
fewer model calls. `max_queue` > 0 is the memory-reduced variant: the queue keeps its best entries only.

One row at a time (the registry runs rows one by one); `Session.sync` rolls the KV cache back to the
popped hypothesis's longest common prefix with the cache, so consecutive pops along a path are cheap.
A grammar `constraint=` composes: the row's matcher seeks each popped hypothesis before masking its
children, so a forbidden token is never pushed.
"""

from __future__ import annotations

import heapq
import itertools

import torch

from .beam import beam_log_probs, beam_sampler


def _next_scores(ctx, sampler, session, context: list[int]) -> torch.Tensor:
    """[V] step scores after `context` (prompt + hypothesis), reusing the cache where it agrees."""
    missing = session.sync(context)
    if not missing:  # the whole context is cached: re-feed its last token for its logits
        session.truncate(len(context) - 1)
        missing = context[-1:]
    logits = session.forward(missing)[:, -1]  # [1, V]
    history = torch.tensor([context]) if sampler.needs_history else None
    return beam_log_probs(sampler, history, logits)[0]


def best_first_beam(ctx, k: int, max_queue: int = 0) -> list[tuple[list[int], float]]:
    """Row 0's answer as [(new tokens, sum log-prob)] (one hypothesis: the first complete one popped)."""
    prompt, max_new, eos = ctx.prompts[0], ctx.remaining(0), ctx.lm.eos_token_ids
    sampler = beam_sampler(ctx.sampler, 1)  # a grammar's matcher seeks each popped hypothesis (no healing)
    session, order = ctx.session(), itertools.count()
    queue: list[tuple[float, int, list[int]]] = [(0.0, next(order), [])]
    pops: dict[int, int] = {}
    while queue:
        neg, _, hyp = heapq.heappop(queue)
        if pops.get(len(hyp), 0) >= k:
            continue
        pops[len(hyp)] = pops.get(len(hyp), 0) + 1
        if hyp and (hyp[-1] in eos or len(hyp) >= max_new):
            return [(hyp, -neg)]
        top, ids = _next_scores(ctx, sampler, session, prompt + hyp).topk(k)
        for lp, t in zip(top.tolist(), ids.tolist()):
            if lp > float("-inf"):
                heapq.heappush(queue, (neg - lp, next(order), hyp + [t]))
        if max_queue and len(queue) > max_queue:
            queue = heapq.nsmallest(max_queue, queue)
    return []
