"""Jacobi iteration: guess a block, let one target pass update every position, keep the fixed prefix.

Santilli et al., "Accelerating Transformer Inference for Translation via Parallel Decoding"
(arXiv:2305.10427); CLLMs (arXiv:2403.00835). y_i^(k+1) = argmax p(y | x, y_<i^(k)); the verified
prefix is fast-forwarded, and the rest of the updated block is the next iterate.
"""

from __future__ import annotations

from ..verify import Draft
from .base import Stateless


class Jacobi(Stateless):
    def __init__(self, block_size: int):
        self.block_size = block_size
        self.guess: list[int] = []

    def propose(self, ctx, limit: int) -> Draft:
        n = min(limit, self.block_size)
        guess = self.guess[:n]
        fill = guess[-1] if guess else ctx.ids()[-1]
        return Draft.chain(guess + [fill] * (n - len(guess)))

    def observe(self, ctx, draft, verdict, logits) -> None:
        """Next iterate: the target's argmax at the positions after the accepted prefix + 1."""
        m = len(verdict.path)
        self.guess = logits[m + 1 : len(draft) + 1].argmax(-1).tolist()
