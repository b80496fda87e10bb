"""The methods registry: `@register(name, ...)` on a decoding method; CLI, server and bench read it.

A method is a generator function `run(ctx) -> Iterator[list[list[int]]]`. Each item it yields is the
list of new tokens per batch row: the first item is the token prefill emits, every later item one
decoding step (≥ 1 token). The engine owns everything else — stopping at EOS / stop strings /
`max_new_tokens` / context length, cutting tokens past the stop, text, events and timing — so a
method never repeats output bookkeeping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..processors import SAMPLING_DEFAULTS, SamplingParams

# the sampling parameters that truncate or reshape the distribution after the temperature, and those
# that read the history: the groups a method that does not apply them declares with `ignores=`
WARPER_PARAMS = ("top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "bregman_alpha",
                 "bregman_lambda")
PENALTY_PARAMS = ("repetition_penalty", "presence_penalty", "frequency_penalty", "no_repeat_ngram_size")


@dataclass(frozen=True)
class Param:
    """A method parameter: default plus the allowed range (inclusive) or choices."""

    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    help: str = ""

    def check(self, name: str, value: Any) -> Any:
        if self.choices is not None:
            if value not in self.choices:
                raise UserError(f"{name} must be one of {list(self.choices)}, got {value!r}")
            return value
        if isinstance(self.default, str):
            if not isinstance(value, str):
                raise UserError(f"{name} must be a string, got {value!r}")
            return value
        return self._check_number(name, value)

    def _check_number(self, name: str, value: Any) -> Any:
        rng = f"[{self.low}, {self.high if self.high is not None else '∞'}]"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise UserError(f"{name} must be a number in {rng}, got {value!r}")
        if isinstance(self.default, int) and not isinstance(self.default, bool):
            if value != int(value):
                raise UserError(f"{name} must be an integer in {rng}, got {value!r}")
            value = int(value)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise UserError(f"{name} must be in {rng}, got {value!r}")
        return value


@dataclass(frozen=True)
class MethodInfo:
    name: str
    description: str
    lossless: bool
    paper: str | None
    specs: dict[str, Param]
    run: Callable[..., Iterator[list[list[int]]]] = field(repr=False)
    batched: bool = False
    temperature: float = 0.0  # default temperature
    kind: str = "causal"  # the model kind it decodes: "causal", "diffusion" or "image" (LM.kind)
    continuous: bool = False  # rows may join a running batch between steps (decodelab.Engine)
    family: str = "decoding"  # "search" / "meta" / "layer-contrast" (docs/SEARCH.md), else "decoding"
    # ctx → a per-row proposer factory for the one propose → verify loop (methods/loop.py): the methods
    # whose rows can share one batch with rows of other such methods (Engine(mixed=True))
    proposers: Callable[..., Callable] | None = field(default=None, repr=False)
    # sampling parameters the method does not apply, and why: a value other than the default is refused,
    # never silently ignored
    ignores: tuple[str, ...] = ()
    ignores_why: str = ""
    # a check across the method's checked parameters (one range each is the Params' own): raises UserError
    check: Callable[[dict], None] | None = field(default=None, repr=False)
    # the request options it cannot honour ("constraint", "token_healing") → why: refused, never ignored
    refuses: dict[str, str] = field(default_factory=dict)

    def refuse(self, **given: bool) -> None:
        """One line naming the first option given that this method refuses, and why."""
        for option, on in given.items():
            if on and option in self.refuses:
                raise UserError(f"{self.name} does not support {option} ({self.refuses[option]})")

    @property
    def params(self) -> dict[str, Any]:
        """Name → default: the method's own parameters, then the sampling parameters (an image
        method's specs already hold its own: cfg_scale, temperature, top_k — image/methods.py)."""
        if self.kind == "image":
            return {k: p.default for k, p in self.specs.items()}
        return {**{k: p.default for k, p in self.specs.items()},
                **SAMPLING_DEFAULTS, "temperature": self.temperature}

    def sampling(self, params: dict[str, Any]) -> SamplingParams:
        """The request's SamplingParams (the method's default temperature unless given)."""
        given = {k: v for k, v in params.items() if k in SAMPLING_DEFAULTS}
        sampling = SamplingParams.from_dict({"temperature": self.temperature, **given})
        if self.name == "greedy" and not sampling.greedy:
            raise UserError(f"method 'greedy' is argmax decoding and takes no temperature (got "
                            f"{params['temperature']!r}); use method 'sample' for ancestral sampling, or a "
                            "lossless method (speculative, pld, …) with temperature > 0")
        return sampling

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Fill defaults and validate: the SamplingParams and the method's own parameters, as one dict.

        Unknown names and out-of-range values raise UserError (a ValueError) naming them."""
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise UserError(f"unknown parameter {unknown[0]!r} for method {self.name!r}; "
                            f"allowed: {', '.join(sorted(self.params))}")
        if self.kind == "image":
            return {name: spec.check(name, params.get(name, spec.default)) for name, spec in self.specs.items()}
        defaults = self.params
        for name in self.ignores:
            if name in params and params[name] != defaults[name]:
                raise UserError(f"method {self.name!r} does not use {name} ({self.ignores_why}); leave it out")
        merged = self.sampling(params).to_dict()
        for name, spec in self.specs.items():
            merged[name] = spec.check(name, params.get(name, spec.default))
        if self.check is not None:
            self.check(merged)
        return merged


_REGISTRY: dict[str, MethodInfo] = {}


def register(name: str, *, description: str, lossless: bool, paper: str | None = None,
             params: dict[str, Param] | None = None, batched: bool = False, temperature: float = 0.0,
             kind: str = "causal", family: str = "decoding", continuous: bool = False, proposers=None,
             ignores: tuple[str, ...] = (), ignores_why: str = "", check=None,
             refuses: dict[str, str] | None = None):
    """`proposers=True`: the decorated function maps a context to a per-row proposer factory, and the
    method runs the one propose → verify loop over it; a callable: that builder, for a method that runs
    its own loop (greedy, sample) but whose rows may also join a mixed batch. `ignores`: the sampling
    parameters the method does not apply (`ignores_why` says why); other values than their defaults
    are a one-line error. `check(params)`: a rule across the method's parameters, enforced with the rest.
    `refuses`: request options (`constraint`, `token_healing`) the method cannot honour, each with why."""
    def wrap(fn):
        run, builder = fn, proposers
        if proposers is True:
            from .loop import speculative_loop

            def run(ctx, fn=fn):
                return speculative_loop(ctx, fn(ctx))
            run.__doc__, builder = fn.__doc__, fn
        _REGISTRY[name] = MethodInfo(name, description, lossless, paper, dict(params or {}), run,
                                     batched=batched, temperature=temperature, kind=kind, family=family,
                                     continuous=continuous, proposers=builder, ignores=tuple(ignores),
                                     ignores_why=ignores_why, check=check, refuses=dict(refuses or {}))
        return fn
    return wrap


def methods() -> dict[str, MethodInfo]:
    """All registered methods by name."""
    from . import _load_all  # noqa: F401  (importing registers every method)

    return dict(_REGISTRY)


def get(name: str) -> MethodInfo:
    table = methods()
    if name not in table:
        raise UserError(f"unknown method {name!r}; available: {', '.join(sorted(table))}")
    return table[name]
