"""Chi-square goodness of fit for sampled tokens against exact probabilities."""

from __future__ import annotations

from collections import Counter

from scipy.stats import chisquare

ALPHA = 1e-3  # significance level of every distribution test in this suite


def chi2_pvalue(samples: list, probs: dict) -> float:
    """p-value that `samples` were drawn from `probs` (outcome → probability).

    Cells with expected count < 5 are pooled into one; a sample outside the support gives 0.
    """
    n = len(samples)
    counts = Counter(samples)
    if any(probs.get(s, 0.0) <= 0.0 for s in counts):
        return 0.0
    probs = {k: p for k, p in probs.items() if p > 0}
    big = [k for k, p in probs.items() if p * n >= 5]
    small = [k for k in probs if k not in big]
    obs = [counts[k] for k in big]
    exp = [probs[k] * n for k in big]
    if small and sum(probs[k] for k in small) > 0:
        obs.append(sum(counts[k] for k in small))
        exp.append(sum(probs[k] for k in small) * n)
    total = sum(exp)
    exp = [e * n / total for e in exp]
    if len(obs) < 2:
        return 1.0
    return float(chisquare(obs, exp).pvalue)


def exact_joint(lm, ids: list[int], depth: int, **params) -> dict:
    """Exact probability of every continuation of `depth` tokens (shorter when it ends in EOS),
    walking the support of decodelab.next_token_probs under the given sampling parameters."""
    import decodelab

    out = {}

    def walk(prefix, prob):
        if len(prefix) == depth or (prefix and prefix[-1] in lm.eos_token_ids):
            out[tuple(prefix)] = prob
            return
        probs = decodelab.next_token_probs(lm, ids + prefix, **params)
        for t in probs.nonzero().flatten().tolist():
            walk(prefix + [t], prob * float(probs[t]))

    walk([], 1.0)
    return out
