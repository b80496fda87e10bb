"""Bregman adaptive top-k (processors/bregman.py; Noarov et al., arXiv:2505.19371) against a brute-force
reference written here: every support (all subsets of a small vocabulary) or every k, each with its
minimiser found by scipy's root finder, the divergence summed over the whole vocabulary."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.optimize import brentq

import decodelab
from decodelab import UserError
from decodelab.processors import Sampler, SamplingParams
from decodelab.processors.bregman import BregmanTopK
from tests.fakes import soft_lm

ALPHAS = (0.5, 1.0, 2.0, 3.0)


def phi(x: float, a: float) -> float:
    if a == 1:
        return x * math.log(x) if x > 0 else 0.0
    return (x ** a - x) / (a * (a - 1))


def dphi(x: float, a: float) -> float:
    return math.log(x) + 1 if a == 1 else (a * x ** (a - 1) - 1) / (a * (a - 1))


def divergence(q: list[float], p: list[float], a: float) -> float:
    """Primal Bregman divergence D_φ(q, p), summed over every token (q_i = 0 outside the support)."""
    return sum(phi(qi, a) - phi(pi, a) - dphi(pi, a) * (qi - pi) for qi, pi in zip(q, p))


def minimiser(p: list[float], support: list[int], a: float) -> list[float]:
    """argmin D_φ(q, p) over distributions on `support`: φ'(q_i) = φ'(p_i) − μ, μ by brentq on Σq = 1."""
    def q_of(mu: float) -> list[float]:
        q = [0.0] * len(p)
        for i in support:
            target = dphi(p[i], a) - mu  # invert φ'
            q[i] = math.exp(target - 1) if a == 1 else ((target * a * (a - 1) + 1) / a) ** (1 / (a - 1))
        return q
    # Σq falls as μ rises and Σq(0) = P_S ≤ 1, so μ ≤ 0; for a < 1 the power's base stays positive only for
    # μ > max_i −p_i^{a−1}/(1 − a) (at that end the largest q grows without bound)
    if sum(p[i] for i in support) > 1 - 1e-13:
        return q_of(0.0)
    lo = -50.0 if a >= 1 else max(-p[i] ** (a - 1) / (1 - a) for i in support) * (1 - 1e-12)
    mu = brentq(lambda m: sum(q_of(m)) - 1, lo, 0.0, xtol=1e-14, rtol=1e-14, maxiter=500)
    return q_of(mu)


def brute_force(p: list[float], a: float, lam: float, supports) -> tuple[float, list[float]]:
    """min over the given supports of D_φ(q_S, p) + λ|S| → (cost, q)."""
    best = None
    for s in supports:
        q = minimiser(p, list(s), a)
        c = divergence(q, p, a) + lam * len(s)
        if best is None or c < best[0] - 1e-12:
            best = (c, q)
    return best


def random_p(seed: int, vocab: int, scale: float) -> torch.Tensor:
    return (scale * torch.randn(vocab, generator=torch.Generator().manual_seed(seed))).double().softmax(-1)


def processed(p: torch.Tensor, a: float, lam: float) -> list[float]:
    """The processor's distribution for p (as logits log p, one row)."""
    out = BregmanTopK(a, lam)(None, p.log()[None].float())
    return out.double().softmax(-1)[0].tolist()


@pytest.mark.parametrize("a", ALPHAS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_best_of_every_support(a, seed):
    """Vocabulary of 7: all 127 supports. The best one is a top-k set, and the processor finds its q."""
    p = random_p(seed, 7, 1.5)
    for lam in (0.02, 0.15):
        supports = [s for r in range(1, 8) for s in itertools.combinations(range(7), r)]
        _, q = brute_force(p.tolist(), a, lam, supports)
        assert processed(p, a, lam) == pytest.approx(q, abs=2e-5)


@pytest.mark.parametrize("a", ALPHAS)
def test_equals_the_best_k_on_a_larger_vocabulary(a):
    """Vocabulary of 60, every k tried (the top-k supports): binary search finds the brute-force k."""
    kept = []
    for seed, scale, lam in [(3, 2.0, 0.01), (4, 3.0, 0.05), (5, 1.0, 0.002), (6, 4.0, 0.3), (8, 3.0, 0.5)]:
        p = random_p(seed, 60, scale)
        top = p.argsort(descending=True).tolist()
        _, q = brute_force(p.tolist(), a, lam, [top[:k] for k in range(1, 61)])
        got = processed(p, a, lam)
        assert got == pytest.approx(q, abs=2e-5)
        kept.append(sum(x > 0 for x in got))
    assert len(set(kept)) >= 3 and min(kept) < 60, kept  # the cases do truncate, adaptively


def test_kl_case_is_top_k_with_the_closed_form_k():
    """α = 1: q = p / P_k on the top k, k* = min{k : p_(k+1) ≤ (e^λ − 1)·P_k}; α = 2: q = p + (1 − P_k)/k."""
    p = random_p(7, 200, 2.5)
    ps = p.sort(descending=True).values
    for lam in (0.01, 0.1, 0.4):
        k = next(k for k in range(1, 200) if ps[k] <= (math.exp(lam) - 1) * ps[:k].sum())
        q = torch.tensor(processed(p, 1.0, lam), dtype=torch.float64)
        assert int((q > 0).sum()) == k
        torch.testing.assert_close(q[q > 0].sort().values, (ps[:k] / ps[:k].sum()).sort().values)
    q2 = torch.tensor(processed(p, 2.0, 0.05), dtype=torch.float64)
    k = int((q2 > 0).sum())
    torch.testing.assert_close(q2[q2 > 0].sort().values, (ps[:k] + (1 - ps[:k].sum()) / k).sort().values)


def test_rows_of_a_batch_are_independent():
    logits = torch.randn(3, 80, generator=torch.Generator().manual_seed(9)) * 2
    warper = BregmanTopK(0.5, 0.03)
    together = warper(None, logits)
    for b in range(3):
        torch.testing.assert_close(together[b], warper(None, logits[b : b + 1])[0])


def test_a_sampling_parameter_of_every_method():
    lm = soft_lm("llama")
    sampler = Sampler({"bregman_alpha": 2.0, "bregman_lambda": 0.05, "temperature": 0.8}, prompt_len=0)
    assert isinstance(sampler.warpers[-1], BregmanTopK)
    probs = decodelab.next_token_probs(lm, "def f(x):", bregman_alpha=2.0, bregman_lambda=0.05, temperature=0.8)
    with torch.no_grad():
        logits = lm.model(torch.tensor([lm.encode("def f(x):")])).logits[0, -1].double() / 0.8
    assert probs.tolist() == pytest.approx(processed(logits.softmax(-1), 2.0, 0.05), abs=1e-5)
    for method in ("sample", "pld"):
        g = decodelab.generate(lm, "def f(x):", method=method, max_new_tokens=6, seed=0, bregman_lambda=0.05)
        assert g.stats.new_tokens == 6
    assert SamplingParams(bregman_lambda=0.1).bregman_alpha == 1.0


@pytest.mark.parametrize("bad", [{"bregman_alpha": 0}, {"bregman_alpha": -1.0}, {"bregman_alpha": "x"},
                                 {"bregman_alpha": float("nan")}, {"bregman_lambda": -0.1},
                                 {"bregman_lambda": float("inf")}, {"bregman_lambda": True}])
def test_bad_values_are_one_line_errors(bad):
    name = next(iter(bad))
    with pytest.raises(UserError, match=f"^{name} must be a number") as err:
        SamplingParams(**bad)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=f"^{name} must be"):
        decodelab.generate(soft_lm("llama"), "a", method="sample", max_new_tokens=2, **bad)
