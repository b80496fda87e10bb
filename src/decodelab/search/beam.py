"""Beam search over a batch of prompts, with the patience factor and every logits processor.

The rule is transformers' vectorised beam search (`GenerationMixin._beam_search`, the parity
reference in tests/search/test_beam.py): per prompt, the K running beams' continuations are ranked by
summed log-probability; the best `keep = max(2, 1 + #EOS)·K` are kept so that K beams can keep running
even when the best ones end; a candidate among the top K that ends (EOS or the length limit) enters
the finished set with score `logp / len^length_penalty`; `early_stopping` True stops when the
finished set is full, False stops when the best running beam (normalised at the current length)
cannot beat the worst finished one, "never" (with length_penalty > 0) uses the longest possible length.

Patience factor — Kasai et al., "A Call for Clarity in Beam Search: How It Works and When It
Stops" (arXiv:2204.05424): the finished set holds round(patience · K) hypotheses, so with
early_stopping=True the search stops when |F| ≥ patience · K; patience=1 is the classic rule.

Beyond transformers (which drops warpers when do_sample=False): with temperature > 0 the scores are
the log-probabilities of the *processed* distribution (temperature, top-k/p, min-p, …), so beam search
keeps a nucleus or a min-p floor. Penalties apply to the log-probabilities as transformers does; a
grammar constraint masks every beam with its own matcher (forked per beam), so every hypothesis obeys it.
All K·B beams share one Session; `Session.reorder` moves the KV cache rows with the surviving beams.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..errors import UserError

NEG = -1.0e9  # transformers' "impossible" score


@dataclass(frozen=True)
class BeamConfig:
    num_beams: int = 4
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    patience: float = 1.0

    @property
    def capacity(self) -> int:
        """Size of the finished set: patience · num_beams (at least one)."""
        return max(1, round(self.patience * self.num_beams))

    def check(self) -> None:
        if self.num_return_sequences > min(self.num_beams, self.capacity):
            raise UserError(f"num_return_sequences ({self.num_return_sequences}) must be ≤ num_beams "
                             f"({self.num_beams}) and ≤ round(patience · num_beams) ({self.capacity})")


def beam_log_probs(sampler, history: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """[N, V] logits → [N, V] step scores: log_softmax then the penalties (transformers' order) when
    greedy; with temperature > 0, the log of the fully processed distribution."""
    if sampler.greedy:
        scores = logits.float().log_softmax(dim=-1)
        for processor in sampler.logits_processors:
            scores = processor(history, scores)
        return scores
    return sampler.process(history, logits.float()).log_softmax(dim=-1)


def beam_sampler(sampler, k: int):
    """The sampler for B·K beam rows: a grammar constraint gets one matcher per beam, forked from its
    prompt's (each beam's matcher seeks its own history at every step, so reordering beams is free);
    token healing's first-token mask is repeated for each prompt's K beams (at the first step every
    beam of a prompt continues the same backed-up prompt). Penalties read the history they are given."""
    mask, healer = sampler.constraint, sampler.healing
    if mask is None and healer is None:
        return sampler
    swap = {}
    if mask is not None:
        beams = copy.copy(mask)
        beams.rows = [row.fork() for row in mask.rows for _ in range(k)]
        swap[id(mask)] = beams
    if healer is not None:
        swap[id(healer)] = healer.repeated(k)
    view = copy.copy(sampler)
    view.logits_processors = [swap.get(id(p), p) for p in sampler.logits_processors]
    view.constraint, view.healing = swap.get(id(mask)), swap.get(id(healer))
    return view


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t [B, K, ...] rows picked per prompt by index [B, K'] → [B, K', ...]."""
    while index.dim() < t.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(t, index, dim=1)


class BeamState:
    """Running beams and the finished set of B prompts (all tensors [B, K, …] / [B, C, …])."""

    def __init__(self, batch: int, cfg: BeamConfig, max_new: int, pad: int, eos: list[int]):
        k, c = cfg.num_beams, cfg.capacity
        self.cfg, self.max_new = cfg, max_new
        self.seqs = torch.full((batch, k, max_new), pad, dtype=torch.long)  # running beams' new tokens
        self.scores = torch.zeros(batch, k)
        self.scores[:, 1:] = NEG  # only beam 0 expands at the first step (the beams are copies)
        self.fin_seqs = torch.full((batch, c, max_new), pad, dtype=torch.long)
        self.fin_scores = torch.full((batch, c), NEG)
        self.fin_len = torch.zeros(batch, c, dtype=torch.long)
        self.fin_done = torch.zeros(batch, c, dtype=torch.bool)
        self.unsatisfied = torch.ones(batch, 1, dtype=torch.bool)  # a running beam may still improve F
        self.eos = torch.tensor(sorted(eos), dtype=torch.long)
        self.keep = max(2, 1 + len(eos)) * k
        self.rank_mask = torch.arange(self.keep) < k  # only the top K candidates may finish

    def step(self, logp: torch.Tensor, g: int) -> tuple[torch.Tensor, bool]:
        """Extend with step scores logp [B, K, V] at new-token index g; return the source beam of each
        new running beam [B, K] and whether the search goes on."""
        b, k, v = logp.shape
        total = (logp + self.scores[:, :, None]).reshape(b, k * v)
        top, index = total.topk(self.keep)  # [B, keep]
        source, token = index // v, index % v
        cand = _gather(self.seqs, source)
        cand[:, :, g] = token
        ended = torch.isin(token, self.eos) | (g + 1 >= self.max_new)
        running = top + ended.float() * NEG
        pick = running.topk(k)[1]
        self.seqs, self.scores, parent = _gather(cand, pick), _gather(running, pick), _gather(source, pick)
        self._finish(top, cand, ended & self.rank_mask[None, :], g + 1)
        self._update_unsatisfied(g + 1)
        go_on = bool(self.unsatisfied.any()) and not (bool(self.fin_done.all()) and self.cfg.early_stopping is True)
        return parent, go_on and not bool(ended.all())

    def _finish(self, top: torch.Tensor, cand: torch.Tensor, ended: torch.Tensor, length: int) -> None:
        """Merge the candidates that just ended into the finished set, keeping its best C."""
        final = top / (length ** self.cfg.length_penalty)
        full = self.fin_done.all(dim=-1, keepdim=True) & (self.cfg.early_stopping is True)
        final += full.float() * NEG
        final += (~self.unsatisfied).float() * NEG
        final += (~ended) * NEG
        scores = torch.cat([self.fin_scores, final], dim=1)
        best = scores.topk(self.cfg.capacity)[1]
        self.fin_scores = _gather(scores, best)
        self.fin_seqs = _gather(torch.cat([self.fin_seqs, cand], dim=1), best)
        self.fin_len = _gather(torch.cat([self.fin_len, torch.full_like(top, length, dtype=torch.long)], 1), best)
        self.fin_done = _gather(torch.cat([self.fin_done, ended], dim=1), best)

    def _update_unsatisfied(self, length: int) -> None:
        """transformers' heuristic: can the best running beam still beat the worst finished one?"""
        cfg = self.cfg
        hypothetical = self.max_new if cfg.early_stopping == "never" and cfg.length_penalty > 0 else length
        best_running = self.scores[:, :1] / (hypothetical ** cfg.length_penalty)
        worst = torch.where(self.fin_done, self.fin_scores.min(dim=1, keepdim=True)[0], NEG)
        self.unsatisfied &= (best_running > worst).any(dim=-1, keepdim=True)

    def ranked(self, b: int, n: int) -> list[tuple[list[int], float]]:
        """Prompt b's n best finished hypotheses: (new tokens, length-normalised score), best first."""
        out = []
        for c in range(n):
            if self.fin_scores[b, c] > NEG / 2:
                out.append((self.fin_seqs[b, c, : self.fin_len[b, c]].tolist(), float(self.fin_scores[b, c])))
        return out


def beam_search(ctx, cfg: BeamConfig) -> list[list[tuple[list[int], float]]]:
    """Run beam search for every prompt of ctx; per prompt the ranked (tokens, score) hypotheses."""
    from ..methods.autoregressive import prefill

    cfg.check()
    batch, k, max_new = ctx.batch_size, cfg.num_beams, ctx.remaining(0)
    sampler = beam_sampler(ctx.sampler, k)
    state = BeamState(batch, cfg, max_new, ctx.lm.pad_token_id, list(ctx.lm.eos_token_ids))
    session = ctx.session()
    logits = prefill(ctx, session).repeat_interleave(k, dim=0)  # [B·K, V]
    session.reorder([b for b in range(batch) for _ in range(k)])
    prompt_ids = ctx.padded_prompts[0].repeat_interleave(k, dim=0)  # [B·K, L]
    offset = torch.arange(batch)[:, None] * k
    for g in range(max_new):
        history = torch.cat([prompt_ids, state.seqs.reshape(batch * k, -1)[:, :g]], dim=1)
        logp = beam_log_probs(sampler, history, logits).reshape(batch, k, -1)
        parent, go_on = state.step(logp, g)
        if not go_on:
            break
        session.reorder((parent + offset).flatten().tolist())
        logits = session.forward(state.seqs[:, :, g].reshape(batch * k, 1))[:, -1]
    return [state.ranked(b, cfg.num_return_sequences) for b in range(batch)]
