"""A draft model proposes a token tree: its top-b next tokens, each extended by a greedy chain.

SpecInfer (Miao et al., "SpecInfer: Accelerating Generative Large Language Model Serving with Tree-based
Speculative Inference and Verification", arXiv:2305.09781) verifies a token tree in one target pass;
the tree here is its expansion-based shape with one expansion step: `branching` children of the
pending token, each continued greedily to `depth` tokens. Staged speculative decoding (Spector & Ré,
"Accelerating LLM Inference with Staged Speculative Decoding", arXiv:2308.04623) adds a second stage:
the draft is itself sped up by speculation from an n-gram model. Here that stage is prompt lookup
(lookup.py): before a draft forward extends a chain, the chain's prompt-lookup continuation is fed
after it in the same forward, and the longest prefix equal to the draft's own argmax is kept, plus
the draft's next argmax. It changes only how many draft forwards a tree costs, never the tree. A
forward is saved only when every unfinished chain's guess is right, so the stage pays most with few
branches on repetitive text (tiny llama, draft = target, 60 tokens of a repeating prompt: 26 instead
of 49 draft forwards with branching 1; 47 instead of 49 with branching 3 — the non-argmax branches
rarely have a matching n-gram).

Draft cache: `Session`'s tree mask lets new nodes see the whole cache, so every draft forward starts
from the context (truncate) and feeds the unfinished chains in full (branch-major, each a causal
chain hanging off the context). The next `propose` syncs back to the context; whatever cached prefix
it keeps is a causal continuation of the context, so it is valid. Near the end of either model's
context the tree narrows (fewer branches) so that every fed node fits.
Drafts are deterministic (q = None: top-k children are not samples), so verification is exact.
"""

from __future__ import annotations

import torch

from ..model import LM
from ..verify import Draft
from .base import Stateless
from .draft_model import in_vocab
from .lookup import NgramIndex

LONG_FEED = 32  # a longer catch-up feed (the first step's prompt) is run separately, last logits only


def greedy_extend(logits: torch.Tensor, proposed: list[int]) -> list[int]:
    """The draft's greedy continuation: accepted proposed prefix + the next argmax.

    logits [1 + len(proposed), V]: row 0 at the chain's last token, row i + 1 at proposed[i].
    """
    best = logits.argmax(-1).tolist()
    out: list[int] = []
    for i, x in enumerate(proposed):
        if best[i] != x:
            break
        out.append(x)
    return out + [best[len(out)]]


class DraftTree(Stateless):
    def __init__(self, ctx, draft_lm: LM, branching: int, depth: int, ngram_stage: bool = True,
                 max_ngram_size: int = 3):
        self.session = ctx.session(draft_lm, role="draft")
        self.branching = branching
        self.depth = depth
        self.ngram_stage = ngram_stage
        self.index = NgramIndex(max_ngram_size)  # the context, then each chain in turn: cut back and regrown
        self.vocab = ctx.lm.vocab_size

    def propose(self, ctx, limit: int) -> Draft:
        history = in_vocab(ctx.ids(), self.session.lm)
        branching, depth = self._shape(ctx, len(history), limit)
        if depth < 1:
            return Draft()
        chains = self._roots(history, depth)[:branching]
        self._extend(history, chains, depth)
        return self._as_draft(chains)

    def _shape(self, ctx, base: int, limit: int) -> tuple[int, int]:
        """(branching, depth) whose nodes fit both caches: b·depth target nodes after the context,
        b·(depth − 1) draft nodes in one extension feed, positions < the draft's maximum."""
        depth = min(limit, self.depth, self.session.lm.max_length - base + 1)
        branching = self.branching
        while branching > 1 and (branching * depth > ctx.lm.max_length - base
                                 or base + branching * (depth - 1) > self.session.lm.max_length):
            branching -= 1
        return branching, depth

    def _guess(self, ids: list[int], n: int) -> list[int]:
        """Stage 2: up to n prompt-lookup tokens following ids (none when the stage is off)."""
        if not self.ngram_stage or n < 1:
            return []
        return self.index.find(ids, n)

    def _roots(self, history: list[int], depth: int) -> list[list[int]]:
        """One chain per top-`branching` next token; stage 2 may already lengthen the first one."""
        missing = self.session.sync(history[:-1])
        if len(missing) > LONG_FEED:
            self.session.forward(missing, last_only=True)
            missing = []
        guess = self._guess(history, depth - 1)
        logits = self.session.forward(missing + [history[-1]] + guess)[0, len(missing):, : self.vocab]
        top = torch.topk(logits[0], min(self.branching, logits.shape[-1])).indices.tolist()
        chains = [[x] for x in top]
        first = greedy_extend(logits, guess)  # starts with the argmax, top[0] unless there is a tie
        if first[0] == top[0]:
            chains[0] = first[:depth]
        return chains

    def _extend(self, history: list[int], chains: list[list[int]], depth: int) -> None:
        """Grow every chain greedily to `depth` tokens, all unfinished chains in one forward each."""
        base = len(history)
        while True:
            todo = [c for c in chains if len(c) < depth]
            if not todo:  # the forest's columns are no sequence: never let a later sync keep them as one
                self.session.truncate(base)
                return
            feeds = [c + self._guess(history + c, depth - len(c) - 1) for c in todo]
            ids, parents = [], []
            for feed in feeds:
                parents += [-1] + list(range(len(ids), len(ids) + len(feed) - 1))
                ids += feed
            self.session.truncate(base)
            logits = self.session.forward(ids, parents=parents)[0, :, : self.vocab]  # [len(ids), V]
            start = 0
            for chain, feed in zip(todo, feeds):
                rows = logits[start + len(chain) - 1 : start + len(feed)]
                chain += greedy_extend(rows, feed[len(chain):])[: depth - len(chain)]
                start += len(feed)

    @staticmethod
    def _as_draft(chains: list[list[int]]) -> Draft:
        tokens, parents = [], []
        for chain in chains:
            for j, x in enumerate(chain):
                parents.append(-1 if j == 0 else len(tokens) - 1)
                tokens.append(x)
        return Draft(tokens, parents)
