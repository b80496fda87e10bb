"""Warpers: reshape or truncate the next-token distribution before sampling (never used for greedy).

Each one gives exactly what the Hugging Face `transformers` warper of the same name gives
(`min_tokens_to_keep=1`, removed tokens set to -inf), including tie handling.

- Top-k: Fan et al., "Hierarchical Neural Story Generation", arXiv:1805.04833.
- Top-p (nucleus): Holtzman et al., "The Curious Case of Neural Text Degeneration", arXiv:1904.09751.
- Min-p: Nguyen et al., "Turning Up the Heat: Min-p Sampling for Creative and Coherent LLM Outputs",
  arXiv:2407.01082.
- Typical: Meister et al., "Locally Typical Sampling", arXiv:2202.00666.
- Epsilon and eta: Hewitt et al., "Truncation Sampling as Language Model Desmoothing", arXiv:2210.15191.
"""

from __future__ import annotations

import torch

NEG_INF = -float("inf")


def _below_max(scores: torch.Tensor) -> torch.Tensor:
    """[B, V] → [B, V] bool, True for every token except the most likely one(s)."""
    return scores < scores.amax(dim=-1, keepdim=True)


class Temperature:
    """Divide the logits by `temperature` (> 0)."""

    needs_history = False

    def __init__(self, temperature: float):
        self.temperature = temperature

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.temperature > torch.finfo(scores.dtype).max:  # overflows the dtype: take the limit T → ∞
            return torch.where(torch.isinf(scores), scores, torch.zeros_like(scores))  # (not inf / inf = NaN)
        return scores / self.temperature  # [B, V]


class TopK:
    """Keep the `k` highest logits (and every token tied with the k-th)."""

    needs_history = False

    def __init__(self, k: int):
        self.k = max(k, 1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        k = min(self.k, scores.shape[-1])
        kth = torch.topk(scores, k).values[..., -1:]  # [B, 1]
        return scores.masked_fill(scores < kth, NEG_INF)


class TopP:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least `p`."""

    needs_history = False

    def __init__(self, p: float):
        self.p = p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        sorted_logits, order = torch.sort(scores, descending=False)  # [B, V] ascending
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        sorted_remove = cumulative <= (1 - self.p)  # the tail holding at most 1 - p of the mass
        sorted_remove[..., -1:] = False  # always keep the most likely token
        remove = sorted_remove.scatter(1, order, sorted_remove)
        return scores.masked_fill(remove, NEG_INF)


class MinP:
    """Keep tokens whose probability is at least `min_p` times the top token's probability."""

    needs_history = False

    def __init__(self, min_p: float):
        self.min_p = min_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = scores.softmax(dim=-1)  # [B, V]
        remove = probs < self.min_p * probs.amax(dim=-1, keepdim=True)
        remove.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)
        return scores.masked_fill(remove, NEG_INF)


class Typical:
    """Keep the tokens whose surprisal is closest to the entropy, up to probability mass `mass`."""

    needs_history = False

    def __init__(self, mass: float):
        self.mass = mass

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logp = scores.log_softmax(dim=-1)  # [B, V]
        entropy = -(logp * logp.exp()).nansum(-1, keepdim=True)  # [B, 1]
        distance, order = torch.sort((-logp - entropy).abs(), descending=False)  # [B, V]
        cumulative = scores.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
        last = (cumulative < self.mass).sum(dim=1).clamp_(max=scores.shape[-1] - 1)  # [B]
        sorted_remove = distance > distance.gather(1, last.view(-1, 1))
        sorted_remove[..., :1] = False  # always keep the most typical token
        remove = sorted_remove.scatter(1, order, sorted_remove)
        return scores.masked_fill(remove, NEG_INF)


class EpsilonCutoff:
    """Remove tokens with probability below `epsilon`, except the most likely one."""

    needs_history = False

    def __init__(self, epsilon: float):
        self.epsilon = epsilon

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        remove = (scores.softmax(dim=-1) < self.epsilon) & _below_max(scores)  # [B, V]
        return scores.masked_fill(remove, NEG_INF)


class EtaCutoff:
    """Remove tokens with probability below eta = min(epsilon, sqrt(epsilon) * exp(-entropy))."""

    needs_history = False

    def __init__(self, epsilon: float):
        self.epsilon = torch.tensor(epsilon)  # float32, as in transformers

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logp = scores - scores.logsumexp(dim=-1, keepdim=True)  # [B, V]
        entropy = -(logp.clamp(min=torch.finfo(logp.dtype).min) * logp.softmax(dim=-1)).sum(-1)  # [B]
        epsilon = self.epsilon.to(scores.device)
        eta = torch.minimum(epsilon, epsilon.sqrt() * torch.exp(-entropy))[..., None]  # [B, 1]
        remove = (scores.softmax(dim=-1) < eta) & _below_max(scores)
        return scores.masked_fill(remove, NEG_INF)
