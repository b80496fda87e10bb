"""A smaller model with the same tokenizer drafts a chain; its KV cache follows the target's context.

Speculative decoding: Leviathan et al., arXiv:2211.17192; Chen et al., arXiv:2302.01318. Adaptive
length: SpecDec++ (arXiv:2405.19715) shows the optimal stopping rule is a threshold on the predicted
probability that some draft so far is rejected; training-free, that probability is estimated from the
draft's own confidence in its tokens: stop once 1 − Π conf_j > stop_threshold.
"""

from __future__ import annotations

import torch

from ..errors import ModelError, UserError
from ..model import LM, load
from ..model.lm import DRAFTS
from ..verify import Draft
from .base import Stateless


def resolve_draft(lm: LM, name: str, **load_options) -> LM:
    """The draft LM for `name` ("auto" = the target's known draft), loaded once per target.

    `load_options` (allow_pickle, trust_remote_code) go to `load` the first time a draft is loaded.
    """
    if name == "auto":
        if lm.name not in DRAFTS:
            raise UserError(f"no default draft for {lm.name!r}: pass draft=<model name or directory> "
                             "(CLI: --draft DIR)")
        name = DRAFTS[lm.name]
    cache = lm.state.setdefault("drafts", {})
    if name not in cache:
        draft = _load_like(lm, name, load_options)
        check_vocab(lm, draft, name)
        cache[name] = draft
    return cache[name]


def _load_like(lm: LM, name: str, load_options: dict) -> LM:
    """The draft on the target's device and dtype; a llamacpp target's draft runs on llama.cpp too when
    it can (same GGUF precision), else on the default backend."""
    if lm.backend == "llamacpp":
        try:
            return load(name, dtype=lm.model.load_dtype, backend="llamacpp", **load_options)
        except ModelError:
            pass
    return load(name, device=str(lm.device), dtype=lm.dtype, **load_options)


def check_vocab(target: LM, draft: LM, name: str) -> None:
    """A draft fits when both map the same strings to the same ids below the smaller vocabulary size.

    Ids past that size (a tokenizer's added tokens past the model's embedding, or a larger model's
    padded rows) never reach both models, so they do not count; the first differing id is named.
    """
    n = min(target.vocab_size, draft.vocab_size)
    ours = _id_to_token(target, n)
    theirs = _id_to_token(draft, n)
    for i in range(n):
        if ours.get(i) != theirs.get(i):
            raise ModelError(f"draft {name!r} does not share the target's vocabulary: token id {i} is "
                             f"{ours.get(i)!r} for the target but {theirs.get(i)!r} for the draft")


def _id_to_token(lm: LM, n: int) -> dict[int, str]:
    return {i: s for s, i in lm.tokenizer.get_vocab().items() if i < n}


def in_vocab(ids: list[int], draft: LM) -> list[int]:
    """The context as the draft can read it: ids past the draft's vocabulary become its pad id.

    Only proposals depend on the draft, and every proposal is verified, so this keeps decoding lossless.
    """
    v = draft.vocab_size
    if all(t < v for t in ids):
        return ids
    fill = draft.pad_token_id if draft.pad_token_id < v else 0
    return [t if t < v else fill for t in ids]


def draft_q(ctx, vocab: int, history: list[int], logits: torch.Tensor) -> torch.Tensor:
    """The draft's processed distribution in the target's vocabulary ([V]), under the row's sampler."""
    logits = logits[..., :vocab]
    if logits.shape[-1] < vocab:
        logits = torch.nn.functional.pad(logits, (0, vocab - logits.shape[-1]), value=float("-inf"))
    hist = torch.tensor([history]) if ctx.sampler.needs_history else None
    return ctx.sampler.probs(hist, logits)[0]


def confidence(q: torch.Tensor, logits: torch.Tensor, x: int, greedy: bool) -> float:
    """The draft's estimate that the target keeps x (SpecDec++'s stop rule): q(x) of the processed q it is
    verified with when sampling; at temperature 0, where q is one-hot, its softmax confidence in x."""
    if not greedy:
        return float(q[x])
    return float(torch.softmax(logits[0].float(), -1)[x]) if x < logits.shape[-1] else 0.0


class DraftModel(Stateless):
    def __init__(self, ctx, draft_lm: LM, num_draft_tokens: int, stop_threshold: float = 1.0, session=None):
        self.session = session or ctx.session(draft_lm, role="draft")
        self.num_draft_tokens = num_draft_tokens
        self.stop_threshold = stop_threshold
        self.vocab = ctx.lm.vocab_size

    def propose(self, ctx, limit: int) -> Draft:
        history = in_vocab(ctx.ids(), self.session.lm)
        feed = self.session.sync(history[:-1]) + [history[-1]]
        tokens, qs, p_all = [], [], 1.0
        for _ in range(min(limit, self.num_draft_tokens)):
            logits = self.session.forward(feed, last_only=True)[0, -1:]  # [1, V_draft]
            q = draft_q(ctx, self.vocab, history + tokens, logits)
            x = int(ctx.sampler.sample(q[None], ctx.generator))
            tokens.append(x)
            qs.append(q)
            feed = [x]
            p_all *= confidence(q, logits, x, ctx.sampler.greedy)
            if 1.0 - p_all > self.stop_threshold:
                break
        q = None if ctx.sampler.greedy or not qs else torch.stack(qs)
        return Draft.chain(tokens, q)


class BatchDrafter:
    """One draft cache for all rows of a batch: every draft step is one batched draft forward (BASS,
    Qian et al., arXiv:2404.15778), instead of one forward per row.

    Each row drafts exactly as `DraftModel` would alone — the same processed q, the same SpecDec++ stop
    rule, the same draws from the row's own generator — only the forwards are shared. Rows roll their
    draft cache back by different amounts (`Session.keep_rows`: holes, no copy), then the tokens each row
    lacks are fed in one right-padded forward; rows that join are prefilled and merged, rows that left
    are dropped, so the draft batch always mirrors the target's live rows.
    """

    def __init__(self, ctx, draft_lm: LM, num_draft_tokens: int, stop_threshold: float = 1.0):
        self.ctx, self.lm = ctx, draft_lm
        self.num_draft_tokens, self.stop_threshold = num_draft_tokens, stop_threshold
        self.vocab = ctx.lm.vocab_size
        self.session, self.rows = None, []  # the draft session and the ctx row each of its rows holds

    def row(self, view) -> "_RowHandle":
        return _RowHandle(self, view)

    def propose_rows(self, views: list, rows: list[int], limits: list[int]) -> list[Draft]:
        histories = [in_vocab(v.ids(), self.lm) for v in views]
        self._align(rows, histories)
        counts, feeds = [], []
        for i, h in enumerate(histories):
            cached = self.session.real_tokens(i)
            k = next((j for j, (a, b) in enumerate(zip(cached, h[:-1])) if a != b), min(len(cached), len(h) - 1))
            counts.append(k)
            feeds.append(h[k:])
        self.session.keep_rows(counts)
        logits = self._feed(feeds)
        budget = [min(limit, self.num_draft_tokens) for limit in limits]
        tokens, qs, conf = [[] for _ in views], [[] for _ in views], [1.0] * len(views)
        active = [n > 0 for n in budget]
        while any(active):
            for i, view in enumerate(views):
                if not active[i]:
                    continue
                q = draft_q(view, self.vocab, histories[i] + tokens[i], logits[i : i + 1])
                x = int(view.sampler.sample(q[None], view.generator))
                tokens[i].append(x)
                qs[i].append(q)
                conf[i] *= confidence(q, logits[i : i + 1], x, view.sampler.greedy)
                active[i] = len(tokens[i]) < budget[i] and 1.0 - conf[i] <= self.stop_threshold
            if any(active):
                logits = self._feed([[t[-1]] if a else [] for t, a in zip(tokens, active)])
        return [Draft.chain(t, None if v.sampler.greedy or not q else torch.stack(q))
                for t, q, v in zip(tokens, qs, views)]

    def _align(self, rows: list[int], histories: list[list[int]]) -> None:
        """Make the draft session's rows the live rows, in their order (drop, prefill + merge, reorder)."""
        if self.session is not None:
            keep = [i for i, b in enumerate(self.rows) if b in set(rows)]
            if not keep:
                self.session, self.rows = None, []
            elif len(keep) < len(self.rows):
                self.session.reorder(keep)
                self.rows = [self.rows[i] for i in keep]
        new = [b for b in rows if b not in set(self.rows)]
        if new:
            joined = self.ctx.session(self.lm, role="draft", batch_size=len(new))
            prompts = [histories[rows.index(b)][:-1] or histories[rows.index(b)][:1] for b in new]
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[self.lm.pad_token_id] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            joined.forward(ids, pad_mask=mask, last_only=True)
            if self.session is None:
                self.session, self.rows = joined, list(new)
            else:
                self.session.defragment()
                self.session.merge(joined)
                self.rows += new
        if self.rows != rows:
            self.session.reorder([self.rows.index(b) for b in rows])
            self.rows = list(rows)

    def _feed(self, feeds: list[list[int]]) -> torch.Tensor:
        """Feed each row its tokens (ragged, right-padded as holes); [R, V] logits after each row's last."""
        n = max(len(f) for f in feeds)
        pad = self.lm.pad_token_id
        ids = torch.tensor([f + [pad] * (n - len(f)) for f in feeds])
        mask = torch.tensor([[1] * len(f) + [0] * (n - len(f)) for f in feeds])
        logits = self.session.forward(ids, pad_mask=None if all(len(f) == n for f in feeds) else mask)
        last = torch.tensor([max(len(f) - 1, 0) for f in feeds])
        return logits[torch.arange(len(feeds)), last]  # [R, V_draft]


class _RowHandle(Stateless):
    """One row's face of a BatchDrafter (the loop drafts all rows with `batch.propose_rows`)."""

    def __init__(self, batch: BatchDrafter, view):
        self.batch, self.view = batch, view

    def propose(self, ctx, limit: int) -> Draft:  # a batch of one (the single-row loop)
        return self.batch.propose_rows([ctx], [getattr(ctx, "b", 0)], [limit])[0]
