"""Every grammar mask a verify step needs, for every row of the batch, from one llguidance call.

A speculative step verifies a draft (a chain or a tree hanging off the pending token) and needs the
grammar mask at the pending position and at every draft node, each with its own history. Asked one
node at a time (`GrammarMask` as a logits processor), a row's matcher seeks each node's history and
computes one mask. `premask` instead, once per step and before verification:

1. cuts every row's draft into chains (a node continues its parent's chain when it is the parent's
   first child; every other child starts a chain), dropping the nodes whose masks are already known
   (a draft model computed them while drafting, through the same row state);
2. puts one matcher at the head of each chain — the row's own matcher for the first chain, a fork
   (`deep_copy`) advanced by the path from the pending position for the others — and validates the
   chain's tokens (a chain ends before a token the grammar rejects, and before an EOS, after which a
   history-keyed mask would be the dead-row mask);
3. hands all chains of all rows to llguidance's `LLExecutor.unsafe_compute_mask_ptr_with_draft_token`
   (what `llguidance.torch.fill_next_token_bitmask_par_with_draft_tokens` wraps, without importing that
   module, which runs torch.compile at import): one call, parallel over chains on the executor's
   threads, writing the mask at the chain's head and after each of its tokens into consecutive rows of
   one bitmask (the matcher is rolled back afterwards);
4. leaves each mask in its row's `RowConstraint.masks`, keyed by the node's generated tokens — the same
   key `GrammarMask` looks up, so verification reads the masks instead of computing them. A node the
   step did not cover (a rejected or post-EOS node, a lookahead window node) falls back to the
   one-node route, so the output cannot change: the mask of a state is the same whichever call
   computes it (tests/constraints/test_batched_masks.py compares them on trees).

The cost is masks for draft nodes verification never reaches (the siblings of a tree, the tail after a
rejection), traded for one call with parallel work instead of a seek and a call per reached node; the
json bench suite reports both (constraints/bench.py: batched calls, masks per call, µs per call).
"""

from __future__ import annotations

import torch

from . import timing
from .matcher import RowConstraint

_EXECUTOR = None
ENABLED = True  # False: every mask is computed one node at a time when verification asks (tests compare)


def executor(threads: int | None = None):
    """The process's llguidance executor; `threads` rebuilds it with that many threads (None: llguidance's
    default, 80 % of the CPUs up to 32 — one thread on a 2-core machine)."""
    global _EXECUTOR
    if _EXECUTOR is None or threads is not None:
        from llguidance import LLExecutor

        _EXECUTOR = LLExecutor(threads) if threads else LLExecutor()
    return _EXECUTOR


def premask_views(views, drafts) -> int:
    """`premask` for a verify step of the batched loop (methods/loop.py): `views` are the live rows'
    `RowContext`s, `drafts` their drafts; rows without a grammar are skipped."""
    if not ENABLED:
        return 0
    rows = []
    for view, draft in zip(views, drafts):
        mask = view.sampler.constraint
        if mask is not None:
            rows.append((mask.rows[0], view.ids()[mask.prompt_len:], draft, mask.eos))
    return premask(rows)


def premask(rows: list[tuple]) -> int:
    """Compute the masks of every row's pending position and draft nodes in one llguidance call.

    rows: (row state, the row's generated tokens, its Draft, EOS ids) per constrained row of the step.
    Returns the number of masks computed (0: every mask was known and no call was made)."""
    t0 = timing.clock()
    chains = []  # (row, key of the head, matcher at the head, tokens after the head, EOS ids)
    for row, generated, draft, eos in rows:
        chains += [c + (set(eos),) for c in _chains(row, list(generated), draft, set(eos))]
    if not chains:
        return 0
    words = (chains[0][0].grammar.tokenizer.vocab_size + 31) // 32
    jobs, at = [], 0
    for _, _, matcher, rest, eos in chains:
        # llguidance wants at least one draft token: a lone head gets a token it rejects, so nothing is
        # computed past the head (its row in the bitmask is scratch, written only if the token is valid)
        jobs.append((matcher, at, rest or [_rejected(matcher, eos)]))
        at += 1 + len(jobs[-1][2])
    bitmask = torch.full((at, words), -1, dtype=torch.int32)
    executor().unsafe_compute_mask_ptr_with_draft_token(jobs, bitmask.data_ptr(), words * 4, at)
    n = 0
    for (row, key, _, rest, _), (_, at, _) in zip(chains, jobs):
        for j in range(len(rest) + 1):
            row.masks[key + tuple(rest[:j])] = bitmask[at + j]  # as many as the step's nodes, not bounded
        n += 1 + len(rest)
    timing.record_batch(timing.clock() - t0, n)
    return n


def _rejected(matcher, eos: set[int]) -> int:
    """A token the matcher rejects in its state (when none of the few tried is, one mask is wasted)."""
    tried = sorted(eos) + [0, 1, 2]
    return next((t for t in tried if matcher.validate_tokens([t]) == 0), tried[0])


def _chains(row: RowConstraint, generated: list[int], draft, eos: set[int]) -> list[tuple]:
    """Row `row`'s chains of nodes whose masks are still unknown (see the module docstring)."""
    tokens, parents = draft.tokens, draft.parents
    paths: dict[int, tuple[int, ...]] = {-1: tuple(generated)}  # node → its key; none past an EOS
    first_child: dict[int, int] = {}
    for i, p in enumerate(parents):  # parents precede their children
        first_child.setdefault(p, i)
        if p in paths and tokens[i] not in eos:
            paths[i] = paths[p] + (tokens[i],)
    needed = set(paths.values())  # the row keeps the masks of this step's nodes only (bounded memory)
    row.masks = {k: v for k, v in row.masks.items() if k in needed}
    out, own = [], True
    for head in [-1] + [i for i, p in enumerate(parents) if first_child[p] != i]:
        chain = [head]
        while chain[-1] in first_child and first_child[chain[-1]] in paths:
            chain.append(first_child[chain[-1]])
        if head not in paths:
            continue
        known = next((k for k, c in enumerate(chain) if paths[c] not in row.masks), len(chain))
        chain = chain[known:]
        if not chain:
            continue
        state = row if own else row.fork()  # the row's own matcher heads its first chain
        if not state.seek(list(paths[chain[0]])) or state.matcher.is_error():
            continue
        own = False
        rest = [tokens[c] for c in chain[1:]]
        rest = rest[: state.matcher.validate_tokens(rest)] if rest else rest
        out.append((row, paths[chain[0]], state.matcher, rest))
    return out
