"""Plain autoregressive decoding: `greedy` (argmax) and `sample` (ancestral sampling).

Batched with left padding. These are the references every lossless method is tested against.
"""

from __future__ import annotations

from collections.abc import Iterator

from .registry import register


def prefill(ctx, session, rows: list[int] | None = None) -> "torch.Tensor":  # noqa: F821
    """Run the prompts of `rows` (default: all) through `session`; return the last position's logits [R, V]."""
    ids, mask = ctx.padded(rows if rows is not None else list(range(ctx.batch_size)))
    return session.forward(ids, pad_mask=mask, last_only=True)[:, -1]


def admit(ctx, session, rows: list[int]):
    """Prefill the rows that joined since the last step (continuous batching) and merge them into the batch.

    Returns (session, rows, logits of the new rows [R_new, V] or None); `rows` lists the ctx row each
    session row holds. New rows are prefilled on their own session, then appended (`Session.merge`)."""
    new = ctx.admit()
    if not new:
        return session, rows, None
    joined = ctx.session(batch_size=len(new))
    logits = prefill(ctx, joined, new)
    if session is None or not rows:
        return joined, list(new), logits
    session.defragment()
    session.merge(joined)
    return session, rows + new, logits


def retire(ctx, session, rows: list[int], *per_row):
    """Drop finished rows from the batch (`Session.reorder`); per-row lists/tensors follow the same rows."""
    keep = [i for i, b in enumerate(rows) if not ctx.done[b]]
    for b in rows:
        if ctx.done[b]:
            ctx.release(b)
    if len(keep) == len(rows):
        return session, rows, *per_row
    if not keep:
        return None, [], *[None for _ in per_row]
    session.reorder(keep)
    picked = [x[keep] if hasattr(x, "index_select") else [x[i] for i in keep] for x in per_row]
    return session, [rows[i] for i in keep], *picked


def row_probs(ctx, rows: list[int], logits: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
    """[R, V] processed distributions of these rows: in one call when no processor reads a row's history
    or state, else each row through its own view (its unpadded history, its prompt length, its grammar)."""
    import torch

    sampler = ctx.sampler
    if not ctx.row_samplers and not sampler.needs_history and sampler.constraint is None \
            and len(sampler.logits_processors) == 0:
        pairs = [sampler.probs_and_log_z(None, logits)]
    else:
        pairs = [ctx.row(b).sampler.probs_and_log_z(torch.tensor([ctx.ids(b)]), logits[i : i + 1])
                 for i, b in enumerate(rows)]
    _record_log_z(ctx, rows, pairs)
    return torch.cat([p for p, _ in pairs])


def _record_log_z(ctx, rows: list[int], pairs: list) -> None:
    """Each row's log Z_t (None when greedy) into ctx.log_z: the token drawn next is emitted (Stats.log_z)."""
    zs = [z for probs, log_z in pairs for z in (log_z.tolist() if log_z is not None else [None] * len(probs))]
    for b, z in zip(rows, zs):
        if z is not None:
            ctx.log_z[b].append(z)


def sample_rows(ctx, probs: "torch.Tensor", rows: list[int] | None = None) -> "torch.Tensor":  # noqa: F821
    """[R, V] → [R] tokens, each row drawn with its own generator (argmax when greedy)."""
    rows = rows if rows is not None else list(range(probs.shape[0]))
    if ctx.generators is None and not ctx.row_samplers:
        return ctx.sampler.sample(probs, ctx.generator)
    import torch

    return torch.cat([ctx.sampler_of(b).sample(probs[i : i + 1], ctx.generators[b] if ctx.generators else None)
                      for i, b in enumerate(rows)])


def emitted_by_row(ctx, rows: list[int], tokens: list[list[int]]) -> list[list[int]]:
    """One step's item: the tokens of each of `rows`, nothing for the batch's other rows."""
    emitted = [[] for _ in ctx.prompts]
    for b, t in zip(rows, tokens):
        emitted[b] = t
    return emitted


def autoregressive(ctx) -> Iterator[list[list[int]]]:
    """One token per live row per step; rows join (prefilled apart, then merged) and leave between steps."""
    import torch

    session, rows, logits = None, [], None
    while True:
        session, rows, joined = admit(ctx, session, rows)
        if joined is not None:
            logits = joined if logits is None else torch.cat([logits, joined])
        if not rows:
            if not ctx.open:
                return
            yield []
            continue
        tokens = sample_rows(ctx, row_probs(ctx, rows, logits), rows)  # [R]
        yield emitted_by_row(ctx, rows, [[t] for t in tokens.tolist()])
        session, rows, tokens = retire(ctx, session, rows, tokens)
        if not rows:
            logits = None
            continue
        if session.length >= ctx.lm.max_length:
            session.defragment()  # rows that left may have held the widest columns
        logits = session.forward(tokens[:, None])[:, -1]


def no_draft(ctx):
    """The per-row proposer of plain decoding in the propose → verify loop: none (a row of a mixed batch,
    constraints/fastforward.py): an empty draft's verify step draws the token as plain decoding does."""
    from ..constraints.fastforward import NoDraft

    return lambda view: NoDraft()


@register("greedy", description="Greedy decoding: the argmax token at every step.", lossless=True,
          batched=True, continuous=True, temperature=0.0, proposers=no_draft)
def greedy(ctx) -> Iterator[list[list[int]]]:
    return _constrained_or_plain(ctx)


@register("sample", description="Ancestral sampling from the processed next-token distribution "
          "(temperature, top-k/p, min-p, typical, ε/η, penalties).", lossless=True, batched=True,
          continuous=True, temperature=1.0, proposers=no_draft)
def sample(ctx) -> Iterator[list[list[int]]]:
    return _constrained_or_plain(ctx)


def _constrained_or_plain(ctx) -> Iterator[list[list[int]]]:
    """Under a grammar, tokens the grammar forces are fed at once (constraints/fastforward.py: the same
    tokens at temperature 0, the same distribution when sampling, fewer forward passes)."""
    if ctx.sampler.constraint is not None:
        from ..constraints.fastforward import fast_forward_loop

        return fast_forward_loop(ctx)
    return autoregressive(ctx)
