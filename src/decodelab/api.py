"""The public Python API: generate, stream, generate_batch, next_token_probs, methods."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .constraints import compile_constraint
from .engine import Event, Generation, run_method
from .methods import get
from .model import LM
from .processors import Sampler, check_sampling_params


def _prompt_ids(lm: LM, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        _check_text(prompt)
        ids = lm.encode(prompt)
    elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        ids = list(prompt)
    else:
        raise ValueError("prompt must be a str or a list of int token ids")
    _check_ids(lm, ids)
    if not ids:
        raise ValueError("prompt is empty: give at least one token")
    if len(ids) >= lm.max_length:
        raise ValueError(f"prompt has {len(ids)} tokens; the model's maximum context is {lm.max_length}")
    return ids


def _check_text(prompt: str) -> None:
    """Text the tokenizer can take: valid Unicode (no lone surrogates, e.g. from invalid UTF-8 argv)."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"prompt is not valid text: character {exc.start} is a lone surrogate "
                         f"({prompt[exc.start]!r}); pass UTF-8 text") from None


def _check_ids(lm: LM, ids: list[int]) -> None:
    """Every id is a row of the model's embedding — also for tokenizer tokens past the model's vocabulary."""
    bad = next((t for t in ids if not 0 <= t < lm.vocab_size), None)
    if bad is None:
        return
    token = lm.tokenizer.convert_ids_to_tokens(bad) if 0 <= bad < len(lm.tokenizer) else None
    named = f"token {token!r} (id {bad})" if token is not None else f"token id {bad}"
    raise ValueError(f"prompt {named} out of range [0, {lm.vocab_size}): not in the model's vocabulary")


def _check_seed(seed) -> None:
    seeds = seed if isinstance(seed, (list, tuple)) else [seed]
    for s in seeds:
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**64):
            raise ValueError(f"seed must be an integer in [0, 2**64) or None, got {s!r}")


def _check_common(max_new_tokens: int, stop) -> list[str]:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer ≥ 1, got {max_new_tokens!r}")
    stop = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not isinstance(s, str) or not s for s in stop):
        raise ValueError("stop must be a non-empty string or a list of non-empty strings")
    return stop


def _run(lm, prompts, method, max_new_tokens, seed, stop, params) -> Iterator[Event]:
    info = get(method)
    if info.kind != getattr(lm, "kind", "causal"):
        from .diffusion.methods import kind_error

        raise ValueError(kind_error(lm, info))
    params = dict(params)
    grammar = compile_constraint(lm, params.pop("constraint", None))  # ValueError before generating
    healing = params.pop("token_healing", False)
    if not isinstance(healing, bool):
        raise ValueError(f"token_healing must be True or False, got {healing!r}")
    if (grammar is not None or healing) and info.kind != "causal":  # never silently unconstrained
        raise ValueError(f"constraint / token_healing are not supported by {info.kind} method {info.name!r}")
    checked = info.check_params(params)
    stop = _check_common(max_new_tokens, stop)
    _check_seed(seed)
    ids = [_prompt_ids(lm, p) for p in prompts]
    if isinstance(seed, (list, tuple)) and len(seed) != len(ids):
        raise ValueError(f"{len(seed)} seeds for {len(ids)} rows: give one seed per row (or one int)")
    per_row_grammar = (grammar is not None or healing) and info.name not in ("greedy", "sample")
    if len(ids) > 1 and (not info.batched or per_row_grammar):
        return _one_by_one(info, lm, ids, checked, max_new_tokens, seed, stop, grammar, healing)
    return run_method(info, lm, ids, checked, max_new_tokens, seed, stop, grammar, healing)


def _one_by_one(info, lm, ids, params, max_new_tokens, seed, stop, grammar=None, healing=False) -> Iterator[Event]:
    for b, prompt in enumerate(ids):
        row_seed = seed[b] if isinstance(seed, (list, tuple)) else None if seed is None else seed + b
        for event in run_method(info, lm, [prompt], params, max_new_tokens, row_seed, stop, grammar, healing):
            event.row = b
            yield event


def stream(lm: LM, prompt: str | list[int], *, method: str = "greedy", max_new_tokens: int = 64,
           seed: int | None = None, stop: str | list[str] | None = None, **params) -> Iterator[Event]:
    """Yield events with each new text piece; the last event carries the final `Generation`."""
    return _run(lm, [prompt], method, max_new_tokens, seed, stop, params)


def generate(lm: LM, prompt: str | list[int], *, method: str = "greedy", max_new_tokens: int = 64,
             seed: int | None = None, stop: str | list[str] | None = None, **params) -> Generation:
    """Generate a continuation of one prompt with any registered method."""
    for event in stream(lm, prompt, method=method, max_new_tokens=max_new_tokens, seed=seed, stop=stop, **params):
        if event.generation is not None:
            return event.generation
    raise RuntimeError("engine ended without a result")  # pragma: no cover


def generate_batch(lm: LM, prompts: list[str | list[int]], *, method: str = "greedy", max_new_tokens: int = 64,
                   n: int = 1, seed: int | list[int] | None = None, stop: str | list[str] | None = None,
                   **params) -> list[Generation]:
    """Generate for several prompts (× n samples each, prompt-major): one batch for every batched method.

    Row i uses seed `seed + i` (or `seed[i]`): a row's output does not depend on the other rows."""
    if not prompts:
        raise ValueError("prompts is empty")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer ≥ 1, got {n!r}")
    prompts = [p for p in prompts for _ in range(n)]
    results: dict[int, Generation] = {}
    for event in _run(lm, list(prompts), method, max_new_tokens, seed, stop, params):
        if event.generation is not None:
            results[event.row] = event.generation
    return [results[b] for b in range(len(prompts))]


@torch.inference_mode()
def next_token_probs(lm: LM, prompt: str | list[int], **params) -> torch.Tensor:
    """[vocab_size] next-token distribution after the processors `params` switch on."""
    checked = check_sampling_params(params)
    unknown = sorted(set(params) - set(checked))
    if unknown:
        raise ValueError(f"unknown sampling parameter {unknown[0]!r}; allowed: {', '.join(sorted(checked))}")
    ids = _prompt_ids(lm, prompt)
    logits = lm.session().forward(ids, last_only=True)[:, -1]
    sampler = Sampler(checked, prompt_len=len(ids))
    return sampler.probs(torch.tensor([ids]), logits)[0]
