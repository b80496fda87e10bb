"""Token Recycling: the target's own discarded top-k predictions, kept in an adjacency matrix, draft a tree.

Luo et al., "Turning Trash into Treasure: Accelerating Inference of Large Language Models with Token
Recycling" (arXiv:2408.08696). M [V, k] holds, for every token t, the k most likely next tokens the
target predicted the last time t was fed to it. A step hangs a static BFS template off the pending
token (child j of a node with token t is M[t, j]), the target verifies the whole tree in one pass,
and then every fed token's row is overwritten with the top-k of its raw logits — candidates that
verification throws away become the next drafts.

Choices, all documented here:
- the template is generated from per-level widths (`build_template`): each level's slots go to the
  most probable (parent, rank) pairs under a fixed rank prior ∝ 1/(rank + 1), a node's probability
  being the product of the priors along its path. The paper's "2.2.2" tree has widths
  8, 21, 25, 15, 8, 3 (80 nodes, depth 6) — same widths, but the per-parent split here comes from
  the prior, not from the paper's figure; "4,6,4,2" (16 nodes) is a CPU-friendlier one;
- identical sibling tokens (from rows never written, or a child equal to a sibling) are dropped with
  their subtrees, keeping the first, so no token is verified twice;
- M starts as zeros, as in the paper: an unseen token drafts token 0 (one chain after deduplication)
  and is corrected by its first verify (the prompt's logits are not used: the loop's prefill keeps
  only the last row). It persists in `lm.state["recycling"][k]`, shared by every
  call on the same loaded model;
- near the end of the context the tree is cut to the nodes that fit (the target's cache holds every
  fed node);
- when a token occurs several times in one tree, the row written last wins; the pending token and
  the accepted path are written last, so the rows of tokens now in the context follow the context.
Drafts are deterministic (q = None): verification is exact for greedy and for sampling alike.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..treeshape import tree_depths
from ..verify import Draft, Verdict

PAPER_WIDTHS = (8, 21, 25, 15, 8, 3)


def parse_widths(text: str) -> tuple[int, ...]:
    """"8,21,25" → (8, 21, 25); ValueError on anything that is not positive integers."""
    try:
        widths = tuple(int(w) for w in text.replace(" ", "").split(",") if w)
    except ValueError:
        raise UserError(f"widths must be comma-separated positive integers, got {text!r}") from None
    if not widths or min(widths) < 1:
        raise UserError(f"widths must be comma-separated positive integers, got {text!r}")
    return widths


def build_template(widths: tuple[int, ...] | list[int], k: int) -> list[tuple[int, int]]:
    """Static BFS tree: (parent template index or -1, rank j in the parent's matrix row) per node.

    Level ℓ takes the widths[ℓ] most probable (parent in level ℓ−1, rank) pairs, where
    P(node) = P(parent) · prior(rank) and prior(j) ∝ 1/(j + 1); ties go to the earlier parent, then
    the lower rank. Nodes are listed level by level, by parent, then by rank.
    """
    prior = [1.0 / (j + 1) for j in range(k)]
    template: list[tuple[int, int]] = []
    level, prob = [-1], {-1: 1.0}
    for depth, width in enumerate(widths, 1):
        pairs = sorted(((-prob[p] * prior[j], p, j) for p in level for j in range(k)),
                       key=lambda c: (c[0], level.index(c[1]), c[2]))
        if width > len(pairs):
            raise UserError(f"level {depth} width {width} > {len(pairs)} = k × previous width")
        chosen = sorted(pairs[:width], key=lambda c: (level.index(c[1]), c[2]))
        level = []
        for neg, parent, rank in chosen:
            prob[len(template)] = -neg
            level.append(len(template))
            template.append((parent, rank))
    return template


def template_depths(template: list[tuple[int, int]]) -> list[int]:
    """Depth of each template node (children of the pending token have depth 1)."""
    return [d + 1 for d in tree_depths([parent for parent, _ in template])]


def adjacency_matrix(lm, k: int) -> torch.Tensor:
    """The model's persistent M [V, k] (int64, zeros at first) for this k."""
    store = lm.state.setdefault("recycling", {})
    if k not in store:
        store[k] = torch.zeros(lm.vocab_size, k, dtype=torch.long)
    return store[k]


class TokenRecycling:
    def __init__(self, ctx, widths: tuple[int, ...] = PAPER_WIDTHS, k: int = 8):
        self.k = k
        self.template = build_template(widths, k)
        self.depths = template_depths(self.template)
        self.matrix = adjacency_matrix(ctx.lm, k)  # [V, k]
        self.rows = self.matrix.numpy()  # shares memory: fast per-node lookups

    def propose(self, ctx, limit: int) -> Draft:
        """Instantiate the template from the pending token, deduplicating siblings.

        Node count is capped by the context room left (BFS order: a prefix is still a tree).
        """
        ids = ctx.ids()
        root, room = ids[-1], ctx.lm.max_length - len(ids)
        tokens: list[int] = []
        parents: list[int] = []
        node_of: list[int | None] = []  # template index → draft index (None = dropped)
        seen: dict[int, set[int]] = {}  # draft parent → its children's tokens
        for (tparent, rank), depth in zip(self.template, self.depths):
            parent = -1 if tparent < 0 else node_of[tparent]
            if len(tokens) >= room:
                break
            if depth > limit or parent is None:
                node_of.append(None)
                continue
            x = int(self.rows[root if parent < 0 else tokens[parent], rank])
            siblings = seen.setdefault(parent, set())
            if x in siblings:
                node_of.append(None)
                continue
            siblings.add(x)
            node_of.append(len(tokens))
            tokens.append(x)
            parents.append(parent)
        return Draft(tokens, parents)

    def observe(self, ctx, draft: Draft, verdict: Verdict, logits: torch.Tensor) -> None:
        """Overwrite the rows of every fed token with the top-k of its logits [1 + n, V]."""
        fed = [ctx.ids()[-1]] + draft.tokens  # the pending token (not yet advanced), then the nodes
        on_path = set(verdict.path)
        order = [i + 1 for i in range(len(draft)) if i not in on_path] + [0] + [i + 1 for i in verdict.path]
        last_row = {fed[r]: r for r in order}  # later writes win
        tokens = torch.tensor(list(last_row), dtype=torch.long)
        rows = torch.tensor(list(last_row.values()), dtype=torch.long)
        top = torch.topk(logits[rows, : self.matrix.shape[0]], self.k, dim=-1).indices  # [m, k]
        self.matrix[tokens] = top
