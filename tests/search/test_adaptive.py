"""`adaptive_best_of_k` (Damani et al., arXiv:2410.04707): the greedy allocation by marginal reward
p(1 − p)^(k−1) on hand-computed cases; the candidates are exactly the inner method's samples with the
documented seeds, ranked by mean log-likelihood; the budget is spent exactly; bad input is refused."""

import pytest

import decodelab
from decodelab.search.adaptive import allocate, marginal_reward

from fakes import tiny_lm

PROMPTS = ["def f(x):", "hello world", "ab"]


def test_allocation_by_hand():
    assert marginal_reward(0.5, 1) == 0.5 and marginal_reward(0.5, 3) == 0.125
    # Δ(p, k) for k = 2, 3, …: p=.9 → .09, .009; p=.5 → .25, .125, .0625, .03125; p=.05 → .0475, .045125
    # one each, then: .25 (p=.5), .125 (p=.5), .09 (p=.9) → [2, 3, 1]
    assert allocate([0.9, 0.5, 0.05], 6, 16) == [2, 3, 1]
    # then: .0625 (p=.5), .0475 (p=.05), .045125 (p=.05) — the hard prompt gets samples before the easy one
    assert allocate([0.9, 0.5, 0.05], 9, 16) == [2, 4, 3]
    assert allocate([0.3, 0.3], 5, 16) == [3, 2]  # equal p̂: round robin, ties to the earlier prompt
    assert allocate([0.5, 0.5], 10, 3) == [3, 3]  # the per-prompt cap
    with pytest.raises(ValueError, match="budget"):
        allocate([0.5, 0.5, 0.5], 2, 4)


def test_candidates_are_the_inner_samples_with_the_documented_seeds():
    lm = tiny_lm("llama", seed=1)
    p_hat = {PROMPTS[0]: 0.5, PROMPTS[1]: 0.95, PROMPTS[2]: 0.1}
    gens = decodelab.generate_batch(lm, PROMPTS, method="adaptive_best_of_k", budget=3, max_samples=5, seed=11,
                                    predictor=lambda text: p_hat[text], max_new_tokens=6, temperature=1.0)
    counts = allocate([p_hat[p] for p in PROMPTS], 9, 5)
    assert [len(g.candidates) for g in gens] == counts
    for b, (p, g) in enumerate(zip(PROMPTS, gens)):
        own = [decodelab.generate(lm, p, method="sample", seed=11 + b * 5 + j, max_new_tokens=6) for j in range(counts[b])]
        assert sorted(c.token_ids for c in g.candidates) == sorted(o.token_ids for o in own)
        scores = [c.score for c in g.candidates]
        assert scores == sorted(scores, reverse=True) and g.token_ids == g.candidates[0].token_ids


def test_default_predictor_and_bad_input():
    lm = tiny_lm("llama", seed=1)
    gens = decodelab.generate_batch(lm, PROMPTS, method="adaptive_best_of_k", budget=2, seed=0, max_new_tokens=4)
    assert sum(len(g.candidates) for g in gens) == 6
    with pytest.raises(ValueError, match="probability"):
        decodelab.generate(lm, "x", method="adaptive_best_of_k", predictor=lambda t: 2.0, max_new_tokens=4, seed=0)
    with pytest.raises(ValueError, match="meta method"):
        decodelab.generate(lm, "x", method="adaptive_best_of_k", inner="best_of_n", max_new_tokens=4, seed=0)
