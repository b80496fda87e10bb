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

Called on a batch ([B, L] histories) they recompute from the ids, as transformers' processors do. A
row's own view (`for_row`, what each row of a batch and every speculative verifier uses) keeps a
`TokenHistory` instead: the counts and n-grams of the row's history, advanced over new tokens and
rolled back over removed ones when the history it is called with moves (`seek`: accepted tokens
advance it, a rejected draft branch is rolled back), and copied by `fork`. A verifier walking a
draft tree therefore updates the state by the few tokens between two nodes, not the whole history.
"""

from __future__ import annotations

import copy

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


class TokenHistory:
    """One row's history as the penalties read it: occurrence counts over the whole history and over
    its generated part (after `prompt_len`), and (with `ngram` = n) the tokens that followed each
    (n − 1)-gram. `seek(ids)` moves it to the history `ids`: it keeps the longest common prefix,
    rolls back the rest and advances over the new tokens. `fork()` copies it."""

    def __init__(self, vocab_size: int, prompt_len: int, ngram: int = 0):
        self.vocab_size, self.prompt_len, self.n = vocab_size, prompt_len, ngram
        self.tokens: list[int] = []
        self.counts = torch.zeros(vocab_size + 1)  # the whole history; ids ≥ V land in the last slot
        self.generated = torch.zeros(vocab_size + 1)  # after prompt_len only
        self.follow: dict[tuple[int, ...], dict[int, int]] = {}  # (n−1)-gram → next token → occurrences

    def fork(self) -> "TokenHistory":
        twin = TokenHistory(self.vocab_size, self.prompt_len, self.n)
        twin.tokens, twin.counts, twin.generated = list(self.tokens), self.counts.clone(), self.generated.clone()
        twin.follow = {gram: dict(nxt) for gram, nxt in self.follow.items()}
        return twin

    def seek(self, ids: list[int]) -> None:
        mine, k = self.tokens, len(self.tokens)
        if len(ids) < k or ids[:k] != mine:  # some tokens went away: find where the histories part
            k = next((i for i, (a, b) in enumerate(zip(mine, ids)) if a != b), min(len(mine), len(ids)))
            self._update(k, mine[k:], -1)
            del mine[k:]
        if len(ids) > k:
            mine.extend(ids[k:])
            self._update(k, mine[k:], +1)

    def _update(self, start: int, tokens: list[int], sign: int) -> None:
        """Add (sign +1) or remove (−1) the occurrences of `tokens`, which sit at `start` onwards."""
        if not tokens:
            return
        ids = torch.tensor(tokens).clamp(max=self.vocab_size)
        self.counts.index_add_(0, ids, torch.full((len(tokens),), float(sign)))
        cut = max(self.prompt_len - start, 0)
        if cut < len(tokens):
            self.generated.index_add_(0, ids[cut:], torch.full((len(tokens) - cut,), float(sign)))
        if self.n < 1:
            return
        history = self.tokens  # already holds `tokens` (advance) or still holds them (roll back)
        for i in range(max(start, self.n - 1), start + len(tokens)):
            gram, nxt = tuple(history[i + 1 - self.n : i]), history[i]
            follow = self.follow.setdefault(gram, {})
            follow[nxt] = follow.get(nxt, 0) + sign
            if follow[nxt] == 0:
                del follow[nxt]
                if not follow:
                    del self.follow[gram]

    def seen(self) -> torch.Tensor:
        return self.counts[: self.vocab_size] > 0  # [V]

    def banned(self) -> list[int]:
        """Tokens that would complete an n-gram already in the history."""
        if len(self.tokens) < self.n:
            return []
        return [t for t in self.follow.get(tuple(self.tokens[len(self.tokens) + 1 - self.n :]), ()) if t < self.vocab_size]


class _HistoryProcessor:
    """A processor that reads the history; its row views (`for_row`) keep a TokenHistory between calls."""

    needs_history = True
    history: TokenHistory | None = None  # a row view's state
    row_view = False
    prompt_len = 0  # where generated tokens start (read by the penalties that count only those)
    ngram = 0  # n of the n-grams the state tracks (no-repeat n-gram only)

    def for_row(self, b: int, prompt_len: int):
        """A view for row b's own unpadded history ([1, L], a prompt of `prompt_len` tokens)."""
        view = copy.copy(self)
        view.row_view, view.history, view.prompt_len = True, None, prompt_len
        return view

    def state(self, input_ids: torch.Tensor, scores: torch.Tensor) -> TokenHistory | None:
        """A row view's TokenHistory moved to this call's history (made on the first call); None when
        called on a batch, which recomputes from the ids."""
        if not self.row_view or input_ids.shape[0] != 1:
            return None
        if self.history is None or self.history.vocab_size != scores.shape[-1]:
            self.history = TokenHistory(scores.shape[-1], self.prompt_len, self.ngram)
        self.history.seek(input_ids[0].tolist())
        return self.history


class RepetitionPenalty(_HistoryProcessor):
    """Divide the positive logits of seen tokens by `penalty`, multiply the negative ones."""

    def __init__(self, penalty: float):
        self.penalty = penalty

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids: [B, L]; scores: [B, V]
        state = self.state(input_ids, scores)
        seen = state.seen()[None] if state is not None else _token_mask(input_ids, scores.shape[-1])
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen, penalised, scores)


class PresenceFrequencyPenalty(_HistoryProcessor):
    """Subtract `frequency * count + presence * (count > 0)`, counting tokens after `prompt_len` (a row
    view counts after its own row's prompt)."""

    def __init__(self, presence: float, frequency: float, prompt_len: int):
        self.presence, self.frequency, self.prompt_len = presence, frequency, prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids: [B, L]; scores: [B, V]
        if (state := self.state(input_ids, scores)) is not None:
            counts = state.generated[None, : scores.shape[-1]].to(scores.dtype)
        else:
            counts = _token_counts(input_ids[:, self.prompt_len :], scores.shape[-1], scores.dtype)
        scores = scores - self.frequency * counts
        return scores - self.presence * (counts > 0).to(scores.dtype)


class NoRepeatNGram(_HistoryProcessor):
    """Ban every token that would complete an n-gram already present in the history."""

    def __init__(self, ngram_size: int):
        self.n = self.ngram = ngram_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids: [B, L]; scores: [B, V]
        length, vocab_size = input_ids.shape[-1], scores.shape[-1]
        if length < self.n:
            return scores
        if (state := self.state(input_ids, scores)) is not None:
            banned = state.banned()
            return scores.index_fill(-1, torch.tensor(banned, dtype=torch.long), -float("inf")) if banned else scores
        suffix = input_ids[:, length + 1 - self.n :]  # [B, n-1]: the n-gram's first n-1 tokens
        windows = input_ids.unfold(1, self.n, 1)  # [B, L-n+1, n]
        matches = (windows[..., :-1] == suffix.unsqueeze(1)).all(dim=-1)  # [B, L-n+1]
        banned = torch.where(matches, windows[..., -1].clamp(max=vocab_size), vocab_size)
        return scores.masked_fill(_token_mask(banned, vocab_size), -float("inf"))
