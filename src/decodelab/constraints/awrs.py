"""Adaptive weighted rejection sampling (AWRS): exact constrained sampling without a full mask.

Lipkin et al., "Fast Controlled Generation from Language Models with Adaptive Weighted Rejection
Sampling" (arXiv:2504.05410). Order the vocabulary by Gumbel-max keys log p + G (a sample without
replacement from p) and test the constraint token by token; rejected tokens are removed for good, so
the first accepted token is an exact sample of p·1[c]/Z. A second round (fresh keys, the rejected
tokens still removed) runs to the next acceptance; with R rejections over both rounds and S the mass
rejected before the first acceptance,

    w = (1 − S) / (R + 1)

is an unbiased estimate of Z = Σ_valid p — the incremental importance weight of a particle in
sequential Monte Carlo (w = 0 kills it). Cost grows with how far p is from p·1[c]/Z: a model that
mostly proposes valid tokens needs a few constraint checks per token instead of a full mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def _gumbel(logp: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(logp.shape, generator=generator, dtype=torch.float64).clamp_min(1e-300)
    return logp.double() - torch.log(-torch.log(u))


def _first_accepted(keys: torch.Tensor, accept: Callable[[int], bool], on_reject) -> tuple[int | None, int]:
    """Walk tokens by decreasing key (finite keys only) to the first accepted one; (token, checks)."""
    finite = int(torch.isfinite(keys).sum())
    checks = 0
    for t in torch.argsort(keys, descending=True)[:finite].tolist():
        checks += 1
        if accept(t):
            return t, checks
        on_reject(t)
    return None, checks


def awrs_token(logp: torch.Tensor, accept: Callable[[int], bool], generator: torch.Generator | None,
               weight: bool = True) -> tuple[int | None, float, int]:
    """(token, log w, constraint checks) for one step. logp: [V] log-probabilities (-inf = removed).

    token is None (log w = -inf) when no token with p > 0 satisfies the constraint. With
    weight=False only the first round runs (log w = 0)."""
    logp = logp.double().clone()
    rejected_before: list[float] = []
    rejections = 0
    token = None

    def reject(t: int) -> None:
        nonlocal rejections
        rejections += 1
        if token is None:
            rejected_before.append(float(logp[t]))
        logp[t] = -math.inf

    token, checks = _first_accepted(_gumbel(logp, generator), accept, reject)
    if token is None:
        return None, -math.inf, checks
    if not weight:
        return token, 0.0, checks
    _, more = _first_accepted(_gumbel(logp, generator), accept, reject)
    removed = sum(math.exp(x) for x in rejected_before)
    log_w = math.log1p(-min(removed, 1.0)) if removed < 1.0 else -math.inf
    return token, log_w - math.log(rejections + 1), checks + more
