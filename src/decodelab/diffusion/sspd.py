"""Self-speculative decoding for masked diffusion LMs (`sspd`): the model drafts, then verifies itself.

"Self Speculative Decoding for Diffusion Large Language Models" (SSD, arXiv:2510.04147). The
baseline it reproduces is *stepwise* decoding: LLaDA's sampler at one token per step, temperature 0
(each step commits the most confident masked position of the current block, its argmax token).
One forward pass gives predictions for every masked position, so it is also a draft of the next
steps: the current block's masked positions in confidence order (then the next block's), each with
its argmax token (and its runner-up token). The first of them, d_1, is exactly what stepwise decoding
commits next, so the root of every verification tree is u_0 = canvas + d_1.

Verification tree. A node is a canvas: its parent's canvas plus one drafted commit (position,
token). Node v is *verified* when its parent is verified and stepwise decoding run on the parent's
canvas would commit exactly v's edge — same position, same token — which one forward pass over the
parent's canvas decides. Stepwise decoding is deterministic, so at most one child of a verified node
is verified: the verified nodes form one path from the root, and every token on it is one that
stepwise decoding commits, in the same order. The output equals `llada` with `steps=0` token for
token (tests/diffusion/test_sspd.py); the deepest verified node becomes the state and its logits the
next draft. One forward call evaluates every node of every row's tree (one batch).

- `tree="chain"`: depth `draft_length`, width 1 — the edges are d_2, d_3, … (the draft order).
- `tree="tree"` (default): the same node budget, spent best-first (as tree drafts in AR speculative
  decoding: SpecInfer arXiv:2305.09781, Sequoia arXiv:2402.12374). A child of node u is the r-th
  remaining drafted position of u's current block (r < `tree_width`) with its first or second token
  (`j` = 0, 1); the edge's probability q[r, j] is estimated per row from that row's own verified
  steps so far (a Dirichlet prior that favours the chain and decays with r, plus counts of which
  (r, j) stepwise decoding actually took); a node's score is the product of its path's q, and the `draft_length`
  best distinct canvases are evaluated. With q[0, 0] = 1 the tree is the chain. Wrong estimates only
  cost acceptance, never exactness. The paper's exact tree shape is not in this repository's notes;
  this shape is our choice, and both are measured (docs/DIFFUSION.md, `python -m
  decodelab.diffusion.sspd`).

Under a grammar (`constraint=`) the tree is verified against *constrained* stepwise decoding and the
draft follows it (constraints/diffusion.py `StepwiseGrammar`): the output is constrained `llada`'s.

Cost, stated plainly: one call evaluates up to `draft_length` canvases per row (a batch), so it is
one forward pass in latency where the accelerator is memory-bound, but `draft_length`× the compute
of one pass on a CPU. `stats.drafted/accepted` record, per call, the tree's depth and the accepted
depth.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Iterator

import torch

from ..constraints.diffusion import stepwise_grammar
from ..errors import UserError
from .sampling import (
    NEG_INF,
    Canvas,
    _contiguous,
    check_sampling,
    forward,
    gen_length_of,
    new_canvas,
    propose,
)

TOKENS = 2  # tokens per drafted position a tree edge may take: the argmax and the runner-up
# Dirichlet pseudo-counts of q: 4·0.25^r for (r, argmax), 0.05 for a runner-up token, 0.25 for "not offered".
# The shape follows builtin:tasks-diffusion's stepwise steps (mostly the draft's next position, then the one
# after it, rarely a runner-up token); a row's own counts take over as it decodes.
PRIOR_CHAIN, PRIOR_DECAY, PRIOR_TOKEN, PRIOR_OTHER = 4.0, 0.25, 0.05, 0.25


def block_of(masked: torch.Tensor, block_length: int) -> tuple[int, int]:
    """[start, end) of the current block of one row: the block holding its first masked position."""
    g = masked.shape[0]
    first = int(masked.nonzero()[0])
    start = first - first % block_length
    return start, min(start + block_length, g)


class Draft:
    """One pass's predictions for one row: positions in stepwise order, their top tokens."""

    def __init__(self, logits: torch.Tensor, masked: torch.Tensor, block_length: int):
        x0, conf = propose(logits[None], 0.0, "low_confidence", [])
        conf = conf[0]
        blocks = torch.arange(masked.shape[0]) // block_length
        self.order = sorted(masked.nonzero()[:, 0].tolist(), key=lambda i: (int(blocks[i]), -float(conf[i]), i))
        self.tokens = logits.topk(min(TOKENS, logits.shape[-1]), dim=-1).indices  # [G, TOKENS]
        self.tokens[:, 0] = x0[0]  # the argmax exactly as stepwise decoding takes it (first of equal maxima)
        self.block_length = block_length

    def candidates(self, masked: torch.Tensor) -> list[int]:
        """Drafted positions still masked in a node's canvas, in draft order, inside its current block."""
        start, end = block_of(masked, self.block_length)
        return [i for i in self.order if masked[i] and start <= i < end]


def stepwise_next(logits: torch.Tensor, masked: torch.Tensor, block_length: int) -> tuple[int, int]:
    """What stepwise decoding commits next on a canvas: (position, token) from its logits [G, V]."""
    start, end = block_of(masked, block_length)
    x0, conf = propose(logits[None], 0.0, "low_confidence", [])
    conf = conf[0].masked_fill(~masked, NEG_INF)
    conf[:start] = conf[end:] = NEG_INF
    i = int(conf.argmax())  # the first of equal maxima, as top_k_mask's stable sort
    return i, int(x0[0, i])


class Node:
    """A tree node: its canvas (ids over the whole row, masked over the canvas), parent and edge."""

    def __init__(self, ids: torch.Tensor, masked: torch.Tensor, parent: int | None, edge: tuple[int, int] | None,
                 score: float, depth: int):
        self.ids, self.masked, self.parent, self.edge = ids, masked, parent, edge
        self.score, self.depth = score, depth
        self.children: dict[tuple[int, int], int] = {}  # edge → node index
        self.key = None  # the canvas evaluated for it (shared by nodes with equal canvases)


class Estimate:
    """q[r, j]: one row's estimate that stepwise decoding's next commit is the r-th remaining drafted
    position with its j-th token (Dirichlet prior + the row's verified observations); the rest is 'other'."""

    def __init__(self, width: int):
        self.counts = torch.full((width, TOKENS), PRIOR_TOKEN, dtype=torch.float64)
        self.counts[:, 0] = PRIOR_CHAIN * PRIOR_DECAY ** torch.arange(width, dtype=torch.float64)
        self.other = PRIOR_OTHER

    def q(self) -> torch.Tensor:
        return self.counts / (self.counts.sum() + self.other)

    def observe(self, rank: tuple[int, int] | None) -> None:
        if rank is None or rank[0] >= self.counts.shape[0]:
            self.other += 1
        else:
            self.counts[rank] += 1


def build_tree(draft: Draft, ids: torch.Tensor, masked: torch.Tensor, start: int, budget: int,
               q: torch.Tensor | None, root: tuple[int, int] | None = None) -> list[Node]:
    """The verification tree of one row: root = canvas + d_1 (or + `root`, a (position, token) commit
    known to be stepwise decoding's: a grammar's, constraints/diffusion.py); `budget` distinct canvases,
    best-first by path probability under q (q None: the chain d_1 … d_budget)."""
    def child(parent: Node, pos: int, tok: int, score: float, index: int) -> Node:
        new_ids, new_masked = parent.ids.clone(), parent.masked.clone()
        new_ids[start + pos], new_masked[pos] = tok, False
        return Node(new_ids, new_masked, index, (pos, tok), score, parent.depth + 1)

    first, token = root if root is not None else (draft.order[0], int(draft.tokens[draft.order[0], 0]))
    root_ids, root_masked = ids.clone(), masked.clone()
    root_ids[start + first], root_masked[first] = token, False
    nodes = [Node(root_ids, root_masked, None, (first, token), 1.0, 0)]
    nodes[0].key = _key(nodes[0])
    seen = {nodes[0].key}
    heap: list[tuple[float, int, int, int, int]] = []  # (−score, tie, parent, r, j)
    tie = 0

    def expand(index: int) -> None:
        nonlocal tie
        node = nodes[index]
        if not node.masked.any():
            return
        ranks = [(0, 0)] if q is None else [(r, j) for r in range(q.shape[0]) for j in range(q.shape[1])]
        for r, j in ranks:
            p = 1.0 if q is None else float(q[r, j])
            if p > 0:
                heapq.heappush(heap, (-node.score * p, tie, index, r, j))
                tie += 1

    expand(0)
    while heap and len(seen) < budget and len(nodes) < 4 * budget:
        neg, _, parent, r, j = heapq.heappop(heap)
        cands = draft.candidates(nodes[parent].masked)
        if r >= len(cands):
            continue
        pos = cands[r]
        tok = int(draft.tokens[pos, j])
        if (pos, tok) in nodes[parent].children:
            continue
        node = child(nodes[parent], pos, tok, -neg, parent)
        node.key = _key(node)
        nodes.append(node)
        nodes[parent].children[(pos, tok)] = len(nodes) - 1
        seen.add(node.key)
        expand(len(nodes) - 1)
    return nodes


def _key(node: Node) -> tuple:
    return tuple(node.ids.tolist())


def decode_sspd(ctx, block_length: int, draft_length: int, tree: str = "tree",
                tree_width: int = 3) -> Iterator[list[list[int]]]:
    """The sspd loop: yields each row's newly contiguous committed tokens after every forward call."""
    check_sampling(ctx.params)
    if float(ctx.params.get("temperature", 0.0)) > 0:
        raise UserError("sspd reproduces stepwise greedy decoding: use temperature 0")
    if tree not in ("chain", "tree"):
        raise UserError(f"sspd tree must be 'chain' or 'tree', not {tree!r}")
    g = gen_length_of(ctx)
    length = block_length if block_length > 0 else g
    canvas = new_canvas(ctx, g, ctx.lm.mask_token_id)
    logits = list(forward(ctx, canvas))  # per row [G, V]
    estimates = [Estimate(tree_width) for _ in range(canvas.masked.shape[0])]
    grammar = stepwise_grammar(ctx, canvas.start, length)  # constraints/diffusion.py; None without a constraint
    pending: dict[int, tuple[int, int]] = {}  # under a grammar: a row's next commit, already in its witness
    while canvas.masked.any():
        rows = [b for b in range(canvas.masked.shape[0]) if canvas.masked[b].any()]
        drafts = {b: Draft(logits[b], canvas.masked[b], length) for b in rows}
        for b in rows if grammar is not None else ():  # the root is the grammar's commit, the draft its path
            if b not in pending:
                pending[b] = grammar.step(b, canvas.ids[b], canvas.masked[b], logits[b])
            grammar.steer(b, drafts[b], canvas.ids[b], canvas.masked[b], logits[b], pending[b], draft_length)
        trees = {b: build_tree(drafts[b], canvas.ids[b], canvas.masked[b], canvas.start, draft_length,
                               None if tree == "chain" else estimates[b].q(), pending.pop(b, None)) for b in rows}
        todo, keys = [], {}
        for b in rows:  # one canvas per distinct node that still has masks
            for node in trees[b]:
                if node.masked.any() and (b, node.key) not in keys:
                    keys[(b, node.key)] = len(todo)
                    todo.append((b, node))
        evaluated = []
        if todo:  # one forward call over every row's unverified canvases
            batch = Canvas(torch.stack([n.ids for _, n in todo]), canvas.attention[[b for b, _ in todo]],
                           canvas.start, torch.stack([n.masked for _, n in todo]))
            evaluated = list(forward(ctx, batch))
        for b in rows:
            nodes = trees[b]
            row_logits = {n.key: evaluated[keys[(b, n.key)]] for n in nodes if (b, n.key) in keys}
            i, nxt = _walk(nodes, row_logits, drafts[b], length, estimates[b],
                           None if grammar is None else functools.partial(grammar.step, b))
            if grammar is not None and nxt is not None:
                pending[b] = nxt
            canvas.canvas[b], canvas.masked[b] = nodes[i].ids[canvas.start:], nodes[i].masked
            if nodes[i].masked.any():
                logits[b] = row_logits[nodes[i].key]
            ctx.stats.record_drafts(max(n.depth for n in nodes), nodes[i].depth)
        yield _contiguous(canvas)


def _walk(nodes: list[Node], logits: dict, draft: Draft, length: int, estimate: Estimate,
          step=None) -> tuple[int, tuple[int, int] | None]:
    """Index of the deepest verified node: from the root, follow the child stepwise decoding commits; and
    the commit it makes at that node (None when no mask is left there). `step(ids, masked, logits)`
    replaces `stepwise_next` under a grammar (constraints/diffusion.py `StepwiseGrammar.step`)."""
    i = 0
    while nodes[i].masked.any():
        if step is None:
            nxt = stepwise_next(logits[nodes[i].key], nodes[i].masked, length)
        else:
            nxt = step(nodes[i].ids, nodes[i].masked, logits[nodes[i].key])
        estimate.observe(_rank(draft, nodes[i].masked, nxt))
        if nxt not in nodes[i].children:
            return i, nxt
        i = nodes[i].children[nxt]
    return i, None


def _rank(draft: Draft, masked: torch.Tensor, edge: tuple[int, int]) -> tuple[int, int] | None:
    """(r, j) of a commit relative to the draft at a node, or None when the draft did not offer it."""
    pos, tok = edge
    cands = draft.candidates(masked)
    if pos not in cands:
        return None
    tokens = draft.tokens[pos].tolist()
    return (cands.index(pos), tokens.index(tok)) if tok in tokens else None


def measure(lm, items: list[tuple[str, int]], configs: list[dict]) -> list[dict]:
    """Per config: forward calls, canvases evaluated and tokens per item, and the share of outputs equal to
    one-token-per-step `llada` with the first config's block_length (counted, not timed).
    items: (prompt, max_new_tokens)."""
    from .. import generate

    canvases = [0]
    hook = lm.model.register_forward_hook(lambda _m, args, kwargs, _out: canvases.__setitem__(
        0, canvases[0] + (kwargs.get("input_ids") if "input_ids" in kwargs else args[0]).shape[0]), with_kwargs=True)
    try:
        rows, base = [], None
        stepwise = {"method": "llada", "block_length": configs[0].get("block_length", 0) if configs else 0}
        for params in [stepwise, *({"method": "sspd", **c} for c in configs)]:
            canvases[0], calls, tokens, outs = 0, 0, 0, []
            for prompt, max_new in items:
                g = generate(lm, prompt, max_new_tokens=max_new, **params)
                calls, tokens = calls + g.stats.forward_passes, tokens + max(1, len(g.token_ids))
                outs.append(list(g.token_ids))
            base = base or outs
            n = len(items)
            rows.append({**params, "calls_per_item": calls / n, "calls_per_token": calls / tokens,
                         "canvases_per_item": canvases[0] / n,
                         "identical": sum(a == b for a, b in zip(outs, base)) / n})
    finally:
        hook.remove()
    return rows


def main(argv: list[str] | None = None) -> None:
    """`python -m decodelab.diffusion.sspd`: chain vs tree verification, calls and canvases per item."""
    import argparse
    import json

    from ..model import load
    from ..tasks import make, names

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--model", default="builtin:tasks-diffusion")
    ap.add_argument("--n", type=int, default=10, help="items per task (seed 0, held out of training)")
    ap.add_argument("--budgets", default="4,8,16", help="draft_length values (node budgets)")
    ap.add_argument("--block-length", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    lm = load(args.model)
    items = [(it.prompt, 24) for t in names() for it in make(t, args.n, 0)]
    configs = [{"tree": mode, "draft_length": int(k), "block_length": args.block_length}
               for k in args.budgets.split(",") for mode in ("chain", "tree")]
    rows = measure(lm, items, configs)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{args.model}: {len(items)} items (tasks, {args.n} per task, seed 0), canvas 24, block_length "
          f"{args.block_length}, batch size 1, temperature 0")
    print("| method | verify | node budget | calls/item | calls/token | canvases/item | identical to llada |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r.get('tree', 'stepwise')} | {r.get('draft_length', '—')} | {r['calls_per_item']:.2f} | "
              f"{r['calls_per_token']:.2f} | {r['canvases_per_item']:.2f} | {100 * r['identical']:.1f}% |")


if __name__ == "__main__":
    main()
