"""Logits processors and the sampler built from them: batched, one fixed signature
`processor(input_ids [B, L], scores [B, V]) -> scores [B, V]`, no per-step introspection.

Penalties live in `history`, warpers in `warpers`, parameter checking in `params`, and the pipeline
in `sampler`; each module cites its papers.
"""

from decodelab.processors.bregman import BregmanTopK
from decodelab.processors.history import NoRepeatNGram, PresenceFrequencyPenalty, RepetitionPenalty
from decodelab.processors.params import SAMPLING_DEFAULTS, SamplingParams, check_sampling_params
from decodelab.processors.sampler import (
    Processor,
    Sampler,
    build_logits_processors,
    build_warpers,
)
from decodelab.processors.warpers import EpsilonCutoff, EtaCutoff, MinP, Temperature, TopK, TopP, Typical

__all__ = [
    "SAMPLING_DEFAULTS",
    "BregmanTopK",
    "EpsilonCutoff",
    "EtaCutoff",
    "MinP",
    "NoRepeatNGram",
    "PresenceFrequencyPenalty",
    "Processor",
    "RepetitionPenalty",
    "Sampler",
    "SamplingParams",
    "Temperature",
    "TopK",
    "TopP",
    "Typical",
    "build_logits_processors",
    "build_warpers",
    "check_sampling_params",
]
