"""Self-speculative decoding for masked diffusion LMs (`sspd`): the model drafts, then verifies itself.

"Self Speculative Decoding for Diffusion Large Language Models" (SSD, arXiv:2510.04147). The
baseline it reproduces is *stepwise* decoding: LLaDA's sampler at one token per step, temperature 0
(each step commits the most confident masked position of the current block, its argmax token).
One forward pass gives predictions for every masked position, so it is also a draft of the next
steps: the chain d_1, d_2, …, d_k of the current block's masked positions in confidence order (then
the next block's), each with its argmax token. d_1 is exactly what stepwise decoding commits. To
check the rest, one forward call evaluates the canvases u_0 = canvas + d_1, u_1 = u_0 + d_2, …,
u_{k−1} (the paper's verification tree, here a chain of depth k): d_{i+1} is accepted when stepwise
decoding run on u_i would commit exactly it — same position, same token. The walk stops at the first
mismatch; the last verified canvas becomes the state and its logits the next draft. Every committed
token is one stepwise decoding commits, in the same order: the output equals `llada` with
`steps=0` token for token (tests/diffusion/test_sspd.py), in fewer forward calls.

Cost, stated plainly: one call evaluates up to `draft_length` canvases per row (a batch), so it is
one forward pass in latency where the accelerator is memory-bound, but `draft_length`× the compute
of one pass on a CPU. `stats.drafted/accepted` record the chain per row and call.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

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


def block_of(masked: torch.Tensor, block_length: int) -> tuple[int, int]:
    """[start, end) of the current block of one row: the block holding its first masked position."""
    g = masked.shape[0]
    first = int(masked.nonzero()[0])
    start = first - first % block_length
    return start, min(start + block_length, g)


def chain(logits: torch.Tensor, masked: torch.Tensor, block_length: int, k: int) -> list[tuple[int, int]]:
    """The draft: k (position, token) pairs in stepwise order as predicted by one row's logits [G, V]."""
    x0, conf = propose(logits[None], 0.0, "low_confidence", [])
    conf, x0 = conf[0], x0[0]
    blocks = torch.arange(masked.shape[0]) // block_length
    order = sorted(masked.nonzero()[:, 0].tolist(), key=lambda i: (int(blocks[i]), -float(conf[i]), i))
    return [(i, int(x0[i])) for i in order[:k]]


def stepwise_next(logits: torch.Tensor, masked: torch.Tensor, block_length: int) -> tuple[int, int]:
    """What stepwise decoding commits next on a canvas: (position, token) from its logits [G, V]."""
    start, end = block_of(masked, block_length)
    x0, conf = propose(logits[None], 0.0, "low_confidence", [])
    conf = conf[0].masked_fill(~masked, NEG_INF)
    conf[:start] = conf[end:] = NEG_INF
    i = int(conf.argmax())  # the first of equal maxima, as top_k_mask's stable sort
    return i, int(x0[0, i])


def decode_sspd(ctx, block_length: int, draft_length: int) -> Iterator[list[list[int]]]:
    """The sspd loop: yields each row's newly contiguous committed tokens after every forward call."""
    check_sampling(ctx.params)
    if float(ctx.params.get("temperature", 0.0)) > 0:
        raise UserError("sspd reproduces stepwise greedy decoding: use temperature 0")
    g = gen_length_of(ctx)
    length = block_length if block_length > 0 else g
    canvas = new_canvas(ctx, g, ctx.lm.mask_token_id)
    logits = list(forward(ctx, canvas))  # per row [G, V]
    while canvas.masked.any():
        rows = [b for b in range(canvas.masked.shape[0]) if canvas.masked[b].any()]
        variants = {b: _variants(canvas, b, chain(logits[b], canvas.masked[b], length, draft_length)) for b in rows}
        todo = [(b, i) for b in rows for i, (_, m) in enumerate(variants[b][1]) if m.any()]
        evaluated = {}
        if todo:  # one forward call over every row's unverified canvases
            batch = Canvas(torch.stack([variants[b][1][i][0] for b, i in todo]), canvas.attention[[b for b, _ in todo]],
                           canvas.start, torch.stack([variants[b][1][i][1] for b, i in todo]))
            evaluated = dict(zip(todo, forward(ctx, batch)))
        for b in rows:
            drafts, canvases = variants[b]
            i = _walk(drafts, canvases, [evaluated.get((b, j)) for j in range(len(canvases))], length)
            canvas.canvas[b], canvas.masked[b] = canvases[i][0][canvas.start:], canvases[i][1]
            if canvases[i][1].any():
                logits[b] = evaluated[(b, i)]
            ctx.stats.record_drafts(len(drafts) - 1, i)
        yield _contiguous(canvas)


def _variants(canvas: Canvas, b: int, drafts: list[tuple[int, int]]):
    """u_0 … u_{k−1}: row b's ids [S] and masked [G] with drafts 1 … i + 1 committed."""
    ids, masked, out = canvas.ids[b].clone(), canvas.masked[b].clone(), []
    for pos, tok in drafts:
        ids, masked = ids.clone(), masked.clone()
        ids[canvas.start + pos], masked[pos] = tok, False
        out.append((ids, masked))
    return drafts, out


def _walk(drafts, canvases, logits, length: int) -> int:
    """Index of the last verified canvas: u_i is kept while stepwise decoding on u_{i−1} commits d_{i+1}."""
    i = 0
    while i + 1 < len(canvases) and canvases[i][1].any():
        if stepwise_next(logits[i], canvases[i][1], length) != drafts[i + 1]:
            break
        i += 1
    return i
