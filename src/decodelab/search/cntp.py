"""Cautious next token prediction (CNTP) — Wang et al., "Cautious Next Token Prediction" (Findings of
ACL 2025, arXiv:2507.03038).

At every step, with H the entropy (nats) of the processed next-token distribution p:

    N = ⌊1 + (N_max − 1) · clip((H − H_lo) / (H_hi − H_lo), 0, 1)⌋     (H_lo 0.01, H_hi 1.5, N_max 10)

N = 1: sample one token from p as usual. N > 1 (the model is unsure): fork the row's cache into N
trials, each sampling from p onwards until its first punctuation token (a token whose text holds one
of . , newline ? ! : ; ) ] }), EOS, or the length limit; keep the trial of lowest perplexity under the
model (highest mean log-probability of its tokens), append it whole and adopt its cache. The trials
of one step are rows of one batch, one forward pass per trial token. With temperature 0, p is one-hot,
H = 0 and CNTP is greedy. One prompt at a time (the trials are the batch); grammar constraints are
refused with a one-line error (the trials would each need their own matcher).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

PUNCTUATION = ".,\n?!:;)]}"


def num_trials(entropy: float, h_lo: float, h_hi: float, n_max: int) -> int:
    """N = ⌊1 + (N_max − 1)·clip((H − H_lo)/(H_hi − H_lo), 0, 1)⌋."""
    frac = min(max((entropy - h_lo) / (h_hi - h_lo), 0.0), 1.0)
    return int(math.floor(1 + (n_max - 1) * frac + 1e-9))


def entropy(probs: torch.Tensor) -> float:
    """H(p) in nats of a [V] distribution."""
    return float(-(probs * probs.clamp_min(1e-38).log()).sum())


def punctuation_mask(lm) -> torch.Tensor:
    """[V] bool: tokens whose text holds a punctuation character (cached on the LM)."""
    key = "cntp.punctuation"
    if key not in lm.state:
        texts = [lm.decode([i]) for i in range(lm.vocab_size)]
        lm.state[key] = torch.tensor([any(c in t for c in PUNCTUATION) for t in texts])
    return lm.state[key]


class _Trials:
    """N trials forked from one row: their tokens, summed log-probabilities and whether they ended."""

    def __init__(self, n: int):
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.logp = [0.0] * n
        self.ended = [False] * n

    def best(self) -> int:
        """The trial of lowest perplexity: highest mean log-probability (first on ties)."""
        means = [lp / len(t) for lp, t in zip(self.logp, self.tokens)]
        return max(range(len(means)), key=lambda i: (means[i], -i))


def probs_rows(sampler, histories: list[list[int]], logits: torch.Tensor) -> torch.Tensor:
    """The sampler's distribution for N rows with ragged histories: logits [N, V] → [N, V]."""
    if not sampler.needs_history:
        return sampler.probs(None, logits)
    return torch.cat([sampler.probs(torch.tensor([h]), logits[i : i + 1]) for i, h in enumerate(histories)])


def sample_trials(ctx, session, logits: torch.Tensor, n: int, budget: int, stop: torch.Tensor,
                  base: list[int] | None = None) -> _Trials:
    """Fork the one-row state (session, next-token logits [1, V]) into n rows and sample n trials from
    the request's sampler, each until a token in `stop` ([V] bool), EOS, or `budget` tokens; draws go
    trial by trial at each depth with ctx's generator. `base`: the tokens before the trials (the
    processors' history; default ctx.ids()). The session is left with the n rows."""
    base = ctx.ids() if base is None else base
    eos = ctx.lm.eos_token_ids
    session.fork(0, n)
    trials, logits = _Trials(n), logits.expand(n, -1)  # [n, V]
    for depth in range(budget):
        live = [i for i in range(n) if not trials.ended[i]]
        probs = probs_rows(ctx.sampler, [base + trials.tokens[i] for i in live], logits[live])
        raw = logits[live].float().log_softmax(-1)
        for j, i in enumerate(live):  # one draw per live trial, in trial order
            t = int(ctx.sampler.sample(probs[j : j + 1], ctx.generator))
            trials.tokens[i].append(t)
            trials.logp[i] += float(raw[j, t])
            trials.ended[i] = bool(stop[t]) or t in eos or depth + 1 == budget
        if all(trials.ended):
            break
        feed = torch.tensor([[tok[-1]] for tok in trials.tokens])  # ended trials feed junk, never kept
        logits = session.forward(feed)[:, -1]
    return trials


def run_trials(ctx, session, logits: torch.Tensor, n: int, budget: int) -> list[int]:
    """Sample n trials from the state (session, next-token logits [1, V]) and adopt the best one's
    cache; return its tokens (the last one not yet fed to the session)."""
    base = session.length
    trials = sample_trials(ctx, session, logits, n, budget, punctuation_mask(ctx.lm))
    chosen = trials.best()
    session.reorder([chosen])
    session.truncate(base + len(trials.tokens[chosen]) - 1)
    return trials.tokens[chosen]


def cntp(ctx, n_max: int, h_lo: float, h_hi: float) -> Iterator[list[list[int]]]:
    """Yield a token per confident step and a whole trial per cautious step (one row)."""
    from ..methods.autoregressive import prefill

    session = ctx.session()
    logits = prefill(ctx, session)  # [1, V]
    while True:
        probs = ctx.sampler.probs(ctx.history() if ctx.sampler.needs_history else None, logits)  # [1, V]
        n = num_trials(entropy(probs[0]), h_lo, h_hi, n_max)
        if n == 1:
            tokens = [int(ctx.sampler.sample(probs, ctx.generator))]
        else:
            tokens = run_trials(ctx, session, logits, n, ctx.remaining(0))
        yield [tokens]
        logits = session.forward(torch.tensor([tokens[-1:]]))[:, -1]
