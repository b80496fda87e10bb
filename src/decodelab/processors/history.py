"""Logits processors that read the token history: repetition, presence / frequency and n-gram penalties.

They run before the warpers, on raw logits, and are the only processors whose output depends on
`input_ids` — which is why a sampler that uses one must be given each row's own history.

- Repetition penalty: Keskar et al., "CTRL: A Conditional Transformer Language Model for Controllable
  Generation", arXiv:1909.05858 (Hugging Face semantics: every token of the history, prompt included,
  at most once; positive logits divided, negative ones multiplied).
- Presence / frequency penalties: the OpenAI API parameters as vLLM implements them — only generated
  tokens count, `logit -= frequency * count + presence * (count > 0)`.
- No-repeat n-gram: Paulus et al., "A Deep Reinforced Model for Abstractive Summarization",
  arXiv:1705.04304 (n-gram blocking; Hugging Face semantics, prompt included).
"""

from __future__ import annotations

import torch


def _token_mask(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[B, L] ids → [B, V] bool, True where the token occurs (ids ≥ V are ignored)."""
    mask = torch.zeros(ids.shape[0], vocab_size + 1, dtype=torch.bool, device=ids.device)
    mask.scatter_(1, ids.clamp(max=vocab_size), True)
    return mask[:, :vocab_size]


def _token_counts(ids: torch.Tensor, vocab_size: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, L] ids → [B, V] occurrence counts (ids ≥ V are ignored)."""
    counts = torch.zeros(ids.shape[0], vocab_size + 1, dtype=dtype, device=ids.device)
    counts.scatter_add_(1, ids.clamp(max=vocab_size), torch.ones_like(ids, dtype=dtype))
    return counts[:, :vocab_size]


class RepetitionPenalty:
    """Divide the positive logits of seen tokens by `penalty`, multiply the negative ones."""

    needs_history = True

    def __init__(self, penalty: float):
        self.penalty = penalty

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids: [B, L]; scores: [B, V]
        seen = _token_mask(input_ids, scores.shape[-1])
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen, penalised, scores)


class PresenceFrequencyPenalty:
    """Subtract `frequency * count + presence * (count > 0)`, counting tokens after `prompt_len`."""

    needs_history = True

    def __init__(self, presence: float, frequency: float, prompt_len: int):
        self.presence, self.frequency, self.prompt_len = presence, frequency, prompt_len

    def for_row(self, b: int, prompt_len: int) -> "PresenceFrequencyPenalty":
        """For one row's own unpadded history: its generated tokens start after its own prompt."""
        return PresenceFrequencyPenalty(self.presence, self.frequency, prompt_len)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids: [B, L]; scores: [B, V]
        counts = _token_counts(input_ids[:, self.prompt_len :], scores.shape[-1], scores.dtype)
        scores = scores - self.frequency * counts
        return scores - self.presence * (counts > 0).to(scores.dtype)


class NoRepeatNGram:
    """Ban every token that would complete an n-gram already present in the history."""

    needs_history = True

    def __init__(self, ngram_size: int):
        self.n = ngram_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids: [B, L]; scores: [B, V]
        length, vocab_size = input_ids.shape[-1], scores.shape[-1]
        if length < self.n:
            return scores
        suffix = input_ids[:, length + 1 - self.n :]  # [B, n-1]: the n-gram's first n-1 tokens
        windows = input_ids.unfold(1, self.n, 1)  # [B, L-n+1, n]
        matches = (windows[..., :-1] == suffix.unsqueeze(1)).all(dim=-1)  # [B, L-n+1]
        banned = torch.where(matches, windows[..., -1].clamp(max=vocab_size), vocab_size)
        return scores.masked_fill(_token_mask(banned, vocab_size), -float("inf"))
