"""Chi-square goodness of fit for sampled tokens against exact probabilities, and the test's power.

Every distribution test in this suite compares sampled outcomes (the first few generated tokens)
with their exact probabilities by Pearson's chi-square test at significance level `ALPHA`.
`min_detectable_tv` and `chi2_power` state what such a test can see (math in their docstrings).
"""

from __future__ import annotations

import math
from collections import Counter

from scipy.optimize import brentq
from scipy.stats import chi2, chisquare, ncx2

ALPHA = 1e-3  # significance level of every distribution test in this suite
POWER = 0.99  # the detection probability the sample sizes are chosen for


def cells(probs: dict, n: int) -> list[list]:
    """The test's cells: one per outcome with expected count n·p ≥ 5, the other outcomes pooled in one."""
    support = [k for k, p in probs.items() if p > 0]
    big = [[k] for k in support if probs[k] * n >= 5]
    small = [k for k in support if probs[k] * n < 5]
    return big + ([small] if small else [])


def chi2_pvalue(samples: list, probs: dict) -> float:
    """p-value that `samples` were drawn from `probs` (outcome → probability).

    Cells with expected count < 5 are pooled into one; a sample outside the support gives 0.
    """
    n = len(samples)
    counts = Counter(samples)
    if any(probs.get(s, 0.0) <= 0.0 for s in counts):
        return 0.0
    groups = cells(probs, n)
    if len(groups) < 2:
        return 1.0
    obs = [sum(counts[k] for k in g) for g in groups]
    exp = [sum(probs[k] for k in g) for g in groups]
    total = sum(exp)
    return float(chisquare(obs, [e * n / total for e in exp]).pvalue)


def _critical_noncentrality(df: int, alpha: float, power: float) -> float:
    """λ* with P(χ'²(df, λ*) > χ²_{df, 1−α}) = power."""
    crit = chi2.ppf(1 - alpha, df)
    return brentq(lambda lam: ncx2.sf(crit, df, lam) - power, 1e-9, 1e6)


def min_detectable_tv(probs: dict, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest total-variation bias that the chi-square test on n samples detects with `power`.

    Math. With k cells (`cells`) and df = k − 1, Pearson's statistic under an alternative p₁ is
    approximately noncentral chi-square, X ~ χ'²(df, λ) with λ = n·Σᵢ (p₁ᵢ − p₀ᵢ)² / p₀ᵢ = n·χ²(p₁‖p₀)
    (the standard large-sample result for Pearson's test, e.g. Cochran 1952 / Mitra 1958). The test
    rejects when X > c = χ²_{df, 1−α}; its power P(χ'²(df, λ) > c) grows with λ, so let λ* be the
    noncentrality at which it equals `power`. By Cauchy–Schwarz,
        2·TV(p₁, p₀) = Σᵢ |p₁ᵢ − p₀ᵢ| = Σᵢ (|p₁ᵢ − p₀ᵢ| / √p₀ᵢ)·√p₀ᵢ ≤ √χ²(p₁‖p₀),
    i.e. χ²(p₁‖p₀) ≥ 4·TV². Hence every alternative with TV ≥ δ* = √(λ* / (4n)) has λ ≥ λ* and is
    detected with probability ≥ `power`: δ* is a worst case over all alternatives (equality needs a
    bias that moves the same fraction of every cell's mass). TV is measured on the cells; pooling
    only merges outcomes, and an alternative putting mass outside the support is detected even more
    easily (any such sample gives p = 0).
    """
    df = len(cells(probs, n)) - 1
    if df < 1:
        return 1.0
    return math.sqrt(_critical_noncentrality(df, alpha, power) / (4 * n))


def chi2_power(probs: dict, alternative: dict, n: int, alpha: float = ALPHA) -> float:
    """Probability that the test on n samples from `alternative` rejects `probs` (same asymptotics
    as `min_detectable_tv`, with λ from the alternative itself; mass outside the support of `probs`
    is caught by the first sample that lands there)."""
    groups = cells(probs, n)
    outside = sum(p for k, p in alternative.items() if probs.get(k, 0.0) <= 0.0)
    inside = 1.0 - outside
    p0 = [sum(probs[k] for k in g) for g in groups]
    p1 = [sum(alternative.get(k, 0.0) for k in g) / inside if inside > 0 else 0.0 for g in groups]
    lam = n * sum((a - b) ** 2 / b for a, b in zip(p1, p0))
    df = len(groups) - 1
    miss = ncx2.cdf(chi2.ppf(1 - alpha, df), df, lam) if df >= 1 else 1.0
    return 1.0 - (1.0 - outside) ** n * miss


def total_variation(a: dict, b: dict) -> float:
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def entropy(probs: dict) -> float:
    """Shannon entropy in nats."""
    return -sum(p * math.log(p) for p in probs.values() if p > 0)


def exact_joint(lm, ids: list[int], depth: int, **params) -> dict:
    """Exact probability of every continuation of `depth` tokens (shorter when it ends in EOS),
    walking the support of decodelab.next_token_probs under the given sampling parameters."""
    import decodelab

    out = {}

    def walk(prefix, prob):
        if len(prefix) == depth or (prefix and prefix[-1] in lm.eos_token_ids):
            out[tuple(prefix)] = prob
            return
        probs = decodelab.next_token_probs(lm, ids, generated=prefix, **params)  # penalties count prefix
        for t in probs.nonzero().flatten().tolist():
            walk(prefix + [t], prob * float(probs[t]))

    walk([], 1.0)
    return out
