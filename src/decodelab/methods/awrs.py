"""`awrs`: exact constrained sampling by adaptive weighted rejection, with sequential Monte Carlo.

Lipkin et al., "Fast Controlled Generation from Language Models with Adaptive Weighted Rejection
Sampling" (arXiv:2504.05410); the token sampler is constraints/awrs.py. No full grammar mask is
computed: each step tests candidate tokens lazily against the row's llguidance matcher.

- n_particles = 1: every token is an exact sample of p·1[c]/Z, where p is the processed
  distribution (penalties, temperature, then any truncating warper) — the same distribution as
  constrained `sample` whenever no truncating warper (top-k/p, min-p, typical, ε, η) is on, since
  constrained `sample` masks before truncating. Tokens stream as they are drawn.
- n_particles > 1: sequential Monte Carlo (Naesseth et al., "Elements of Sequential Monte Carlo",
  arXiv:1903.04797). Each particle carries log W += log w (w from AWRS: an unbiased estimate of the
  step's Z); when the effective sample size (Σ W)² / Σ W² drops below `ess_threshold` · n the
  particles are resampled (multinomial) and their caches and matchers fork. At the end one particle
  is drawn ∝ W and returned whole: its sequence targets the *global* constrained distribution
  p(x)·1[c(x)] / Z, not the token-by-token one.
- temperature 0: the first valid token in logit order (= constrained greedy), one particle.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from ..constraints.awrs import awrs_token
from ..errors import UserError
from ..processors import Sampler
from ..processors.distortion import inf_limit
from .autoregressive import prefill
from .registry import Param, register


class _Particle:
    def __init__(self, row, tokens: list[int] | None = None):
        self.row = row  # RowConstraint (None when unconstrained)
        self.tokens = list(tokens or [])
        self.done = False

    def fork(self) -> "_Particle":
        twin = _Particle(self.row.fork() if self.row is not None else None, self.tokens)
        twin.done = self.done
        return twin


def _acceptor(lm, particle: _Particle):
    """Constraint test for one candidate token: EOS only when complete, others by the matcher.

    Where the grammar forces the next bytes, llguidance's mask admits only its canonical tokenization
    of them while `validate` admits any; there the full mask is computed once, so that AWRS samples
    the same constrained distribution as the masked methods (elsewhere the two agreed on every state
    checked: docs/CONSTRAINTS.md)."""
    row = particle.row
    if row is None:
        return lambda t: True
    if row.forced():
        allowed = row.allowed(lm.vocab_size).tolist()
        return lambda t: allowed[t]

    def accept(t: int) -> bool:
        if t in lm.eos_token_ids:
            return row.accepting
        return row.validate([t]) == 1
    return accept


def _step(ctx, free: Sampler, particle: _Particle, logits: torch.Tensor) -> tuple[int | None, float]:
    """One AWRS draw for a particle from its logits [V]; (token, log w)."""
    history = torch.tensor([ctx.prompts[0] + particle.tokens]) if free.needs_history else None
    accept = _acceptor(ctx.lm, particle)
    if free.greedy:  # logit order (penalties applied), no randomness
        return _greedy_first(free.process(history, logits[None])[0], accept), 0.0
    # log-softmax in float64, not log(probs): a token whose p underflows to 0 in float32 keeps a finite
    # log p, so a grammar that allows only such tokens (a peaked model off its track) still gets a draw
    logp = inf_limit(free.process(history, logits[None])).double().log_softmax(dim=-1)[0]
    token, log_w, _ = awrs_token(logp, accept, ctx.generator, weight=ctx.params["n_particles"] > 1)
    return token, log_w


def _greedy_first(scores: torch.Tensor, accept) -> int | None:
    """The highest-scoring token the constraint accepts (ties: the lowest id, like argmax)."""
    order = torch.sort(scores, descending=True, stable=True).indices[: int(torch.isfinite(scores).sum())]
    return next((t for t in order.tolist() if accept(t)), None)


def _advance(lm, particle: _Particle, token: int | None) -> None:
    if token is None:
        particle.done = True
        return
    particle.tokens.append(token)
    if particle.row is not None and token not in lm.eos_token_ids:
        particle.row.advance([token])
    particle.done = token in lm.eos_token_ids or (particle.row is not None and particle.row.stopped)


def _resample(ctx, session, particles: list[_Particle], log_w: torch.Tensor):
    """Multinomial resampling when the effective sample size is low; returns (particles, log_w)."""
    n = len(particles)
    w = torch.softmax(log_w, 0)
    if not torch.isfinite(log_w).any() or 1.0 / float((w * w).sum()) >= ctx.params["ess_threshold"] * n:
        return particles, log_w
    idx = torch.multinomial(w, n, replacement=True, generator=ctx.generator).tolist()
    session.reorder(idx)
    mean = float(torch.logsumexp(log_w, 0)) - math.log(n)
    return [particles[i].fork() for i in idx], torch.full((n,), mean, dtype=torch.float64)


def _smc(ctx) -> Iterator[list[list[int]]]:
    n = ctx.params["n_particles"] if not ctx.sampler.greedy else 1
    base = ctx.sampler.constraint.rows[0] if ctx.sampler.constraint is not None else None
    free = ctx.sampler.without_constraint()  # p without the grammar mask (token healing's kept)
    session = ctx.lm.session(1, stats=ctx.stats)
    logits = prefill(ctx, session)  # [1, V]
    if n > 1:
        session.fork(0, n)
        logits = logits.expand(n, -1)
    particles = [_Particle(base.fork() if base is not None else None) for _ in range(n)]
    log_w = torch.zeros(n, dtype=torch.float64)
    for _ in range(ctx.remaining()):
        for i, particle in enumerate(particles):
            if not particle.done:
                token, w = _step(ctx, free, particle, logits[i])
                _advance(ctx.lm, particle, token)
                log_w[i] += w if token is not None else -math.inf
        if n == 1:
            if token is None:  # nothing valid has p > 0: the row ends incomplete ("length")
                return
            yield [[token]]
        if all(p.done for p in particles):
            break
        particles, log_w = _resample(ctx, session, particles, log_w) if n > 1 else (particles, log_w)
        feed = [p.tokens[-1] if p.tokens else ctx.lm.pad_token_id for p in particles]
        logits = session.forward(torch.tensor(feed)[:, None])[:, -1]
    if n > 1:
        pick = int(torch.multinomial(torch.softmax(log_w, 0), 1, generator=ctx.generator)) \
            if torch.isfinite(log_w).any() else 0
        if hasattr(ctx, "candidates"):  # every particle with its log importance weight, heaviest first
            order = sorted(range(n), key=lambda i: -float(log_w[i]))
            ctx.candidates[0] = [(particles[i].tokens, float(log_w[i])) for i in order]
        if particles[pick].tokens:
            yield [particles[pick].tokens]


@register("awrs", lossless=False, temperature=1.0,
          description="Adaptive weighted rejection sampling: exact constrained sampling without full masks "
                      "(lazy constraint checks in Gumbel-max order); SMC over particles.",
          paper="Fast Controlled Generation from Language Models with Adaptive Weighted Rejection Sampling "
                "(arXiv:2504.05410)",
          params={"n_particles": Param(1, 1, 256, help="SMC particles; 1 = token-by-token exact sampling"),
                  "ess_threshold": Param(0.5, 0.0, 1.0, help="resample when ESS < this × n_particles")})
def awrs(ctx) -> Iterator[list[list[int]]]:
    if ctx.batch_size != 1:
        raise UserError("awrs runs one sequence at a time")
    return _smc(ctx)
