"""Contrastive search — Su et al., "A Contrastive Framework for Neural Text Generation" (arXiv:2202.06417).

At every step, over the top-k candidates v of the processed next-token distribution p:

    v* = argmax_v (1 − α) · p(v) − α · max_j cos(h_v, h_j)

where h_v is the last-layer hidden state of v (placed after the context) and h_j those of every
previous token, prompt included (the degeneration penalty). All k candidates of every row go through
the model in one forward pass as siblings of a token tree (`Session.forward(parents=[-1]*k)`), so the
chosen candidate's cache entry and next-token logits are already there: `accept_rows` keeps it and
drops the others without copying (as in transformers' remote-code implementation, one forward per step).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

DEFRAG_EVERY = 16  # close the k−1 holes per step left by accept_rows this often


def processed_logits(sampler, history: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """[B, V] processed logits: penalties and masks (and the warpers when temperature > 0); −inf = removed."""
    if sampler.greedy:
        for processor in sampler.logits_processors:
            logits = processor(history, logits)
        return logits.float()
    return sampler.process(history, logits).float()


def degeneration_penalty(h: torch.Tensor, context: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """max_j cos(h_v, h_j): h [B, k, d] candidates, context [B, L, d], valid [B, L] bool → [B, k]."""
    cos = torch.nn.functional.normalize(h, dim=-1) @ torch.nn.functional.normalize(context, dim=-1).transpose(1, 2)
    return cos.masked_fill(~valid[:, None, :], float("-inf")).max(dim=-1).values


def contrastive_choice(p: torch.Tensor, penalty: torch.Tensor, alpha: float,
                       removed: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the best candidate per row: argmax (1 − α)·p − α·penalty over [B, k] → [B]; a candidate
    the processors removed (`removed` [B, k]: a grammar mask, top-p) is never chosen."""
    score = (1 - alpha) * p - alpha * penalty
    return (score if removed is None else score.masked_fill(removed, float("-inf"))).argmax(dim=-1)


def contrastive_search(ctx, alpha: float, k: int) -> Iterator[list[list[int]]]:
    """Yield one token per row per step (the engine stops the rows)."""
    session = ctx.session()
    ids, mask = ctx.padded_prompts
    logits, hidden = session.forward(ids, pad_mask=mask, hidden=True)
    context = hidden[-1].float()  # [B, L, d]
    valid = torch.ones(ids.shape, dtype=torch.bool) if mask is None else mask.bool()
    logits, rows = logits[:, -1], torch.arange(ctx.batch_size)
    k = min(k, logits.shape[-1])
    for step in range(1, 1 << 30):
        history = ctx.history() if ctx.sampler.needs_history else None
        processed = processed_logits(ctx.sampler, history, logits)  # [B, V]
        top_p, top_ids = processed.softmax(dim=-1).topk(k)  # [B, k]
        removed = torch.isneginf(processed.gather(1, top_ids))
        cand_logits, cand_hidden = session.forward(top_ids, parents=[-1] * k, hidden=True)
        h = cand_hidden[-1].float()  # [B, k, d]
        choice = contrastive_choice(top_p, degeneration_penalty(h, context, valid.to(h.device)), alpha, removed)
        session.accept_rows([[c] for c in choice.tolist()])
        yield [[t] for t in top_ids[rows, choice].tolist()]
        context = torch.cat([context, h[rows, choice][:, None]], dim=1)
        valid = torch.cat([valid, torch.ones(ctx.batch_size, 1, dtype=torch.bool)], dim=1)
        logits = cand_logits[rows, choice]
        if step % DEFRAG_EVERY == 0 or session.length + k > ctx.lm.max_length:
            with torch.inference_mode():  # the native cache is an inference tensor
                session.defragment()
