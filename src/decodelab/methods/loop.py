"""The one draft-then-verify loop every speculative method runs (batch 1).

Cache layout: the target's cache holds the context except the *pending* token (the last one
emitted). Each step feeds `[pending] + draft` in one forward — a chain with the model's own causal
mask, a tree with a 4-D tree mask — verifies, then compacts the cache to pending + accepted path.
Budgets are enforced here, once: drafts never exceed what `max_new_tokens` or the context allows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch

from ..constraints import prune
from ..treeshape import tree_depths
from ..verify import Draft, Verdict, verify
from .autoregressive import prefill


class Proposer(Protocol):
    def propose(self, ctx, limit: int) -> Draft:
        """A draft of depth ≤ limit for the context ctx.ids() (its last token is pending)."""

    def observe(self, ctx, draft: Draft, verdict: Verdict, logits: torch.Tensor) -> None:
        """Learn from a verify step; logits [1 + len(draft) + len(aux), V].

        A proposer with `wants_hidden = True` is also given `hidden=`: the verify forward's hidden
        states (embeddings + every layer, each [1, 1 + len(draft) + len(aux), H]).
        """


def _clip(draft: Draft, limit: int) -> Draft:
    """Drop candidate nodes deeper than `limit` (aux nodes are kept only when nothing is dropped)."""
    if draft.depth() <= limit:
        return draft
    keep = [i for i, d in enumerate(tree_depths(draft.parents)) if d < limit]
    index = {old: new for new, old in enumerate(keep)}
    q = draft.q[keep] if draft.q is not None else None
    return Draft([draft.tokens[i] for i in keep], [index.get(draft.parents[i], -1) for i in keep], q)


def _p_at(ctx, draft: Draft, logits: torch.Tensor):
    """Lazy p(node) from the verify logits; history = context + path to the node."""
    sampler, base = ctx.sampler, ctx.ids()
    if not sampler.needs_history:
        probs = sampler.probs(None, logits)  # [1 + n(+aux), V] all at once

        def p_batched(node: int) -> torch.Tensor:
            return probs[node + 1]
        return p_batched

    def p_history(node: int) -> torch.Tensor:
        path, j = [], node
        while j >= 0:
            path.append(draft.tokens[j])
            j = draft.parents[j]
        history = torch.tensor([base + path[::-1]])
        return sampler.probs(history, logits[node + 1 : node + 2])[0]
    return p_history


def speculative_loop(ctx, proposer) -> Iterator[list[list[int]]]:
    """Prefill, then propose → verify → compact, yielding the tokens of each step."""
    if ctx.batch_size != 1:
        raise ValueError("speculative methods run one sequence at a time")
    session = ctx.session()
    ctx.target_session = session  # proposers that share the target's cache (early exits) draft into it
    first = ctx.sampler.sample(ctx.sampler.probs(torch.tensor([ctx.prompts[0]]), prefill(ctx, session)),
                               ctx.generator)
    yield [[int(first)]]
    wants_hidden = getattr(proposer, "wants_hidden", False)
    while True:
        limit = min(ctx.remaining() - 1, ctx.lm.max_length - session.length - 1)
        draft = _clip(proposer.propose(ctx, limit), limit) if limit > 0 else Draft()
        if ctx.sampler.constraint is not None:  # cut drafts at the first token the grammar rejects
            draft = prune(draft, ctx.sampler.constraint.rows[0], ctx.out[0])
        if draft.is_chain():
            out = session.forward([ctx.ids()[-1]] + draft.tokens, hidden=wants_hidden)
        else:
            parents = [-1] + [p + 1 for p in draft.parents + draft.aux_parents]
            out = session.forward([ctx.ids()[-1]] + draft.tokens + draft.aux_tokens, parents=parents,
                                  hidden=wants_hidden)
        logits, extra = (out[0][0], {"hidden": out[1]}) if wants_hidden else (out[0], {})
        verdict = verify(draft, _p_at(ctx, draft, logits), ctx.generator, ctx.sampler.greedy)
        session.accept([0] + [1 + i for i in verdict.path])  # pending token + accepted path
        proposer.observe(ctx, draft, verdict, logits, **extra)
        ctx.stats.record_drafts(draft.depth(), len(verdict.path))
        yield [verdict.tokens]
