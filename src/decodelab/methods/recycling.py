"""`recycling`: Token Recycling — an adjacency matrix of the target's past top-k drafts a static tree.

Luo et al., "Turning Trash into Treasure: Accelerating Inference of Large Language Models with Token
Recycling" (arXiv:2408.08696). Training-free; the matrix persists across calls on the same model.
The default `widths` is the paper's 80-node "2.2.2" tree. Verification width is not free (the paper's
tree already loses ground on an RTX 3090 against an A100), and on a CPU a forward over 81 tokens costs
clearly more than over a few, so a smaller tree such as widths="4,6,4,2" (16 nodes, depth 4) is the
one to try there; benchmark both on the machine at hand.
"""

from __future__ import annotations

from ..proposers.recycling import TokenRecycling, parse_widths
from .registry import Param, register


@register("recycling", lossless=True,
          description="Token Recycling: the target's own past top-k predictions (an adjacency matrix) "
                      "draft a static tree.",
          paper="Turning Trash into Treasure: Accelerating Inference of Large Language Models with "
                "Token Recycling (arXiv:2408.08696)",
          params={"widths": Param("8,21,25,15,8,3", help="draft tree width per level (paper: 80 nodes; "
                                  "CPU: e.g. 4,6,4,2)"),
                  "k": Param(8, 1, 64, help="candidates kept per token in the adjacency matrix")}, batched=True, continuous=True, proposers=True)
def recycling(ctx):
    widths = parse_widths(ctx.params["widths"])
    return lambda c: TokenRecycling(c, widths, c.params["k"])
