"""`jacobi`: Jacobi fixed-point iteration with fast-forwarding (arXiv:2305.10427)."""

from __future__ import annotations

from ..proposers.jacobi import Jacobi
from .registry import Param, register


@register("jacobi", lossless=True,
          description="Jacobi decoding: iterate a block of guesses to its fixed point, keep the verified prefix.",
          paper="Accelerating Transformer Inference for Translation via Parallel Decoding (arXiv:2305.10427)",
          params={"block_size": Param(8, 1, 64)}, batched=True, continuous=True, proposers=True)
def jacobi(ctx):
    return lambda c: Jacobi(c.params["block_size"])
