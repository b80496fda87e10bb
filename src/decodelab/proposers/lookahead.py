"""Lookahead decoding: a 2-D Jacobi window makes n-grams, a pool keeps them, a branch verifies them.

Fu et al., "Break the Sequential Dependency of LLM Inference Using Lookahead Decoding"
(arXiv:2402.02057); reference code hao-ai-lab/LookaheadDecoding (`lade/decoding.py`).

One target forward per step holds both branches of the paper:
- verification branch = the candidates: the pool's n-grams keyed by the pending token, merged into a
  trie (a deterministic draft tree, q = None), verified by `verify()` like any other draft;
- lookahead branch = the aux nodes: the window, N − 1 levels of Jacobi guesses. Column 0 of level 0
  is the pending token itself; level 0 then holds columns 1..C−1 and every level ℓ ≥ 1 columns
  0..C−1. Node (0, c) hangs off (0, c − 1) and node (ℓ, c) off (ℓ − 1, c), so as a tree node at depth
  ℓ + c it sees level-0 columns ≤ c and column c of levels 1..ℓ — the paper's attention layout,
  expressed as Session tree attention with no special mask.

After the forward the argmax at every top-level node is the next level. The first N − 2 steps only
fill levels (every level drops its column 0, so C shrinks from W + N − 2 to W); after that each step
reads W n-grams down the columns, (level 0, level 1, …, level N − 2, new) at column c, stores them in
the pool keyed by their first token (at most G per key, least recently used evicted), and shifts:
level ℓ + 1 becomes level ℓ, the new guesses become the top level.

Re-anchoring after k accepted tokens: like the reference's default (ALWAYS_FWD_ONE = 1) the window
always shifts by exactly one column, whatever was accepted; its guesses are then k positions stale
but keep converging, and no column is refilled with random tokens. The window starts from prompt
tokens drawn by a generator seeded from the prompt (not ctx.generator: the sampling RNG stream is
the same as for plain sampling, and runs are reproducible). The pool lives for one generation, as in
the reference (`token_map = {}` per call): output never depends on it, and a per-call pool keeps
speed independent of what ran before on the same model.
"""

from __future__ import annotations

import zlib

import torch

from ..verify import Draft

NGram = tuple[int, ...]


class NGramPool:
    """n-grams keyed by their first token; at most `cap` per key, least recently used evicted first."""

    def __init__(self, cap: int):
        self.cap = cap
        self._table: dict[int, dict[NGram, None]] = {}  # insertion order = recency

    def add(self, key: int, rest: NGram) -> None:
        bucket = self._table.setdefault(key, {})
        bucket.pop(rest, None)
        bucket[rest] = None
        if len(bucket) > self.cap:
            del bucket[next(iter(bucket))]

    def get(self, key: int) -> list[NGram]:
        """The continuations stored for `key` (the n-gram minus its first token), newest first."""
        return list(reversed(self._table.get(key, {})))


class Window:
    """The 2-D lookahead window of N − 1 levels (see the module docstring for the layout).

    rows[0]  [C − 1]  level-0 guesses for columns 1..C−1 (column 0 is the pending token)
    rows[ℓ]  [C]      level ℓ ≥ 1 guesses for columns 0..C−1
    """

    def __init__(self, n: int, rows0: list[int]):
        self.n = n
        self.rows: list[list[int]] = [list(rows0)]

    @property
    def full(self) -> bool:
        return len(self.rows) == self.n - 1

    def tree(self) -> tuple[list[int], list[int]]:
        """Tokens level by level and their parents (-1 = the pending token, else an index here)."""
        tokens: list[int] = []
        parents: list[int] = []
        index: dict[tuple[int, int], int] = {}
        for level, row in enumerate(self.rows):
            first = 1 if level == 0 else 0
            for j, tok in enumerate(row):
                col = j + first
                above = (0, col - 1) if level == 0 else (level - 1, col)
                parents.append(index.get(above, -1))  # (0, 0) is the pending token
                index[(level, col)] = len(tokens)
                tokens.append(tok)
        return tokens, parents

    def step(self, pending: int, guesses: list[int]) -> list[NGram]:
        """One Jacobi iteration; guesses = argmax at every node of tree(). Returns the N-grams read."""
        top = guesses[len(guesses) - len(self.rows[-1]):]  # argmax at the top level's nodes
        if not self.full:  # filling: shift every level one column, add the new one
            new = top if len(self.rows) == 1 else top[1:]
            self.rows = [row[1:] for row in self.rows] + [new]
            return []
        level0 = [pending] + self.rows[0]
        grams = [(level0[c], *(row[c] for row in self.rows[1:]), top[c]) for c in range(len(top))]
        self.rows = [self.rows[1][1:], *self.rows[2:], top]
        return grams


def trie(continuations: list[NGram], depth: int, size: int) -> tuple[list[int], list[int]]:
    """Merge token sequences into a tree of at most `size` nodes and `depth` levels: tokens, parents."""
    tokens: list[int] = []
    parents: list[int] = []
    nodes: dict[tuple[int, int], int] = {}  # (parent, token) → node
    for seq in continuations:
        parent = -1
        for tok in seq[:depth]:
            node = nodes.get((parent, tok))
            if node is None:
                if len(tokens) >= size:
                    break
                node = nodes[(parent, tok)] = len(tokens)
                tokens.append(tok)
                parents.append(parent)
            parent = node
    return tokens, parents


def seed_tokens(prompt: list[int], count: int) -> list[int]:
    """`count` tokens drawn from the prompt by a generator seeded from the prompt itself."""
    gen = torch.Generator().manual_seed(zlib.crc32(repr(prompt).encode()))
    picks = torch.randint(len(prompt), (count,), generator=gen).tolist()
    return [prompt[i] for i in picks]


class Lookahead:
    def __init__(self, prompt: list[int], ngram_size: int, window: int, pool_cap: int):
        self.pool = NGramPool(pool_cap)
        self.window = Window(ngram_size, seed_tokens(prompt, window + ngram_size - 3))
        self._fed: Draft | None = None  # the draft whose aux nodes are this window
        self._pending = -1

    def propose(self, ctx, limit: int) -> Draft:
        """Pool trie (depth ≤ limit) + the window, within the context room left."""
        ids = ctx.ids()
        room = ctx.lm.max_length - len(ids)  # nodes that fit after the pending token
        tokens, parents = trie(self.pool.get(ids[-1]), limit, room)
        aux, aux_parents = self.window.tree()
        if len(tokens) + len(aux) > room:
            aux, aux_parents = [], []
        shift = len(tokens)
        draft = Draft(tokens, parents, None, aux, [p if p < 0 else p + shift for p in aux_parents])
        self._fed, self._pending = (draft if aux else None), ids[-1]
        return draft

    def observe(self, ctx, draft: Draft, verdict, logits: torch.Tensor) -> None:
        """logits [1 + n_cand + n_aux, V]: argmax at the window nodes → next level, n-grams → pool."""
        if self._fed is None or draft.aux_tokens != self._fed.aux_tokens:  # window not fed: leave it
            return
        start = 1 + len(draft.tokens)
        guesses = logits[start : start + len(draft.aux_tokens)].argmax(-1).tolist()
        for gram in self.window.step(self._pending, guesses):
            self.pool.add(gram[0], gram[1:])
        self._fed = None
