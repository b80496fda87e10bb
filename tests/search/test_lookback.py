"""`lookback` (Xu et al., arXiv:2305.13477) equals a reference loop written here from the paper's rule
(full forward every step, KL against every earlier position's distribution), with alarms both on and
off; α = 0 never alarms (greedy); the sampled choice follows softmax(−KL_min) (chi-square, α_test =
0.001); batched rows equal the rows alone."""

import pytest
import torch

import decodelab
from decodelab.search.lookback import choose, kl_min

from fakes import ARCHS, soft_lm

PROMPTS = ["def f(x):", "hello world hello", "abab"]


def _kl(p_log, q_log):
    return float((p_log.exp() * (p_log - q_log)).sum())


def _reference(lm, prompt, n, alpha, k):
    """The rule step by step, temperature 0 (argmin on an alarm), no cache; also counts the alarms."""
    ids, alarms = lm.encode(prompt), 0
    for _ in range(n):
        with torch.no_grad():
            logp = lm.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)  # [L, V]
        current, earlier = logp[-1], logp[:-1][-128:]
        if min(_kl(current, e) for e in earlier) > alpha:
            ids.append(int(current.argmax()))
            continue
        alarms += 1
        scores = []
        for v in current.topk(k).indices.tolist():
            with torch.no_grad():
                nxt = lm.model(torch.tensor([ids + [v]])).logits[0, -1].float().log_softmax(-1)
            scores.append((min(_kl(nxt, e) for e in list(logp[-128:])), v))
        ids.append(min(scores)[1])
    return ids[len(lm.encode(prompt)):], alarms


@pytest.mark.parametrize("arch", ARCHS)
def test_equals_reference_loop(arch):
    lm = soft_lm(arch, seed=2)
    alarms = 0
    for prompt, alpha, k in zip(PROMPTS, (0.05, 0.2, 100.0), (3, 4, 2)):
        ref, n_alarms = _reference(lm, prompt, 10, alpha, k)
        ours = decodelab.generate(lm, prompt, method="lookback", max_new_tokens=10, alpha=alpha, num_candidates=k,
                                  temperature=0)
        assert ours.token_ids == ref
        alarms += n_alarms
    assert 10 < alarms < 30  # both branches ran (the last prompt alarms at every step)


def test_alpha_zero_is_greedy_and_batch_rows_equal_rows_alone():
    lm = soft_lm("llama", seed=2)
    for p in PROMPTS:
        assert (decodelab.generate(lm, p, method="lookback", alpha=0.0, max_new_tokens=12, temperature=0).token_ids
                == decodelab.generate(lm, p, method="greedy", max_new_tokens=12).token_ids)
    kw = dict(method="lookback", max_new_tokens=24, alpha=0.3, seed=5)
    together = decodelab.generate_batch(lm, PROMPTS, **kw)
    for i, (p, g) in enumerate(zip(PROMPTS, together)):
        assert g.token_ids == decodelab.generate(lm, p, **{**kw, "seed": 5 + i}).token_ids


def test_kl_min_and_choice_by_hand():
    p = torch.tensor([[0.5, 0.5]]).log()
    hist = torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]).log()
    assert kl_min(p, hist, torch.tensor([[True, True]])).item() == pytest.approx(0.0, abs=1e-6)
    expected = 0.5 * torch.tensor(0.5 / 0.9).log() + 0.5 * torch.tensor(0.5 / 0.1).log()
    assert kl_min(p, hist, torch.tensor([[False, True]])).item() == pytest.approx(float(expected), rel=1e-5)
    kl = torch.tensor([[0.1, 1.0, 2.0]])
    removed = torch.tensor([[True, False, False]])
    assert choose(kl, removed, None).item() == 1  # argmin among the candidates not removed


def test_sampled_choice_follows_softmax_of_minus_kl():
    """Pearson chi-square of 3000 draws against softmax(−KL) = [0.665, 0.245, 0.090] (k = 3); the test
    rejects at α_test = 0.001, so a correct rule fails 1 time in 1000; a rule sampling ∝ exp(+KL) or
    uniformly is rejected with power ≈ 1 (expected counts differ by hundreds)."""
    from scipy.stats import chisquare

    kl = torch.tensor([[0.0, 1.0, 2.0]])
    gen = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.cat([choose(kl, torch.zeros(1, 3, dtype=torch.bool), [gen]) for _ in range(3000)]),
                            minlength=3)
    expected = (-kl[0]).double().softmax(-1) * 3000
    assert chisquare(counts.tolist(), expected.tolist()).pvalue > 1e-3


def test_a_one_token_prompt_has_no_earlier_distribution_and_no_alarm():
    """A one-token prompt leaves the look-back window empty at the first step: KL_min is +inf (no alarm,
    a greedy step), not an error from a reduction over nothing — what a healed two-token prompt gives."""
    assert torch.equal(kl_min(torch.zeros(2, 3, 5).log_softmax(-1), torch.zeros(2, 0, 5), torch.ones(2, 0, dtype=torch.bool)),
                       torch.full((2, 3), float("inf")))
    lm = soft_lm("llama", seed=0)
    for prompt in ([65], [104]):
        got = decodelab.generate(lm, prompt, method="lookback", max_new_tokens=6, alpha=0.5)
        assert len(got.token_ids) == 6
        first = decodelab.generate(lm, prompt, method="greedy", max_new_tokens=1).token_ids
        assert got.token_ids[:1] == first
