"""Sampling parameters: their defaults ("off" values) and their validation.

Names follow Hugging Face `GenerationConfig` and vLLM `SamplingParams`; every default switches its
processor off, so `check_sampling_params({})` describes plain ancestral sampling at temperature 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from numbers import Real

from ..errors import UserError

SAMPLING_DEFAULTS: dict[str, float | int] = {
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "no_repeat_ngram_size": 0,
    "bregman_alpha": 1.0,
    "bregman_lambda": 0.0,
}

GREEDY_EPS = 1e-5  # 0 < temperature < this is greedy, as in vLLM's SamplingParams (_SAMPLING_EPS)

# name → (allowed range as written in error messages, predicate on the coerced value)
_RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "temperature": ("a number >= 0 (0 means greedy)", lambda v: v >= 0),
    "top_k": ("an integer >= 0 (0 means off)", lambda v: v >= 0),
    "top_p": ("a number in (0, 1]", lambda v: 0 < v <= 1),
    "min_p": ("a number in [0, 1]", lambda v: 0 <= v <= 1),
    "typical_p": ("a number in (0, 1]", lambda v: 0 < v <= 1),
    "epsilon_cutoff": ("a number in [0, 1)", lambda v: 0 <= v < 1),
    "eta_cutoff": ("a number in [0, 1)", lambda v: 0 <= v < 1),
    "repetition_penalty": ("a number > 0", lambda v: v > 0),
    "presence_penalty": ("a number in [-2, 2]", lambda v: -2 <= v <= 2),
    "frequency_penalty": ("a number in [-2, 2]", lambda v: -2 <= v <= 2),
    "no_repeat_ngram_size": ("an integer >= 0 (0 means off)", lambda v: v >= 0),
    "bregman_alpha": ("a number > 0 (1 is the KL divergence: adaptive top-k)", lambda v: v > 0),
    "bregman_lambda": ("a number >= 0 (0 means off)", lambda v: v >= 0),
}


def _coerce(name: str, value: object) -> float | int | None:
    """The value as the default's type, or None when it is not a finite number of that kind."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        return None
    if isinstance(SAMPLING_DEFAULTS[name], int):
        return int(value) if float(value).is_integer() else None
    return float(value)


def check_sampling_params(params: dict) -> dict[str, float | int]:
    """Every sampling parameter, validated and filled with its default; other keys are left out.

    Raises `ValueError` naming the parameter and its allowed range for a bad value.
    """
    checked = dict(SAMPLING_DEFAULTS)
    for name, (allowed, ok) in _RANGES.items():
        if name not in params:
            continue
        value = _coerce(name, params[name])
        if value is None or not ok(value):
            raise UserError(f"{name} must be {allowed}, got {params[name]!r}")
        checked[name] = value
    if checked["temperature"] < GREEDY_EPS:  # logits / 1e-300 overflow to inf → NaN probabilities
        checked["temperature"] = 0.0
    return checked


@dataclass(frozen=True)
class SamplingParams:
    """The sampling parameters of one request, typed and validated once at the boundary.

    Names and meanings follow Hugging Face `GenerationConfig` and vLLM `SamplingParams`; every default
    switches its processor off. The API, the CLI, the bench and the server all build this one object
    (`MethodInfo.check_params` does for them); a bad value is one `UserError` naming the parameter and
    its allowed range. `temperature=0` (or below 1e-5) means greedy.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    bregman_alpha: float = 1.0  # Bregman adaptive top-k (processors/bregman.py), on when bregman_lambda > 0
    bregman_lambda: float = 0.0

    def __post_init__(self):
        checked = check_sampling_params(asdict(self))
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, params: Mapping) -> "SamplingParams":
        """From a mapping of sampling parameters; an unknown name is a UserError listing the known ones."""
        unknown = sorted(set(params) - set(SAMPLING_DEFAULTS))
        if unknown:
            raise UserError(f"unknown sampling parameter {unknown[0]!r}; allowed: {', '.join(SAMPLING_DEFAULTS)}")
        return cls(**params)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


assert [f.name for f in fields(SamplingParams)] == list(SAMPLING_DEFAULTS)  # one list of names
