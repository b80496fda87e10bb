"""The sampler: turns a model's next-token logits into the distribution every decoding method draws from.

Logits processors (penalties) run first, then — unless temperature is 0 (greedy) — the warpers in
Hugging Face's order. `Sampler.probs` is the target distribution that ancestral sampling draws from
and that speculative verification must preserve, at every draft position with that position's own
history (Leviathan et al., "Fast Inference from Transformers via Speculative Decoding", arXiv:2211.17192).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from decodelab.processors.bregman import BregmanTopK
from decodelab.processors.distortion import inf_limit, log_kept_mass
from decodelab.processors.history import NoRepeatNGram, PresenceFrequencyPenalty, RepetitionPenalty
from decodelab.processors.params import SAMPLING_DEFAULTS
from decodelab.processors.warpers import EpsilonCutoff, EtaCutoff, MinP, Temperature, TopK, TopP, Typical

Processor = Callable[[torch.LongTensor, torch.FloatTensor], torch.FloatTensor]


def build_logits_processors(params: dict, prompt_len: int) -> list[Processor]:
    """The penalties that `params` switch on, in application order."""
    p = {**SAMPLING_DEFAULTS, **params}
    chain: list[Processor] = []
    if p["repetition_penalty"] != 1.0:
        chain.append(RepetitionPenalty(p["repetition_penalty"]))
    if p["presence_penalty"] != 0 or p["frequency_penalty"] != 0:
        chain.append(PresenceFrequencyPenalty(p["presence_penalty"], p["frequency_penalty"], prompt_len))
    if p["no_repeat_ngram_size"] > 0:
        chain.append(NoRepeatNGram(p["no_repeat_ngram_size"]))
    return chain


def build_warpers(params: dict) -> list[Processor]:
    """The warpers that `params` switch on, in Hugging Face's order (none for temperature 0), then
    Bregman top-k (Noarov et al., arXiv:2505.19371)."""
    p = {**SAMPLING_DEFAULTS, **params}
    if p["temperature"] == 0:
        return []
    switched = [
        (p["temperature"] != 1, Temperature, "temperature"),
        (p["top_k"] > 0, TopK, "top_k"),
        (p["top_p"] < 1, TopP, "top_p"),
        (p["min_p"] > 0, MinP, "min_p"),
        (p["typical_p"] < 1, Typical, "typical_p"),
        (p["epsilon_cutoff"] > 0, EpsilonCutoff, "epsilon_cutoff"),
        (p["eta_cutoff"] > 0, EtaCutoff, "eta_cutoff"),
    ]
    bregman = [BregmanTopK(p["bregman_alpha"], p["bregman_lambda"])] if p["bregman_lambda"] > 0 else []
    return [cls(p[name]) for on, cls, name in switched if on] + bregman  # last: it rescales for α ≠ 1


def _apply(chain: list[Processor], input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    for processor in chain:
        logits = processor(input_ids, logits)
    return logits


def _softmax(scores: torch.FloatTensor) -> torch.FloatTensor:
    """softmax, with +inf scores (a penalty or temperature that overflowed) taken to their limit:
    the +inf tokens share the mass equally, instead of every probability turning NaN."""
    return inf_limit(scores).float().softmax(dim=-1)


class Sampler:
    """Processors for one request; `prompt_len` marks where generated tokens start in `input_ids`.

    `constraint` (a `constraints.GrammarMask`, one grammar state per row) and `healing` (a
    `constraints.HealingMask`) run last among the logits processors, so they mask greedy decoding too;
    `self.constraint` is None when unconstrained.
    """

    def __init__(self, params: dict, prompt_len: int, constraint: Processor | None = None,
                 healing: Processor | None = None):
        self.temperature: float = {**SAMPLING_DEFAULTS, **params}["temperature"]
        self.greedy: bool = self.temperature == 0
        self.logits_processors = build_logits_processors(params, prompt_len)
        self.constraint = constraint
        self.healing = healing  # token healing's first-token mask (constraints.HealingMask), or None
        self.logits_processors += [p for p in (constraint, healing) if p is not None]
        self.warpers = build_warpers(params)

    def for_row(self, b: int, prompt_len: int) -> "Sampler":
        """This sampler for row b's own history alone ([1, L], an unpadded prompt of `prompt_len`
        tokens): per-row processors (grammar, healing) become views of row b, the rest are shared."""
        views = {id(p): p.for_row(b, prompt_len) for p in self.logits_processors if hasattr(p, "for_row")}
        view = copy.copy(self)
        view.logits_processors = [views.get(id(p), p) for p in self.logits_processors]
        view.constraint = views.get(id(self.constraint))
        view.healing = views.get(id(self.healing))
        return view

    def without_constraint(self) -> "Sampler":
        """This sampler without the grammar mask (penalties, healing and warpers kept): p as a method
        that tests the grammar itself (awrs) needs it."""
        view = copy.copy(self)
        view.logits_processors = [p for p in self.logits_processors if p is not self.constraint]
        view.constraint = None
        return view

    @property
    def needs_history(self) -> bool:
        return any(p.needs_history for p in self.logits_processors + self.warpers)

    def process(self, input_ids: torch.LongTensor, logits: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids: [B, L] (prompt included); logits: [B, V] → [B, V], -inf for removed tokens
        return _apply(self.logits_processors + self.warpers, input_ids, logits)

    def probs(self, input_ids: torch.LongTensor, logits: torch.FloatTensor) -> torch.FloatTensor:
        # input_ids: [B, L]; logits: [B, V] → [B, V] float32 distribution (one-hot when greedy)
        return self._probs(input_ids, logits, log_z=False)[0]

    def probs_and_log_z(self, input_ids: torch.LongTensor, logits: torch.FloatTensor):
        """`probs`, and log Z_t [B] — the log of the mass the warpers kept (processors/distortion.py);
        None when greedy."""
        return self._probs(input_ids, logits, log_z=True)

    def _probs(self, input_ids, logits, log_z: bool):
        return self.probs_of_processed(_apply(self.logits_processors, input_ids, logits), log_z, input_ids)

    @property
    def grammar_only_history(self) -> bool:
        """The grammar mask is the only processor that reads the history (no penalties, no healing), so
        a caller that masks the logits itself may pass them to `probs_of_processed`."""
        return (self.constraint is not None and self.logits_processors == [self.constraint]
                and not any(w.needs_history for w in self.warpers))

    def probs_of_processed(self, processed: torch.FloatTensor, log_z: bool = True, input_ids=None):
        """`probs_and_log_z` from logits the logits processors have already processed (the warpers read
        no history: `input_ids` only passes through)."""
        if not self.greedy:
            warped = _apply(self.warpers, input_ids, processed)
            return _softmax(warped), log_kept_mass(processed, warped, self.temperature) if log_z else None
        best = processed.argmax(dim=-1, keepdim=True)  # [B, 1]
        return torch.zeros_like(processed, dtype=torch.float32).scatter_(-1, best, 1.0), None

    def sample(self, probs: torch.FloatTensor, generator: torch.Generator | None = None) -> torch.LongTensor:
        # probs: [B, V] → [B] token ids
        if self.greedy:
            return probs.argmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
