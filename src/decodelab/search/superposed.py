"""Superposed decoding — Shen et al., "Superposed Decoding: Multiple Generations from a Single
Autoregressive Inference Pass" (NeurIPS 2024, arXiv:2405.18400).

k drafts share one sequence in the KV cache: each step feeds ONE position whose input embedding is the
superposition Σ_d w_d·E[x^(d)] of the drafts' last tokens, w = the drafts' probabilities (their
cumulative scores, exponentiated and normalised), via `Session.forward(token_weights=...)`. The one
distribution it returns, p = softmax(logits / T) (T = the request's temperature, 0.06 by default as in
the paper's code), is kept to its top n tokens (`num_tokens`, 9) and renormalised; each draft d scores
every token v of them

    s(d, v) = (1 − α)·log p(v) + α·log Σ_i λ_i · P_{i+1-gram}(v | the draft's last i tokens),

with λ = (0.01, 0.04, 0.15, 0.18, 0.12) for i = 1..5 (bigram .. 6-gram) and α = 0.54; a draft with no
n-gram support for any of them gets (1 − α)·log p(v) − 200 (the paper's code's penalty). Cumulative
score + s(d, v) over all k·n extensions; the best 2k are kept, of which the best k not ending in EOS
stay alive and those ending in EOS join the finished set (its best k kept); at the first step the
drafts are the top 2k of the one distribution. The drafts come back ranked by their mean score per
token (`.candidates`), the best as the Generation: k drafts for the cost of one forward pass per token.

The n-gram tables (`NGrams` below): MLE counts from `ngram_corpus` — "train" (the first `ngram_chars`
characters of the training split of decodelab's code corpus, `training.corpus.load_split`, tokenised
with the model's tokenizer and cached on the LM; the paper builds them from a training corpus) or
"prompt" (the prompt's own tokens). The other sampling parameters (top-k/p, penalties) are not used:
the rule fixes the distribution (temperature, then top-n). One prompt at a time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from ..errors import UserError

LAMBDAS = (0.01, 0.04, 0.15, 0.18, 0.12)  # bigram … 6-gram (context lengths 1..5)
PENALTY = 200.0


class NGrams:
    """Counts of every n-gram (n = 1..6) of a token stream; P(v | context) = c(context + v) / c(context)."""

    def __init__(self, tokens: list[int], longest: int = len(LAMBDAS) + 1):
        self.counts = Counter(tuple(tokens[i : i + n]) for n in range(1, longest + 1)
                              for i in range(len(tokens) - n + 1))

    def prob(self, context: tuple[int, ...], token: int) -> float:
        total = self.counts.get(context, 0)
        return self.counts.get(context + (token,), 0) / total if total else 0.0

    def interpolated(self, history: list[int], token: int) -> float:
        """Σ_i λ_i·P(token | last i tokens), over the context lengths the history has."""
        return sum(lam * self.prob(tuple(history[-i:]), token)
                   for i, lam in enumerate(LAMBDAS, 1) if len(history) >= i)


def ngram_table(ctx, corpus: str, chars: int) -> NGrams:
    if corpus == "prompt":
        return NGrams(ctx.prompts[0])
    key = ("superposed.ngrams", chars)
    if key not in ctx.lm.state:
        from ..training.corpus import load_split

        text, size = [], 0
        for f in load_split("train"):
            text.append(f.text)
            size += len(f.text)
            if size >= chars:
                break
        ctx.lm.state[key] = NGrams(ctx.lm.encode("\n".join(text)[:chars]))
    return ctx.lm.state[key]


@dataclass
class Draft:
    tokens: list[int]
    score: float


def extend(drafts: list[Draft], log_p: torch.Tensor, table: NGrams, prompt: list[int], alpha: float,
           k: int, eos: set[int], first: bool) -> tuple[list[Draft], list[Draft]]:
    """One step: log_p [V] the top-n renormalised log-distribution (−inf elsewhere) → (alive, finished)."""
    support = torch.isfinite(log_p).nonzero().flatten().tolist()
    cands = []
    for d in drafts[:1] if first else drafts:
        history = prompt + d.tokens
        mix = {v: table.interpolated(history, v) for v in support}
        smoothed = any(m > 0 for m in mix.values())
        for v in support:
            lp = float(log_p[v])
            s = ((1 - alpha) * lp + alpha * float(torch.tensor(mix[v]).log())) if smoothed else \
                (1 - alpha) * lp - PENALTY
            cands.append(Draft(d.tokens + [v], d.score + s))
    cands = sorted((c for c in cands if c.score > float("-inf")), key=lambda c: -c.score)[: 2 * k]
    alive = [c for c in cands if c.tokens[-1] not in eos][:k]
    return alive, [c for c in cands if c.tokens[-1] in eos]


def superposition(drafts: list[Draft], vocab: int) -> torch.Tensor:
    """[1, 1, V] weights: each draft's probability (softmax of the cumulative scores) on its last token."""
    w = torch.zeros(1, 1, vocab)
    probs = torch.tensor([d.score for d in drafts], dtype=torch.float64).softmax(0)
    for d, p in zip(drafts, probs.tolist()):
        w[0, 0, d.tokens[-1]] += p
    return w


def superposed(ctx, k: int, n: int, alpha: float, corpus: str, chars: int) -> list[tuple[list[int], float]]:
    """The k drafts of ctx's one prompt, ranked by mean score per token (best first)."""
    from ..methods.autoregressive import prefill

    temperature = ctx.params["temperature"]
    if temperature <= 0:
        raise UserError("superposed needs temperature > 0 (the paper's 0.06): it mixes the drafts by probability")
    table, eos, prompt = ngram_table(ctx, corpus, chars), set(ctx.lm.eos_token_ids), ctx.prompts[0]
    session = ctx.session()
    logits, alive, finished = prefill(ctx, session)[0], [Draft([], 0.0)], []
    for step in range(ctx.remaining(0)):
        log_p = top_n_log_probs(logits.float() / temperature, n)
        alive, done = extend(alive, log_p, table, prompt, alpha, k, eos, first=step == 0)
        finished = sorted(finished + done, key=lambda c: -c.score)[:k]
        if not alive or step + 1 == ctx.remaining(0):
            break
        weights = superposition(alive, ctx.lm.vocab_size)
        logits = session.forward([alive[0].tokens[-1]], token_weights=weights)[0, -1]
    ranked = sorted(finished + alive, key=lambda d: -d.score / len(d.tokens))
    return [(d.tokens, d.score / len(d.tokens)) for d in ranked]


def top_n_log_probs(scaled_logits: torch.Tensor, n: int) -> torch.Tensor:
    """log of softmax(scaled_logits) kept to its n largest entries and renormalised; −inf elsewhere."""
    p = scaled_logits.softmax(-1)
    top = p.topk(min(n, p.shape[-1]))
    kept = torch.zeros_like(p).scatter_(-1, top.indices, top.values)
    return (kept / kept.sum()).log()
