"""Prompt lookup decoding: copy what followed the last n-gram's earlier occurrence in the context.

Saxena, "Prompt Lookup Decoding" (2023); the same rule as transformers' `prompt_lookup_num_tokens`:
try n = max_ngram_size … 1, take the first (earliest) match whose continuation is non-empty.

`NgramIndex` keeps the first position of every n-gram of a token list as the list grows (and when it
is cut back), so a step's lookup is a few dictionary probes instead of a scan of the whole context: a
row's context grows by the tokens a step accepted, and in a batch every row looks up every step.
"""

from __future__ import annotations

from ..errors import UserError
from ..verify import Draft
from .base import Stateless


class NgramIndex:
    """The first start of every n-gram (n ≤ max_ngram_size) of `tokens`, kept in step with a token list
    that grows, or is cut back and regrown (`find` syncs to the list it is given)."""

    def __init__(self, max_ngram_size: int):
        self.max_ngram_size = max_ngram_size
        self.tokens: list[int] = []
        self.first: dict[tuple[int, ...], int] = {}  # n-gram → its earliest start
        self.added: list[list[tuple[int, ...]]] = []  # per end position: the n-grams first seen there

    def find(self, ids: list[int], num_tokens: int, min_n: int = 1) -> list[int]:
        """Up to num_tokens tokens that followed the earliest earlier occurrence of ids' final n-gram
        (the longest n ≥ min_n that has one); [] when none has."""
        self._sync(ids)
        end = len(ids)
        for n in range(min(self.max_ngram_size, end - 1), min_n - 1, -1):
            start = self.first.get(tuple(ids[end - n :]))
            if start is not None and start < end - n:  # an occurrence before the final one itself
                return ids[start + n : start + n + num_tokens]
        return []

    def _sync(self, ids: list[int]) -> None:
        mine = self.tokens
        if len(ids) >= len(mine) and ids[: len(mine)] == mine:  # the usual case: only new tokens
            keep = len(mine)
        else:
            keep = _common_prefix(mine, ids)
            for keys in reversed(self.added[keep:]):
                for key in keys:
                    del self.first[key]
            del self.added[keep:], mine[keep:]
        first, most = self.first, self.max_ngram_size
        for end in range(keep, len(ids)):
            new = []
            for n in range(1, min(most, end + 1) + 1):
                key = tuple(ids[end - n + 1 : end + 1])
                if key not in first:
                    first[key] = end - n + 1
                    new.append(key)
            self.added.append(new)
        mine.extend(ids[keep:])


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix (a binary search over slice comparisons, which run in C)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def check_ngram_sizes(min_ngram_size: int, max_ngram_size: int) -> None:
    if min_ngram_size > max_ngram_size:
        raise UserError(f"min_ngram_size ({min_ngram_size}) must not exceed max_ngram_size ({max_ngram_size}): "
                        "no n-gram would be looked up")


class PromptLookup(Stateless):
    """`min_ngram_size` > 1 drafts only after a match of at least that many tokens (vLLM's
    `prompt_lookup_min`): fewer drafts, meant for where every drafted token costs a verify column; 1 is
    transformers' rule. On the development CPU at batch 8 on `code`, 2 gained nothing (docs/BENCHMARKS.md,
    tenth run)."""

    def __init__(self, max_ngram_size: int, num_draft_tokens: int, min_ngram_size: int = 1):
        check_ngram_sizes(min_ngram_size, max_ngram_size)
        self.num_draft_tokens, self.min_ngram_size = num_draft_tokens, min_ngram_size
        self.index = NgramIndex(max_ngram_size)  # one per row: its context grows step by step

    def propose(self, ctx, limit: int) -> Draft:
        return Draft.chain(self.index.find(ctx.ids(), min(limit, self.num_draft_tokens), self.min_ngram_size))
