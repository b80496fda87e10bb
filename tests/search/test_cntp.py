"""`cntp` (Wang et al., arXiv:2507.03038): the trial count formula by hand; the output equals a reference
loop written here from the paper's rule (full forward every step, the same draws in the same order);
the chosen trial is the lowest-perplexity one; temperature 0 is greedy; constraints are refused."""

import pytest
import torch

import decodelab
from decodelab.search.cntp import PUNCTUATION, _Trials, entropy, num_trials, punctuation_mask

from fakes import EOS, soft_lm

PROMPTS = ["def f(x):", "hello, world", "a = [1, 2"]


def test_trial_count_by_hand():
    assert num_trials(0.0, 0.01, 1.5, 10) == 1
    assert num_trials(1.5, 0.01, 1.5, 10) == 10 and num_trials(7.0, 0.01, 1.5, 10) == 10
    assert num_trials(0.755, 0.01, 1.5, 10) == 5  # 1 + 9 · 0.5 = 5.5 → 5
    assert entropy(torch.tensor([0.5, 0.5])) == pytest.approx(0.6931, abs=1e-4)


def test_best_trial_is_lowest_perplexity():
    t = _Trials(3)
    t.tokens, t.logp = [[1, 2], [3], [4, 5, 6]], [-2.0, -1.5, -2.4]  # means −1.0, −1.5, −0.8
    assert t.best() == 2


def _reference(lm, prompt, n_new, seed, punct, h_lo=0.01, h_hi=1.5, n_max=10):
    """The rule with no cache: sample (T = 1) or, when unsure, N trials drawn trial-by-trial per depth."""
    gen = torch.Generator().manual_seed(seed)
    ids, start = lm.encode(prompt), len(lm.encode(prompt))
    punct = set(punct) | {EOS}

    def dist(seq):
        with torch.no_grad():
            return lm.model(torch.tensor([seq])).logits[0, -1].float()

    while len(ids) - start < n_new:
        logits = dist(ids)
        p = logits.softmax(-1)
        n = num_trials(entropy(p), h_lo, h_hi, n_max)
        if n == 1:
            ids.append(int(torch.multinomial(p[None], 1, generator=gen)))
            continue
        budget = n_new - (len(ids) - start)
        trials, logps, ended = [[] for _ in range(n)], [0.0] * n, [False] * n
        for depth in range(budget):
            for i in range(n):
                if ended[i]:
                    continue
                lg = dist(ids + trials[i]) if trials[i] else logits
                t = int(torch.multinomial(lg.softmax(-1)[None], 1, generator=gen))
                trials[i].append(t)
                logps[i] += float(lg.log_softmax(-1)[t])
                ended[i] = t in punct or depth + 1 == budget
            if all(ended):
                break
        means = [lp / len(t) for lp, t in zip(logps, trials)]
        ids += trials[max(range(n), key=lambda i: (means[i], -i))]
    return ids[start:]


def test_punctuation_tokens():
    lm = soft_lm("llama", seed=3)
    assert set(punctuation_mask(lm).nonzero().flatten().tolist()) == set(PUNCTUATION.encode())


def test_equals_reference_loop():
    """Every third byte counts as punctuation here (set through the LM's cached mask), so trials end at
    different depths and the adopted cache must be cut to the chosen trial's length."""
    lm = soft_lm("llama", seed=3, scale=0.4)
    punct = list(range(0, 256, 3))
    lm.state["cntp.punctuation"] = torch.zeros(lm.vocab_size, dtype=torch.bool)
    lm.state["cntp.punctuation"][punct] = True
    cautious = 0
    for i, prompt in enumerate(PROMPTS):
        ours = decodelab.generate(lm, prompt, method="cntp", max_new_tokens=24, seed=7 + i, max_trials=4)
        ref = _reference(lm, prompt, 24, 7 + i, punct, n_max=4)
        ref = ref[: ref.index(EOS) + 1] if EOS in ref else ref
        assert ours.token_ids == ref
        cautious += ours.stats.steps < len(ours.token_ids) - 1  # some step emitted a whole trial
    assert cautious >= 2


def test_temperature_zero_is_greedy_and_constraints_refused():
    lm = soft_lm("llama", seed=3, scale=0.4)
    assert (decodelab.generate(lm, PROMPTS[0], method="cntp", max_new_tokens=12, temperature=0).token_ids
            == decodelab.generate(lm, PROMPTS[0], method="greedy", max_new_tokens=12).token_ids)
    with pytest.raises(ValueError, match="constraint"):
        decodelab.generate(lm, "x", method="cntp", max_new_tokens=4, constraint={"regex": "[a-z]+"})
    with pytest.raises(ValueError, match="entropy_high"):
        decodelab.generate(lm, "x", method="cntp", max_new_tokens=4, entropy_low=2.0, entropy_high=1.0)
