"""Look-back decoding — Xu et al., "Look-back Decoding for Open-Ended Text Generation" (EMNLP 2023,
arXiv:2305.13477).

Repetition shows up as a next-token distribution that comes back: with p_t the model's distribution
at the current step and p_j those of the previous positions (prompt included, the last 128),

    KL_min^t = min_j KL(p_t ‖ p_j).

If KL_min^t > α the step is greedy (the argmax of the processed distribution). Otherwise (the
repetition alarm) the top-k candidates v of the processed distribution go through the model in one
forward pass as siblings of a token tree, each gives p(·|x_<t, v), and

    KL_min^{t+1,v} = min_{j ≤ t} KL(p(·|x_<t, v) ‖ p_j),     v ~ softmax(−KL_min^{t+1,v}),

so the candidate whose continuation drifts furthest from every earlier distribution is most likely;
with temperature 0 the choice is argmin KL_min (its limit). KL is measured on the raw model's
distributions; candidates the processors removed (grammar mask, top-p) are never chosen. The chosen
candidate's cache entry and logits are already computed: `Session.accept_rows` keeps it (as in
`search.contrastive`), so an alarm step costs one forward pass over k positions, a greedy step one over 1.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .contrastive import DEFRAG_EVERY, processed_logits

WINDOW = 128  # previous distributions compared (the paper's look-back window)


def kl_min(log_p: torch.Tensor, history: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """min_j KL(p ‖ h_j): log_p [B, ..., V], history [B, W, V] log-probs, valid [B, W] → [B, ...]."""
    p = log_p.exp()
    self_term = (p * log_p).nan_to_num(0.0).sum(-1, keepdim=True)  # Σ p log p
    flat = p.reshape(p.shape[0], -1, p.shape[-1])  # [B, N, V]
    cross = torch.einsum("bnv,bwv->bnw", flat, history).reshape(*p.shape[:-1], history.shape[1])
    kl = self_term - cross  # [B, ..., W]
    if kl.shape[-1] == 0:  # no earlier distribution (a one-token prompt): nothing to repeat, no alarm
        return kl.new_full(kl.shape[:-1], float("inf"))
    mask = valid.reshape(valid.shape[0], *([1] * (kl.dim() - 2)), valid.shape[1])
    return kl.masked_fill(~mask, float("inf")).min(dim=-1).values


def choose(kl: torch.Tensor, removed: torch.Tensor, generators: list[torch.Generator] | None,
           alarm: torch.Tensor | None = None) -> torch.Tensor:
    """Per row, the candidate index: v ~ softmax(−KL_min) (argmin when `generators` is None); kl, removed
    [B, k] → [B]. Rows without an alarm ([B] bool) take candidate 0 and leave their generator untouched."""
    scores = (-kl).masked_fill(removed, float("-inf"))
    alarm = torch.ones(kl.shape[0], dtype=torch.bool) if alarm is None else alarm
    if generators is None:
        return torch.where(alarm, scores.argmax(dim=-1), 0)
    probs = scores.softmax(dim=-1)
    return torch.tensor([int(torch.multinomial(probs[b], 1, generator=g)) if alarm[b] else 0
                         for b, g in enumerate(generators)])


def _remember(history: torch.Tensor, valid: torch.Tensor, log_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Append p_t [B, V] to the window, dropping the oldest beyond WINDOW."""
    history = torch.cat([history, log_p[:, None]], dim=1)[:, -WINDOW:]
    valid = torch.cat([valid, torch.ones(valid.shape[0], 1, dtype=torch.bool)], dim=1)[:, -WINDOW:]
    return history, valid


def lookback(ctx, k: int, alpha: float) -> Iterator[list[list[int]]]:
    """Yield one token per row per step (the engine stops the rows)."""
    session = ctx.session()
    ids, mask = ctx.padded_prompts
    logits = session.forward(ids, pad_mask=mask).float()  # [B, L, V]
    history = logits[:, :-1].log_softmax(-1)[:, -WINDOW:]  # p_j of the prompt's positions
    valid = (torch.ones(ids.shape, dtype=torch.bool) if mask is None else mask.bool())[:, :-1][:, -WINDOW:]
    current, rows = logits[:, -1], torch.arange(ctx.batch_size)
    k = min(k, current.shape[-1])
    generators = None if ctx.sampler.greedy else ctx.generators
    for step in range(1, 1 << 30):
        log_p = current.log_softmax(-1)  # [B, V]
        alarm = kl_min(log_p, history, valid) <= alpha  # [B]
        processed = processed_logits(ctx.sampler, ctx.history() if ctx.sampler.needs_history else None, current)
        if not bool(alarm.any()):
            token = processed.argmax(dim=-1)  # [B]
            yield [[t] for t in token.tolist()]
            current = session.forward(token[:, None])[:, -1].float()
        else:
            if step % DEFRAG_EVERY == 0 or session.length + k > ctx.lm.max_length:
                with torch.inference_mode():  # the native cache is an inference tensor
                    session.defragment()  # close the holes earlier alarm steps left
            top_ids = processed.topk(k).indices  # [B, k]; column 0 is the greedy token
            removed = torch.isneginf(processed.gather(1, top_ids))
            cand_logits = session.forward(top_ids, parents=[-1] * k).float()  # [B, k, V]
            wider, wider_valid = _remember(history, valid, log_p)
            kl = kl_min(cand_logits.log_softmax(-1), wider, wider_valid)  # [B, k]
            choice = choose(kl, removed, generators, alarm)
            session.accept_rows([[c] for c in choice.tolist()])
            yield [[t] for t in top_ids[rows, choice].tolist()]
            current = cand_logits[rows, choice]
        history, valid = _remember(history, valid, log_p)
