"""Checks of what users pass in — prompts, seeds, budgets, stop strings — shared by the API, the engine,
the bench and the server. Each failure is one `UserError` naming the problem."""

from __future__ import annotations

from .errors import UserError
from .model import LM


def prompt_ids(lm: LM, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        check_text(prompt)
        ids = lm.encode(prompt)
    elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        ids = list(prompt)
    else:
        raise UserError("prompt must be a str or a list of int token ids")
    check_ids(lm, ids)
    if not ids:
        raise UserError("prompt is empty: give at least one token")
    if len(ids) >= lm.max_length:
        raise UserError(f"prompt has {len(ids)} tokens; the model's maximum context is {lm.max_length}")
    return ids


def check_text(prompt: str) -> None:
    """Text the tokenizer can take: valid Unicode (no lone surrogates, e.g. from invalid UTF-8 argv)."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(f"prompt is not valid text: character {exc.start} is a lone surrogate "
                         f"({prompt[exc.start]!r}); pass UTF-8 text") from None


def check_ids(lm: LM, ids: list[int]) -> None:
    """Every id is a row of the model's embedding — also for tokenizer tokens past the model's vocabulary."""
    bad = next((t for t in ids if not 0 <= t < lm.vocab_size), None)
    if bad is None:
        return
    token = lm.tokenizer.convert_ids_to_tokens(bad) if 0 <= bad < len(lm.tokenizer) else None
    named = f"token {token!r} (id {bad})" if token is not None else f"token id {bad}"
    raise UserError(f"prompt {named} out of range [0, {lm.vocab_size}): not in the model's vocabulary")


def check_seed(seed) -> None:
    seeds = seed if isinstance(seed, (list, tuple)) else [seed]
    for s in seeds:
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**64):
            raise UserError(f"seed must be an integer in [0, 2**64) or None, got {s!r}")


def check_healing(token_healing) -> bool:
    if not isinstance(token_healing, bool):
        raise UserError(f"token_healing must be True or False, got {token_healing!r}")
    return token_healing


def check_common(max_new_tokens: int, stop) -> list[str]:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be an integer ≥ 1, got {max_new_tokens!r}")
    stop = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not isinstance(s, str) or not s for s in stop):
        raise UserError("stop must be a non-empty string or a list of non-empty strings")
    return stop
