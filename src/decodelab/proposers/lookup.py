"""Prompt lookup decoding: copy what followed the last n-gram's earlier occurrence in the context.

Saxena, "Prompt Lookup Decoding" (2023); the same rule as transformers' `prompt_lookup_num_tokens`:
try n = max_ngram_size … 1, take the first (earliest) match whose continuation is non-empty.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..verify import Draft
from .base import Stateless


def lookup(ids: list[int] | np.ndarray, max_ngram_size: int, num_tokens: int) -> list[int]:
    """Up to num_tokens tokens that followed the earliest earlier occurrence of the final n-gram."""
    arr = np.asarray(ids)
    for n in range(min(max_ngram_size, len(arr) - 1), 0, -1):
        windows = sliding_window_view(arr[:-1], n)  # [len-n, n]: every earlier n-gram start
        hits = np.flatnonzero((windows == arr[-n:]).all(axis=1))
        for start in hits:
            cont = arr[start + n : start + n + num_tokens]
            if len(cont):
                return cont.tolist()
    return []


class PromptLookup(Stateless):
    def __init__(self, max_ngram_size: int, num_draft_tokens: int):
        self.max_ngram_size = max_ngram_size
        self.num_draft_tokens = num_draft_tokens

    def propose(self, ctx, limit: int) -> Draft:
        return Draft.chain(lookup(ctx.ids(), self.max_ngram_size, min(limit, self.num_draft_tokens)))
