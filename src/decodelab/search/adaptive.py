"""Input-adaptive best-of-k — Damani et al., "Learning How Hard to Think: Input-Adaptive Allocation of LM
Computation" (ICLR 2025, arXiv:2410.04707).

A batch of B prompts shares a total budget of S = budget · B samples. A predictor gives each prompt x
its chance p̂(x) that one sample is good; under the paper's binary-reward model the expected reward of
best-of-k is q(x, k) = 1 − (1 − p̂)^k, so the marginal reward of the k-th sample is

    Δ(x, k) = q(x, k) − q(x, k − 1) = p̂ (1 − p̂)^(k−1).

q is concave in k, so the greedy allocation — every prompt starts with one sample, then each further
sample goes to the prompt with the largest marginal reward Δ(x, k_x + 1) (ties to the earlier prompt),
at most `max_samples` each — maximises Σ_x q(x, k_x) for the budget. Prompts that are surely easy
(p̂ ≈ 1) or hopeless (p̂ ≈ 0) get few samples; the ones in between get most.

Each prompt's k_x candidates come from the inner method and are ranked by the best-of-N scorer
(`search.meta`); candidate j of prompt b is the inner method's sample with seed s + b·max_samples + j.

The predictor: a callable `predictor(prompt_text) -> p̂ ∈ [0, 1]` (the paper learns one from rewards on
training prompts), or the built-in proxy "confidence": p̂ = exp(−H), H the entropy (nats) of the model's
next-token distribution after the prompt (one forward pass over the batch) — a zero-training stand-in,
not the paper's learned predictor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import UserError
from .meta import _score, completion_logprobs, run_inner


def marginal_reward(p: float, k: int) -> float:
    """Δ(x, k) = p (1 − p)^(k − 1): what the k-th sample adds to E[best-of-k] with success chance p."""
    return p * (1 - p) ** (k - 1)


def allocate(p_hat: list[float], total: int, max_samples: int) -> list[int]:
    """Samples per prompt: one each, then greedily by the largest marginal reward (the paper's rule)."""
    if total < len(p_hat):
        raise UserError(f"a budget of {total} samples cannot give each of {len(p_hat)} prompts one")
    k = [1] * len(p_hat)
    for _ in range(min(total, max_samples * len(p_hat)) - len(p_hat)):
        gains = [marginal_reward(p, n + 1) if n < max_samples else -1.0 for p, n in zip(p_hat, k)]
        best = max(range(len(gains)), key=lambda i: (gains[i], -i))
        k[best] += 1
    return k


@torch.inference_mode()
def confidence(ctx) -> list[float]:
    """p̂ = exp(−H(next-token distribution after the prompt)) per prompt: one batched forward."""
    from ..methods.autoregressive import prefill

    logp = prefill(ctx, ctx.session()).float().log_softmax(-1)  # [B, V]
    return (logp.exp() * logp).nan_to_num(0.0).sum(-1).exp().tolist()  # Σ p log p = −H


def predict(ctx, predictor: str | Callable) -> list[float]:
    if not callable(predictor):
        return confidence(ctx)
    values = [float(predictor(ctx.lm.decode(p))) for p in ctx.prompts]
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise UserError(f"predictor must return a probability in [0, 1], got {values}")
    return values


def adaptive_best_of_k(ctx, inner: str, budget: float, max_samples: int, predictor,
                       scorer) -> list[list[tuple[list[int], float]]]:
    """Per prompt, its k_x candidates ranked by score (best first) as (token_ids, score)."""
    counts = allocate(predict(ctx, predictor), max(1, round(budget * ctx.batch_size)), max_samples)
    if isinstance(ctx.seed, (list, tuple)):
        raise UserError("adaptive_best_of_k takes one integer seed (candidate j of prompt b uses seed + b·max_samples + j)")
    base = ctx.seed if ctx.seed is not None else int(torch.randint(0, 2**30, ()).item())
    rows = [(b, j) for b, k in enumerate(counts) for j in range(k)]
    gens = run_inner(ctx, inner, [b for b, _ in rows], 1, [base + b * max_samples + j for b, j in rows])
    lps = (completion_logprobs(ctx, [ctx.prompts[b] for b, _ in rows], [g.token_ids for g in gens])
           if not callable(scorer) else [[] for _ in gens])
    ranked: list[list[tuple[list[int], float]]] = [[] for _ in counts]
    for (b, _), g, lp in zip(rows, gens, lps):
        ranked[b].append((g.token_ids, _score(scorer, g, lp)))
    return [sorted(r, key=lambda c: -c[1]) for r in ranked]
