"""`best_first_beam` returns what the paper says: the same hypothesis as beam search of the same width
(Meister et al.'s beam search: complete hypotheses keep their place in the beam), written here as a
from-scratch reference; with one beam it is greedy; the queue cap keeps a valid answer."""

import pytest
import torch

import decodelab

from fakes import tiny_lm

PROMPTS = ["def f(x):", "hello world hello", "ab", "import os\nimport"]


def _reference_beam(lm, prompt, k, max_new):
    """B_t = top-k of the complete hypotheses of B_{t−1} and the children of its incomplete ones;
    stop when every hypothesis in the beam is complete; return the best."""
    ids, eos = lm.encode(prompt), lm.eos_token_ids
    beam = [(0.0, [])]
    done = lambda h: bool(h) and (h[-1] in eos or len(h) >= max_new)  # noqa: E731
    while not all(done(h) for _, h in beam):
        cand = [(s, h) for s, h in beam if done(h)]
        for s, h in beam:
            if not done(h):
                with torch.no_grad():
                    logp = lm.model(torch.tensor([ids + h])).logits[0, -1].float().log_softmax(-1)
                top, tok = logp.topk(k)
                cand += [(s + lp, h + [t]) for lp, t in zip(top.tolist(), tok.tolist())]
        beam = sorted(cand, key=lambda c: -c[0])[:k]
    return max(beam, key=lambda c: c[0])


@pytest.mark.parametrize("k", [2, 3])
def test_best_first_equals_beam_search_of_the_same_width(k):
    lm = tiny_lm("llama", seed=3)
    lm.__dict__["eos_token_ids"] = frozenset({256, 85})  # a frequent token ends hypotheses early
    ended = 0
    for p in PROMPTS:
        score, hyp = _reference_beam(lm, p, k, 10)
        g = decodelab.generate(lm, p, method="best_first_beam", num_beams=k, max_new_tokens=10)
        assert g.token_ids == hyp
        assert g.candidates[0].score == pytest.approx(score, abs=1e-4)
        ended += len(hyp) < 10
    assert ended > 0


def test_one_beam_is_greedy_and_a_capped_queue_still_answers():
    lm = tiny_lm("qwen2", seed=1)
    for p in PROMPTS[:2]:
        greedy = decodelab.generate(lm, p, max_new_tokens=8).token_ids
        assert decodelab.generate(lm, p, method="best_first_beam", num_beams=1, max_new_tokens=8).token_ids == greedy
        capped = decodelab.generate(lm, p, method="best_first_beam", num_beams=3, max_queue=4, max_new_tokens=8)
        assert len(capped.token_ids) >= 1 and capped.candidates


def test_under_a_choice_constraint_returns_the_most_likely_choice():
    """k ≥ the number of choices: nothing valid is pruned, so the first complete pop is the choice (+ EOS)
    of highest raw log-likelihood, with that score."""
    lm = tiny_lm("llama", seed=2)
    choices = ["abc", "hello", "xy"]

    def logprob(prompt, tokens):
        ids = lm.encode(prompt) + tokens
        with torch.no_grad():
            logp = lm.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        n = len(lm.encode(prompt))
        return float(sum(logp[n + i - 1, t] for i, t in enumerate(tokens)))

    for prompt in ("a", "def f(x):"):
        g = decodelab.generate(lm, prompt, method="best_first_beam", num_beams=3, max_new_tokens=8,
                               constraint={"choice": choices})
        score, best = max((logprob(prompt, lm.encode(c) + [256]), c) for c in choices)
        assert g.text == best and g.candidates[0].score == pytest.approx(score, rel=1e-6)
