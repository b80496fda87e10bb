"""The one verifier every speculative method shares: accepted drafts + one recovered or bonus token.

Rules (reference: speculative.md), all exact:
- stochastic drafts x ~ q: accept when r < p(x)/q(x); on rejection p ← norm(max(0, p − q))
  (Leviathan et al., arXiv:2211.17192; Chen et al., arXiv:2302.01318);
- deterministic drafts (n-grams, Jacobi, lookahead, token recycling, top-k trees) are q = one-hot(x):
  accept with probability p(x), on rejection zero p(x) and renormalise — the same formula;
- trees: at each node try the children in turn with the residual carried over, descend into the first
  accepted one; if none is accepted sample the residual (SpecInfer's multi-step speculative sampling,
  arXiv:2305.09781);
- after the last accepted node, a bonus token is sampled from that node's p;
- temperature 0: p is one-hot on the (penalised) argmax, so a child is accepted exactly when it is the
  argmax — token-identical to greedy, and no random number is drawn.
p at a node is the target's processed distribution (the same `Sampler` as plain sampling, with the
node's own history), so every sampling parameter keeps its meaning under every method.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .treeshape import tree_depths


@dataclass
class Draft:
    """Candidate tokens as a tree hanging off the pending token (a chain when parents = [-1, 0, 1, …]).

    tokens  [n]      candidate token ids
    parents [n]      index of each node's parent, -1 for children of the pending token
    q       [n, V]   distribution each node was drawn from; None rows / None = deterministic
    aux_*            extra nodes fed in the same forward but never accepted (lookahead's window),
                     parents index the combined list [candidates + aux]
    """

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    q: torch.Tensor | None = None
    aux_tokens: list[int] = field(default_factory=list)
    aux_parents: list[int] = field(default_factory=list)

    @classmethod
    def chain(cls, tokens: list[int], q: torch.Tensor | None = None) -> "Draft":
        return cls(list(tokens), list(range(-1, len(tokens) - 1)), q)

    def __len__(self) -> int:
        return len(self.tokens)

    def is_chain(self) -> bool:
        return not self.aux_tokens and self.parents == list(range(-1, len(self.tokens) - 1))

    def depth(self) -> int:
        """Length of the longest candidate chain (a child of the pending token has depth 1)."""
        return 1 + max(tree_depths(self.parents), default=-1)

    def children(self) -> dict[int, list[int]]:
        kids: dict[int, list[int]] = {}
        for i, p in enumerate(self.parents):
            kids.setdefault(p, []).append(i)
        return kids


@dataclass
class Verdict:
    path: list[int]  # accepted candidate node indices, root to leaf
    tokens: list[int]  # emitted: accepted draft tokens + the recovered (after a rejection) or bonus token


def _residual(p: torch.Tensor, q_row: torch.Tensor | None, x: int) -> torch.Tensor:
    """norm(max(0, p − q)); q = one-hot(x) when q_row is None."""
    if q_row is None:
        r = p.clone()
        r[x] = 0.0
    else:
        r = (p - q_row).clamp_min(0.0)
    total = r.sum()
    return r / total if total > 0 else p


def _accept(p: torch.Tensor, q_row: torch.Tensor | None, x: int, gen: torch.Generator | None) -> bool:
    """r < p(x) / q(x) with r ~ U[0, 1)."""
    qx = 1.0 if q_row is None else float(q_row[x])
    ratio = float(p[x]) / qx if qx > 0 else float("inf")
    return torch.rand((), generator=gen).item() < ratio


def verify(draft: Draft, p_at, generator: torch.Generator | None, greedy: bool) -> Verdict:
    """Walk the draft tree with the target's distributions.

    p_at(node) → [V] target distribution for the children of `node` (-1 = the pending token);
    the caller computes it lazily from the verify forward's logits.
    """
    kids = draft.children()
    path: list[int] = []
    node = -1
    while True:
        p = p_at(node)
        nxt = _choose_child(draft, kids.get(node, []), p, generator, greedy)
        if isinstance(nxt, int):
            path.append(nxt)
            node = nxt
            continue
        token = nxt[0]
        return Verdict(path, [draft.tokens[i] for i in path] + [token])


def _choose_child(draft: Draft, children: list[int], p: torch.Tensor, gen, greedy: bool):
    """An accepted child index, or a 1-tuple with the recovered / bonus token."""
    if greedy:
        best = int(p.argmax())
        for c in children:
            if draft.tokens[c] == best:
                return c
        return (best,)
    for c in children:
        q_row = draft.q[c] if draft.q is not None else None
        x = draft.tokens[c]
        if _accept(p, q_row, x, gen):
            return c
        p = _residual(p, q_row, x)
    return (int(torch.multinomial(p, 1, generator=gen)),)
