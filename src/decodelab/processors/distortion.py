"""Local normalisation distortion: the log of the mass a truncation sampler keeps at each step.

A truncation sampler (top-k, top-p, min-p, typical, ε, η, Bregman top-k) draws from
q_t(v) = p_t(v)^{1/τ} · 1[v ∈ S_t] / Z_t with Z_t = Σ_{v ∈ S_t} p_t(v)^{1/τ}, where p_t is the
distribution after the logits processors (penalties, grammar) and before temperature and truncation.
So a whole sequence is drawn with probability q(y) = p(y)^{1/τ} · ε, log ε = −Σ_t log Z_t — the
sequence-level distortion that Kempton & Burrell, "Local Normalization Distortion and the
Thermodynamic Formalism of Decoding Strategies for Large Language Models" (arXiv:2503.21929), argue
explains why top-k underperforms nucleus sampling. Plain sampling at τ = 1 has log Z_t = 0.

The Sampler computes log Z_t with the distribution it draws from (`Sampler.probs_and_log_z`); plain
sampling records it for every emitted token in `Stats.log_z` (docs/SEARCH.md, "Sampling processors").
For Bregman top-k with α ≠ 1 (processors/bregman.py) the kept tokens are not rescaled by one factor;
log Z_t is still the log of the kept mass there.
"""

from __future__ import annotations

import torch


def inf_limit(scores: torch.Tensor) -> torch.Tensor:
    """[B, V] scores with the rows that hold +inf (a penalty or temperature that overflowed) taken to their
    limit: 0 for the +inf tokens, -inf for the rest, so they share the mass equally instead of turning NaN."""
    top = torch.isposinf(scores)  # [B, V]
    if not top.any():
        return scores
    limit = torch.where(top, 0.0, float("-inf"))
    return torch.where(top.any(dim=-1, keepdim=True), limit, scores)


def log_kept_mass(processed: torch.Tensor, warped: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """log Z_t = log Σ_{v kept} p(v)^{1/τ}, p = softmax(processed); kept = tokens the warpers did not set
    to -inf. processed, warped: [B, V] logits before / after the warpers; τ a number or [B, 1] → [B] float32."""
    logp = inf_limit(processed).double().log_softmax(dim=-1)  # [B, V], p as the Sampler draws it
    kept = ~torch.isneginf(warped)  # float64: a τ beyond float32's range stays finite (−inf / τ = −inf)
    return torch.where(kept, logp / temperature, float("-inf")).logsumexp(dim=-1).float()
