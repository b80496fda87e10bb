"""The one draft-then-verify loop every speculative method runs, for one row or a batch of rows.

Cache layout: the target's cache holds the context except the *pending* token (the last one
emitted). Each step feeds `[pending] + draft` in one forward — a chain with the model's own causal
mask, a tree with a 4-D tree mask — verifies, then compacts the cache to pending + accepted path.
Budgets are enforced here, once: drafts never exceed what `max_new_tokens` or the context allows.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..constraints import prune
from ..constraints.batched import premask_views
from ..treeshape import tree_depths
from ..verify import Draft, verify
from .autoregressive import admit, emitted_by_row, retire, row_probs, sample_rows


def _clip(draft: Draft, limit: int) -> Draft:
    """Drop candidate nodes deeper than `limit` (aux nodes are kept only when nothing is dropped)."""
    if draft.depth() <= limit:
        return draft
    keep = [i for i, d in enumerate(tree_depths(draft.parents)) if d < limit]
    index = {old: new for new, old in enumerate(keep)}
    q = draft.q[keep] if draft.q is not None else None
    return Draft([draft.tokens[i] for i in keep], [index.get(draft.parents[i], -1) for i in keep], q)


def _fit(draft: Draft, room: int) -> Draft:
    """At most `room` nodes (candidates + aux): the cache columns left. Aux nodes go first; then a prefix
    of the candidates, which is still a tree because parents precede their children."""
    if len(draft.tokens) + len(draft.aux_tokens) <= room:
        return draft
    room = max(room, 0)
    q = draft.q[:room] if draft.q is not None else None
    return Draft(draft.tokens[:room], draft.parents[:room], q)


class _TargetP:
    """Lazy p(node) from the verify logits (history = context + path to the node; node −1 is the pending
    position), remembering log Z_t at every node it evaluates (processors/distortion.py)."""

    def __init__(self, ctx, draft: Draft, logits: torch.Tensor):
        self.sampler, self.base, self.draft, self.logits = ctx.sampler, ctx.ids(), draft, logits
        self.log_z: dict[int, float] = {}
        self.all = None
        if not self.sampler.needs_history:  # [1 + n(+aux), V] all at once
            self.all, log_z = self.sampler.probs_and_log_z(None, logits)
        elif self.sampler.grammar_only_history and not draft.aux_tokens:
            self.all, log_z = self._masked_at_once(draft, logits)
        if self.all is not None and log_z is not None:
            self.log_z = dict(enumerate(log_z.tolist(), start=-1))

    def _masked_at_once(self, draft: Draft, logits: torch.Tensor):
        """Under a grammar alone, every node's mask from the step's batched call (constraints/batched.py)
        applied in one call instead of one per node; (None, None) when any mask is not known."""
        constraint = self.sampler.constraint
        keys = [tuple(self.base[constraint.prompt_len:])]
        for token, parent in zip(draft.tokens, draft.parents):  # parents precede their children
            keys.append(keys[parent + 1] + (token,))
        masked = constraint.mask_nodes(keys, logits, raw=True)  # grammar_only_history: no processor before it
        return (None, None) if masked is None else self.sampler.probs_of_processed(masked)

    def __call__(self, node: int) -> torch.Tensor:
        if self.all is not None:
            return self.all[node + 1]
        path, j = [], node
        while j >= 0:
            path.append(self.draft.tokens[j])
            j = self.draft.parents[j]
        history = torch.tensor([self.base + path[::-1]])
        probs, log_z = self.sampler.probs_and_log_z(history, self.logits[node + 1 : node + 2])
        if log_z is not None:
            self.log_z[node] = float(log_z[0])
        return probs[0]

    def record(self, ctx, b: int, path: list[int], emitted: int) -> None:
        """Row b's log Z_t for the tokens this step emitted: the pending position, then the accepted path's
        nodes (the bonus token is drawn at the last one). Nothing when greedy."""
        if self.sampler.greedy:
            return
        for node in ([-1] + path)[:emitted]:
            if node not in self.log_z:
                self(node)
            ctx.log_z[b].append(self.log_z[node])


def speculative_loop(ctx, make_proposer) -> Iterator[list[list[int]]]:
    """Prefill, then propose → verify → accept, yielding the tokens of each step (`batched_loop`, for one
    row as for many).

    make_proposer(view) builds one proposer for a row's view (`ctx.row(b)`); a proposer instance is
    accepted too, for a batch of one row."""
    if hasattr(make_proposer, "propose"):
        if ctx.batch_size != 1 or ctx.open:
            raise ValueError("a proposer instance drafts for one row; pass a factory for a batch")
        proposer = make_proposer
        return batched_loop(ctx, lambda view: proposer)
    return batched_loop(ctx, make_proposer)


def batched_loop(ctx, make_proposer) -> Iterator[list[list[int]]]:
    """B rows, one batched target forward per step (BASS, arXiv:2404.15778: ragged per-row acceptance).

    Each live row's proposer drafts against its own view (`ctx.row(b)`: its tokens, its generator);
    drafts are padded to one width (a chain is extended, a tree gets detached nodes) and verified in one
    forward with per-row tree masks; each row is verified by the one verifier with its own randomness
    and accepts its own path (`Session.accept_rows`: rejected columns become holes, closed by
    `defragment`). Finished rows leave the batch (`Session.reorder`); rows that join between steps
    (continuous batching) are prefilled apart, emit their first token, and merge into the batch. With
    the same seed a row draws the same tokens as it would alone (row b uses seed s + b).
    """
    session, rows, proposers, wants_hidden, caps = None, [], {}, False, {}
    while True:
        session, rows, logits = admit(ctx, session, rows)
        if logits is not None:  # new rows: their first token (the pending one), then their proposers
            joined = rows[len(rows) - logits.shape[0]:]
            first = sample_rows(ctx, row_probs(ctx, joined, logits), joined).tolist()
            for b in joined:
                if not ctx.open and ctx.batch_size == 1:  # one row for good: drafts may share its cache
                    ctx.row(b).target_session = session  # (early exits, proposers/self_draft.py)
                proposers[b] = make_proposer(ctx.row(b))
            wants_hidden = any(getattr(p, "wants_hidden", False) for p in proposers.values())
            yield emitted_by_row(ctx, joined, [[t] for t in first])
        session, rows = retire(ctx, session, rows)
        for b in [b for b in proposers if ctx.done[b]]:
            del proposers[b]
            caps.pop(b, None)
        if not rows:
            if not ctx.open:
                return
            yield []
            continue
        yield _step(ctx, session, rows, proposers, wants_hidden, caps)


def _step(ctx, session, rows: list[int], proposers: dict, wants_hidden: bool, caps: dict) -> list[list[int]]:
    """One draft → batched verify → per-row accept step over the live rows; the tokens each row emits."""
    views = [ctx.row(b) for b in rows]
    drafts = _drafts(rows, views, proposers, session, caps)
    ids, parents, chain, lengths = _pack([v.ids()[-1] for v in views], drafts, ctx.lm.pad_token_id)
    with premask_views(views, drafts):  # the verify's grammar masks, computed while the forward runs (batched.py)
        out = session.forward(ids, parents=None if chain else parents, hidden=wants_hidden, lengths=lengths)
    logits, hidden = (out[0], out[1]) if wants_hidden else (out, None)
    nodes, emitted = [], [[] for _ in ctx.prompts]
    for i, (b, view, draft) in enumerate(zip(rows, views, drafts)):
        row_logits = logits[i, : 1 + len(draft) + len(draft.aux_tokens)]
        target = _TargetP(view, draft, row_logits)
        verdict = verify(draft, target, view.generator, view.sampler.greedy)
        target.record(ctx, b, verdict.path, len(verdict.tokens))
        nodes.append([0] + [1 + j for j in verdict.path])
        emitted[b] = verdict.tokens
        extra = {"hidden": tuple(h[i : i + 1] for h in hidden)} if hidden is not None else {}
        proposers[b].observe(view, draft, verdict, row_logits, **extra)
        ctx.stats.record_drafts(draft.depth(), len(verdict.path))
        if len(rows) > 1 and draft.depth():
            caps[b] = _next_cap(caps.get(b, FIRST_CAP), draft.depth(), len(verdict.path))
        if ctx.row_stats is not None:
            ctx.row_stats[b].record_drafts(draft.depth(), len(verdict.path))
    session.accept_rows(nodes)
    if session.holes() > HOLES_BEFORE_DEFRAGMENT:
        session.defragment()
    return emitted


HOLES_BEFORE_DEFRAGMENT = 16  # wasted cache columns tolerated before the holes are closed

# BASS's dynamic draft length (Qian et al., arXiv:2404.15778, §3.3): in a batch, every drafted token costs
# a verify column whether it is accepted or not, so each greedy row's draft depth follows its own
# acceptance — two deeper after a step that accepted all it drafted, one shallower otherwise. A row alone
# drafts as its proposer likes (verifying a few more tokens is nearly free at batch 1); a sampled row too,
# since its random draws depend on how many tokens it drafts, and a row keeps its seed's output whatever
# the batch around it (greedy rows' output does not depend on the draft at all).
FIRST_CAP, MAX_CAP = 4, 64


def _next_cap(cap: int, drafted: int, accepted: int) -> int:
    return min(cap + 2, MAX_CAP) if accepted >= drafted else max(cap - 1, 1)


def _drafts(rows: list[int], views: list, proposers: dict, session, caps: dict) -> list[Draft]:
    """Every live row's draft: rows whose proposers share a batch drafter draft together (one draft forward
    per draft step for the group), the others each on their own; all clipped to what each row's budget and
    the batch's cache columns allow, fast-forwarded or pruned by a row's grammar."""
    limits = [_row_limit(v, session) for v in views]
    room = views[0].lm.max_length - session.length - 1
    drafts: list[Draft | None] = [_forced(v, limit) for v, limit in zip(views, limits)]
    if len(rows) > 1:  # a greedy row's proposed draft (not forced tokens) follows the row's acceptance
        limits = [min(limit, caps.get(b, FIRST_CAP)) if v.sampler.greedy else limit
                  for b, v, limit in zip(rows, views, limits)]
    proposed = [d is None for d in drafts]
    groups: dict[int, tuple] = {}  # id(batch drafter) → (drafter, indices of its rows)
    for i, b in enumerate(rows):
        batch = getattr(proposers[b], "batch", None)
        if drafts[i] is not None:
            continue
        if batch is None:
            drafts[i] = proposers[b].propose(views[i], limits[i])
        else:
            groups.setdefault(id(batch), (batch, []))[1].append(i)
    for batch, group in groups.values():
        got = batch.propose_rows([views[i] for i in group], [rows[i] for i in group], [limits[i] for i in group])
        for i, draft in zip(group, got):
            drafts[i] = draft
    return [_fit(_pruned(v, _clip(d, limit)) if mine else d, room)
            for v, d, limit, mine in zip(views, drafts, limits, proposed)]


def _row_limit(view, session) -> int:
    limit = min(view.remaining() - 1, view.lm.max_length - session.length - 1)
    if limit <= 0:
        session.defragment()  # holes may be what is short of room
        limit = min(view.remaining() - 1, view.lm.max_length - session.length - 1)
    return max(limit, 0)


def _forced(ctx, limit: int) -> Draft | None:
    """Where the row's grammar forces the next tokens, those tokens as its draft (fast-forward); an empty
    draft when it may not draft at all; None when its proposer drafts. Under the mask a forced token is
    the only allowed one (p = 1), so it is accepted and the output does not change; only forward passes
    are saved."""
    if limit <= 0:
        return Draft()
    if ctx.sampler.constraint is not None:
        forced = ctx.sampler.constraint.rows[0].forced_tokens(ctx.out[0])[:limit]
        if forced:
            ctx.stats.forced_tokens += len(forced)
            return Draft.chain(forced)
    return None


def _pruned(ctx, draft: Draft) -> Draft:
    """The draft cut at the first token the row's grammar rejects (unchanged when unconstrained)."""
    if ctx.sampler.constraint is None:
        return draft
    return prune(draft, ctx.sampler.constraint.rows[0], ctx.out[0])


def _pack(pending: list[int], drafts: list[Draft], pad: int):
    """[R, n] ids (pending token + draft + aux per row, padded), per-row parents, all-chains flag, and each
    row's real token count (the rest are pads)."""
    rows = [[t] + d.tokens + d.aux_tokens for t, d in zip(pending, drafts)]
    parents = [[-1] + [p + 1 for p in d.parents + d.aux_parents] for d in drafts]
    lengths = [len(r) for r in rows]
    n = max(lengths)
    chain = all(par == list(range(-1, len(par) - 1)) for par in parents)
    for r, par in zip(rows, parents):
        extra = n - len(r)
        r += [pad] * extra
        par += list(range(len(par) - 1, n - 1)) if chain else [-1] * extra  # padding never accepted
    return torch.tensor(rows, dtype=torch.long), parents, chain, lengths
