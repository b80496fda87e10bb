"""`lookahead`: lookahead decoding — a Jacobi window feeds an n-gram pool (arXiv:2402.02057).

Defaults N = 4, W = 5, G = 5 are smaller than the paper's GPU settings (N = 5, W = 7, G = 7 in
Spec-Bench; W = G = 15 in llama.cpp) because on a CPU a forward's cost grows with its width, which
here is 1 + (W − 1) + (N − 2)·W window nodes + up to G·(N − 1) trie nodes = 30 at the defaults
(vs 70 at 5/7/7), and small models' n-grams rarely survive past 3 drafted tokens.
"""

from __future__ import annotations

from ..proposers.lookahead import Lookahead
from .registry import Param, register


@register("lookahead", lossless=True,
          description="Lookahead: a 2-D Jacobi window collects n-grams, a pool branch verifies them.",
          paper="Break the Sequential Dependency of LLM Inference Using Lookahead Decoding "
                "(arXiv:2402.02057)",
          params={"N": Param(4, 3, 16, help="n-gram size (window levels + 1)"),
                  "W": Param(5, 1, 64, help="window width: n-grams collected per step"),
                  "G": Param(5, 1, 64, help="n-grams kept per first token (LRU)")}, batched=True, continuous=True, proposers=True)
def lookahead(ctx):
    p = ctx.params
    return lambda c: Lookahead(c.prompts[0], p["N"], p["W"], p["G"])
