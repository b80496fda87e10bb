"""A smaller model with the same tokenizer drafts a chain; its KV cache follows the target's context.

Speculative decoding: Leviathan et al., arXiv:2211.17192; Chen et al., arXiv:2302.01318. Adaptive
length: SpecDec++ (arXiv:2405.19715) shows the optimal stopping rule is a threshold on the predicted
probability that some draft so far is rejected; training-free, that probability is estimated from the
draft's own confidence in its tokens: stop once 1 − Π conf_j > stop_threshold.
"""

from __future__ import annotations

import torch

from ..errors import ModelError
from ..model import LM, load
from ..model.lm import DRAFTS
from ..verify import Draft
from .base import Stateless


def resolve_draft(lm: LM, name: str) -> LM:
    """The draft LM for `name` ("auto" = the target's known draft), loaded once per target."""
    if name == "auto":
        if lm.name not in DRAFTS:
            raise ValueError(f"no default draft for {lm.name!r}: pass draft=<model name or directory>")
        name = DRAFTS[lm.name]
    cache = lm.state.setdefault("drafts", {})
    if name not in cache:
        draft = load(name, device=str(lm.device), dtype=lm.dtype)
        if draft.tokenizer.get_vocab() != lm.tokenizer.get_vocab():
            raise ModelError(f"draft {name!r} does not share the target's tokenizer")
        cache[name] = draft
    return cache[name]


class DraftModel(Stateless):
    def __init__(self, ctx, draft_lm: LM, num_draft_tokens: int, stop_threshold: float = 1.0):
        self.session = ctx.session(draft_lm, role="draft")
        self.num_draft_tokens = num_draft_tokens
        self.stop_threshold = stop_threshold
        self.vocab = ctx.lm.vocab_size

    def _q(self, ctx, history: list[int], logits: torch.Tensor) -> torch.Tensor:
        """The draft's processed distribution in the target's vocabulary: [V]."""
        logits = logits[..., : self.vocab]
        if logits.shape[-1] < self.vocab:
            logits = torch.nn.functional.pad(logits, (0, self.vocab - logits.shape[-1]), value=float("-inf"))
        hist = torch.tensor([history]) if ctx.sampler.needs_history else None
        return ctx.sampler.probs(hist, logits)[0]

    def propose(self, ctx, limit: int) -> Draft:
        history = ctx.ids()
        feed = self.session.sync(history[:-1]) + [history[-1]]
        tokens, qs, p_all = [], [], 1.0
        for _ in range(min(limit, self.num_draft_tokens)):
            logits = self.session.forward(feed, last_only=True)[0, -1:]  # [1, V_draft]
            q = self._q(ctx, history + tokens, logits)
            x = int(ctx.sampler.sample(q[None], ctx.generator))
            tokens.append(x)
            qs.append(q)
            feed = [x]
            p_all *= float(torch.softmax(logits[0], -1)[x]) if x < logits.shape[-1] else 0.0
            if 1.0 - p_all > self.stop_threshold:
                break
        q = None if ctx.sampler.greedy or not qs else torch.stack(qs)
        return Draft.chain(tokens, q)
