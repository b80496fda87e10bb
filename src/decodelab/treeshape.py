"""Shapes of draft token trees: node depths and ancestor sets.

A draft tree is a list `parents` where parents[i] is an earlier node index or -1 (the node hangs off
the cache). These helpers are shared by drafts (verify.py, the proposers), the speculative loop and the
Session, which turns the ancestor matrix into a tree attention mask (SpecInfer, arXiv:2305.09781).
"""

from __future__ import annotations

import torch


def tree_depths(parents: list[int]) -> list[int]:
    """Depth of each node; parents[i] is an earlier node index or -1 (hangs off the cache)."""
    depths: list[int] = []
    for p in parents:
        depths.append(0 if p < 0 else depths[p] + 1)
    return depths


def ancestor_matrix(parents: list[int]) -> torch.Tensor:
    """[n, n] bool: entry (i, j) is True when node j is node i or one of its ancestors."""
    n = len(parents)
    anc = torch.eye(n, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            anc[i] |= anc[p]
    return anc
