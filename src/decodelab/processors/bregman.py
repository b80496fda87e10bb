"""Bregman adaptive top-k: the sparse distribution closest to p in a Bregman divergence, plus λ per token kept.

Noarov et al., "Foundations of Top-k Decoding For Language Models", arXiv:2505.19371. Decoding at one
position recovers a sparse distribution

    q* = argmin_{q ∈ Δ}  D_φ(q, p) + λ‖q‖₀        (primal, separable φ)

whose support is a top-k set of p, and whose cost C(k) is discretely convex in k, so binary search over k
finds the optimum. We use the α-family φ_α(x) = (x^α − x) / (α(α − 1)) (α → 1: x log x, the KL case):

- on the top-k set S the minimiser is q_i = (p_i^{α−1} + c)^{1/(α−1)}, c the one number with Σq = 1
  (found by bisection); α = 1 gives q_i = p_i / P_k, α = 2 gives p_i + (1 − P_k)/k, α < 1 up-weights the
  larger probabilities;
- C(k) = Σ_{i∈S} [φ(q_i) − φ(p_i) − φ'(p_i)(q_i − p_i)] + Σ_{i∉S} p_i^α / α + λk (a dropped token costs
  φ(0) − φ(p) + φ'(p)p = p^α/α); for KL, C(k) = −log P_k + λk, so k* = min{k : p_(k+1) ≤ (e^λ − 1)·P_k}.

The exact φ family of the paper and the dual variant are not built (reference notes: the family is
derived, not confirmed); `bregman_alpha` picks α > 0, `bregman_lambda` > 0 switches the processor on.
Tested against a brute-force argmin over every k (tests/processors/test_bregman.py).
"""

from __future__ import annotations

import math

import torch

NEG_INF = -float("inf")


def renormalise(p_top: torch.Tensor, alpha: float, iters: int = 100) -> torch.Tensor:
    """q on the kept set: q_i = (p_i^{α−1} + c)^{1/(α−1)} with Σq = 1. p_top: [k] float64 > 0 → [k]."""
    if alpha == 1:
        return p_top / p_top.sum()
    beta = alpha - 1
    base = p_top ** beta  # [k]

    def q_of(c: float) -> torch.Tensor:
        return (base + c).clamp_min(0) ** (1 / beta)

    # Σq(c) is increasing in c for α > 1 (bracket [0, 1]: every q_i ≥ 1 at c = 1) and decreasing for α < 1
    # (bracket (−min base, 0]: base + c must stay > 0, and q_max → ∞ at the left end); Σq(0) = P_k ≤ 1
    lo, hi = (0.0, 1.0) if beta > 0 else (-float(base.min()), 0.0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        if (beta > 0) == (float(q_of(mid).sum()) > 1):
            hi = mid
        else:
            lo = mid
    q = q_of(lo if beta > 0 else hi)  # the end with Σq ≤ 1 (finite), within float64 of Σq = 1
    return q / q.sum()


def phi(x: torch.Tensor, alpha: float) -> torch.Tensor:
    if alpha == 1:
        return torch.xlogy(x, x)
    return (x ** alpha - x) / (alpha * (alpha - 1))


def phi_prime(x: torch.Tensor, alpha: float) -> torch.Tensor:
    if alpha == 1:
        return x.log() + 1
    return (alpha * x ** (alpha - 1) - 1) / (alpha * (alpha - 1))


def cost(p_sorted: torch.Tensor, k: int, alpha: float, lam: float) -> float:
    """C(k) = D_φ(q^(k), p) + λk for the top-k support of p_sorted ([V] float64, descending)."""
    p, rest = p_sorted[:k], p_sorted[k:]
    if alpha == 1:
        return -math.log(float(p.sum())) + lam * k
    q = renormalise(p, alpha)
    kept = (phi(q, alpha) - phi(p, alpha) - phi_prime(p, alpha) * (q - p)).sum()
    return float(kept + (rest ** alpha).sum() / alpha) + lam * k


def best_k(p_sorted: torch.Tensor, alpha: float, lam: float) -> int:
    """The smallest k minimising C(k): binary search for the first k with C(k+1) ≥ C(k) (C is
    discretely convex in k). Tokens of probability 0 are never kept."""
    lo, hi = 1, max(int((p_sorted > 0).sum()), 1)
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(p_sorted, mid + 1, alpha, lam) >= cost(p_sorted, mid, alpha, lam):
            hi = mid
        else:
            lo = mid + 1
    return lo


class BregmanTopK:
    """Keep the k* most likely tokens of the α-Bregman objective and give them q (as logits log q)."""

    needs_history = False

    def __init__(self, alpha: float, lam: float):
        self.alpha, self.lam = alpha, lam

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # scores: [B, V] → [B, V]: log q on the kept tokens, -inf elsewhere
        p_sorted, order = scores.double().softmax(dim=-1).sort(dim=-1, descending=True, stable=True)
        out = torch.full_like(scores, NEG_INF)
        for b in range(scores.shape[0]):
            k = best_k(p_sorted[b], self.alpha, self.lam)
            if self.alpha == 1:  # p / P_k: the kept logits as they are
                out[b, order[b, :k]] = scores[b, order[b, :k]]
            else:
                out[b, order[b, :k]] = renormalise(p_sorted[b, :k], self.alpha).log().to(scores.dtype)
        return out
