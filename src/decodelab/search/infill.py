"""Self-infilling code generation — Zheng et al., "Self-Infilling Code Generation" (ICML 2024,
arXiv:2311.17972). Needs a fill-in-the-middle model: one trained on `<fim_prefix> P <fim_suffix> S
<fim_middle> M` (prefix-suffix-middle, as `builtin:pyco` was: src/decodelab/training/train.py).

1. Prefix mode: decode left to right. At a step where the model is unsure — max_v p(v) < τ under the
   raw model (τ = `infill_threshold`, 0.25) — interrupt (once, and only before any suffix exists).
2. Suffix: force `<fim_suffix>` and a suffix prompt (a new line at the current indentation, then
   `suffix_prompt`, default "return"), and generate the suffix to the end of the function (the first
   line back at column 0), EOS, or its budget.
3. Middle: force `<fim_middle>` and generate the middle until it reaches the suffix's first line or
   the function's end (our stop rules: the model was trained without an end-of-middle token), EOS, or
   the length left.
4. Looping (`max_iters`, default 1): regenerate the suffix left to right from prompt + prefix + middle,
   then re-infill the middle for that suffix; if the new middle is degenerate (empty, or it never
   reached the suffix) the previous round is kept and the loop stops.

The output is prefix + middle + suffix. Every phase decodes with the request's sampler (greedy at
temperature 0). Without an interruption the output is plain left-to-right decoding. One prompt at a
time; grammar constraints are refused (the output is not produced left to right).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ..errors import ModelError

FIM = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")


def fim_reason(lm) -> str | None:
    """Why `lm` cannot self-infill (its tokenizer lacks the FIM tokens), or None."""
    ids = lm.tokenizer.convert_tokens_to_ids(list(FIM))
    unk = lm.tokenizer.unk_token_id
    if any(i is None or i == unk or not 0 <= i < lm.vocab_size for i in ids):
        return f"self_infill needs a fill-in-the-middle model: {lm.name}'s tokenizer has no {', '.join(FIM)}"
    return None


def fim_tokens(lm) -> tuple[int, int, int]:
    """The ids of <fim_prefix>, <fim_suffix>, <fim_middle>; ModelError if the tokenizer lacks them."""
    reason = fim_reason(lm)
    if reason:
        raise ModelError(reason)
    return tuple(lm.tokenizer.convert_tokens_to_ids(list(FIM)))


def psm(lm, prefix: list[int], suffix: list[int]) -> list[int]:
    """`<fim_prefix> prefix <fim_suffix> suffix <fim_middle>`: what the model infills after."""
    fp, fs, fm = fim_tokens(lm)
    return [fp, *prefix, fs, *suffix, fm]


def decode(ctx, context: list[int], budget: int, stop: Callable[[list[int]], int | None],
           on_step: Callable[[torch.Tensor], bool] | None = None) -> tuple[list[int], bool]:
    """Decode after `context` with the request's sampler until `stop(tokens)` returns how many tokens to
    keep, EOS (kept), `budget` tokens, or `on_step(raw probs [V])` says interrupt (before sampling).
    Returns (tokens, interrupted)."""
    session = ctx.lm.session(1, stats=ctx.stats)
    logits = session.forward(torch.tensor([context]), last_only=True)[:, -1]
    out: list[int] = []
    while len(out) < budget:
        if on_step is not None and on_step(logits[0].float().softmax(-1)):
            return out, True
        history = torch.tensor([context + out]) if ctx.sampler.needs_history else None
        token = int(ctx.sampler.sample(ctx.sampler.probs(history, logits), ctx.generator))
        out.append(token)
        keep = stop(out)
        if keep is not None:
            return out[:keep], False
        if token in ctx.lm.eos_token_ids:
            break
        logits = session.forward(torch.tensor([[token]]))[:, -1]
    return out, False


def _function_end(lm, line_start: bool = False) -> Callable[[list[int]], int | None]:
    """stop(): keep the tokens before the one that starts a non-blank line at column 0 (the function's
    end); `line_start`: the text begins at column 0 (its context ended with a newline)."""
    def stop(tokens: list[int]) -> int | None:
        lines = lm.decode(tokens).split("\n")
        return len(tokens) - 1 if (len(lines) > 1 or line_start) and lines[-1][:1].strip() else None
    return stop


def _reaches(lm, line: str) -> Callable[[list[int]], int | None]:
    """stop(): once the text holds `line`, keep the longest token prefix that ends before its line starts."""
    def stop(tokens: list[int]) -> int | None:
        text = lm.decode(tokens)
        at = text.find(line)
        if at < 0:
            return None
        cut = text.rfind("\n", 0, at)
        cut = max(cut, 0)
        return max((i for i in range(len(tokens) + 1) if len(lm.decode(tokens[:i])) <= cut), default=0)
    return stop


def _indent(text: str) -> str:
    last = next((ln for ln in reversed(text.split("\n")) if ln.strip()), "")
    return last[: len(last) - len(last.lstrip())] or "    "


def infill_middle(ctx, prefix: list[int], suffix: list[int], budget: int) -> tuple[list[int], bool]:
    """The middle for (prefix, suffix); True when it reached the suffix (or ended with EOS)."""
    first = next((ln.strip() for ln in ctx.lm.decode(suffix).split("\n") if ln.strip()), "")
    reached = []

    def stop(tokens):
        keep = _reaches(ctx.lm, first)(tokens) if first else None
        if keep is not None:
            reached.append(True)
            return keep
        return _function_end(ctx.lm)(tokens)  # past the function's end: the middle overran the suffix
    middle, _ = decode(ctx, psm(ctx.lm, prefix, suffix), budget, stop)
    ended = bool(middle) and middle[-1] in ctx.lm.eos_token_ids
    return [t for t in middle if t not in ctx.lm.eos_token_ids], bool(reached) or ended


def self_infill_parts(ctx, tau: float, suffix_prompt: str, max_iters: int) -> tuple[list[int], list[int], list[int]]:
    """(prefix, middle, suffix) new tokens for ctx's one prompt; middle and suffix empty without interruption."""
    lm, prompt, budget = ctx.lm, ctx.prompts[0], ctx.remaining(0)
    fim_tokens(lm)
    prefix, interrupted = decode(ctx, prompt, budget, lambda t: None, lambda p: float(p.max()) < tau)
    if not interrupted:
        return prefix, [], []
    head = prompt + prefix
    forced = lm.encode("\n" + _indent(lm.decode(head)) + suffix_prompt)
    rest = budget - len(prefix) - len(forced)
    if rest <= 1:
        return prefix, [], []
    tail, _ = decode(ctx, psm(lm, head, [])[:-1] + forced, rest - 1, _function_end(lm))
    suffix = forced + tail
    middle, _ = infill_middle(ctx, head, suffix, budget - len(prefix) - len(suffix))
    for _ in range(max_iters):
        room = budget - len(prefix) - len(middle)
        new_suffix, _ = decode(ctx, head + middle, room, _function_end(lm, lm.decode(head + middle).endswith("\n")))
        new_middle, ok = infill_middle(ctx, head, new_suffix, budget - len(prefix) - len(new_suffix))
        if not new_suffix or not new_middle or not ok:
            break  # degenerate: keep the previous round
        middle, suffix = new_middle, new_suffix
    return prefix, middle, suffix


def self_infill(ctx, tau: float, suffix_prompt: str, max_iters: int) -> Iterator[list[list[int]]]:
    prefix, middle, suffix = self_infill_parts(ctx, tau, suffix_prompt, max_iters)
    yield [prefix + middle + suffix]
