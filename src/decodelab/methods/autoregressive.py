"""Plain autoregressive decoding: `greedy` (argmax) and `sample` (ancestral sampling).

Batched with left padding. These are the references every lossless method is tested against.
"""

from __future__ import annotations

from collections.abc import Iterator

from .registry import register


def prefill(ctx, session) -> "torch.Tensor":  # noqa: F821
    """Run every prompt through `session`; return the last position's logits [B, V]."""
    ids, mask = ctx.padded_prompts
    return session.forward(ids, pad_mask=mask, last_only=True)[:, -1]


def sample_rows(ctx, probs: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
    """[B, V] → [B] tokens, each row drawn with its own generator (argmax when greedy)."""
    if ctx.generators is None or len(ctx.generators) == 1:
        return ctx.sampler.sample(probs, ctx.generator)
    import torch

    return torch.cat([ctx.sampler.sample(probs[b : b + 1], g) for b, g in enumerate(ctx.generators)])


def autoregressive(ctx) -> Iterator[list[list[int]]]:
    session = ctx.session()
    logits = prefill(ctx, session)  # [B, V]
    while True:
        history = ctx.history() if ctx.sampler.needs_history else None
        token = sample_rows(ctx, ctx.sampler.probs(history, logits))  # [B]
        yield [[t] for t in token.tolist()]
        logits = session.forward(token[:, None])[:, -1]


@register("greedy", description="Greedy decoding: the argmax token at every step.", lossless=True,
          batched=True, temperature=0.0)
def greedy(ctx) -> Iterator[list[list[int]]]:
    return autoregressive(ctx)


@register("sample", description="Ancestral sampling from the processed next-token distribution "
          "(temperature, top-k/p, min-p, typical, ε/η, penalties).", lossless=True, batched=True,
          temperature=1.0)
def sample(ctx) -> Iterator[list[list[int]]]:
    return autoregressive(ctx)
