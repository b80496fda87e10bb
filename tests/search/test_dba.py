"""`dba` (Post & Vilar, arXiv:1804.06609): every output holds every constraint phrase; the bank rule
(sizes, passing unused slots down, score order inside a bank) on hand-made candidates; a deviating
partial match loses its progress; with every hypothesis's constraints met a step is plain top-K beam
search; bad input is a one-line ValueError."""

import pytest
import torch

import decodelab
from decodelab.search.dba import Hyp, Progress, allocate, bank_sizes, dba_step

from fakes import ARCHS, tiny_lm

PROMPTS = ["def f(x):", "hello world hello", "ab"]
PHRASES = ["abc", " zz", "Q"]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_phrase_appears_batched(arch):
    lm = tiny_lm(arch, seed=3)
    gens = decodelab.generate_batch(lm, PROMPTS, method="dba", constraints=PHRASES, max_new_tokens=14,
                                    num_beams=4, num_return_sequences=2)
    for p, g in zip(PROMPTS, gens):
        assert all(ph in g.text for ph in PHRASES), g.text
        assert g.token_ids == g.candidates[0].token_ids and len(g.candidates) == 2
        alone = decodelab.generate(lm, p, method="dba", constraints=PHRASES, max_new_tokens=14, num_beams=4)
        assert alone.token_ids == g.token_ids  # a row does not depend on the batch
    plain = decodelab.generate_batch(lm, PROMPTS, method="beam", max_new_tokens=14, num_beams=4)
    assert not all(all(ph in g.text for ph in PHRASES) for g in plain)  # the constraints did something


def test_bank_sizes_and_allocation_by_hand():
    assert bank_sizes(4, [5, 5, 5]) == [1, 1, 2]  # ⌊4/3⌋ each, remainder to the top bank
    assert bank_sizes(4, [5, 3, 0]) == [1, 3, 0]  # the empty top bank passes its 2 slots down
    assert bank_sizes(4, [5, 0, 1]) == [3, 0, 1]  # ... and bank 1 passes on what it cannot use
    assert bank_sizes(5, [9, 9]) == [2, 3]
    # (score, bank): bank 2 gets 2 slots but has one candidate; bank 1 then gets 2 of its 3, by score
    cands = [(-1.0, 0), (-9.0, 2), (-2.0, 1), (-3.0, 1), (-0.5, 1), (-0.1, 0)]
    assert allocate(4, cands, 3) == [1, 4, 2, 5]
    # too few in the banks' shares: the slots left go to the best candidates left
    assert sorted(allocate(3, [(-1.0, 0), (-5.0, 0), (-2.0, 0)], 2)) == [0, 1, 2]


def test_progress_rule():
    phrases = [[1, 2, 3], [7]]
    s = Progress((False, False))
    assert s.advancing(phrases) == {1, 7}
    s = s.step(1, phrases).step(2, phrases)
    assert (s.phrase, s.matched, s.count(phrases), s.advancing(phrases)) == (0, 2, 2, {3})
    lost = s.step(9, phrases)  # a deviation loses the partial match
    assert (lost.phrase, lost.count(phrases)) == (-1, 0)
    restart = s.step(1, phrases)  # ... and the deviating token may start the phrase again
    assert (restart.phrase, restart.matched) == (0, 1)
    done = s.step(3, phrases).step(7, phrases)
    assert done.done() and done.count(phrases) == 4 and done.advancing(phrases) == set()


def test_step_with_every_constraint_met_is_plain_beam():
    torch.manual_seed(0)
    k, phrases = 3, [[5, 6]]
    met = Progress((True,))
    hyps = [Hyp([i], -float(i), met) for i in range(k)]
    logp = torch.randn(k, 20).log_softmax(-1)
    kept = dba_step(hyps, logp, k, phrases, eos={19})
    total = (logp + torch.tensor([-0.0, -1.0, -2.0])[:, None]).flatten()
    top = total.topk(k).indices.tolist()
    assert sorted((h, hyp.tokens[-1]) for h, hyp in kept) == sorted((i // 20, i % 20) for i in top)


def test_eos_invalid_until_met_and_k1_on_greedy_path_is_greedy():
    lm = tiny_lm("llama", seed=3)
    greedy = decodelab.generate(lm, PROMPTS[0], method="greedy", max_new_tokens=10)
    first = greedy.token_ids[:3]  # a phrase given as token ids, met by the greedy path from the start
    dba = decodelab.generate(lm, PROMPTS[0], method="dba", constraints=[first], num_beams=1, max_new_tokens=10)
    assert dba.token_ids == greedy.token_ids  # the constraint is met on the greedy path: nothing changes
    phrases, unmet = [[5]], Progress((False,))
    logp = torch.full((1, 8), -10.0)
    logp[0, 7] = 0.0  # EOS is by far the best token
    (_, hyp), = dba_step([Hyp([], 0.0, unmet)], logp, 1, phrases, eos={7})
    assert hyp.tokens == [5] and not hyp.finished


def test_composes_with_a_grammar_constraint():
    lm = tiny_lm("llama", seed=3)
    g = decodelab.generate(lm, "x", method="dba", constraints=["abc"], max_new_tokens=10,
                           constraint={"regex": "[a-z]{10}"})
    assert "abc" in g.text and g.text.isalpha() and g.text.islower()


@pytest.mark.parametrize("kw, match", [
    ({}, "non-empty list"), (dict(constraints=[]), "non-empty list"), (dict(constraints=[""]), "cannot produce"),
    (dict(constraints=["abc"], num_return_sequences=5), "num_return_sequences"),
    (dict(constraints='["ab"'), "JSON"), (dict(constraints=["a" * 20]), "max_new_tokens"),
])
def test_bad_input(kw, match):
    lm = tiny_lm("llama", seed=3)
    with pytest.raises(ValueError, match=match):
        decodelab.generate(lm, "x", method="dba", max_new_tokens=10, **kw)


def test_composes_with_the_history_penalties():
    """Penalties read each hypothesis's token history (a long tensor from the first step on): with
    no_repeat_ngram_size=2 no candidate's token completes a bigram seen before it, and every phrase still
    appears (prompts whose own bigrams do not block a phrase: "ab" would forbid "abc"); repetition_penalty
    runs too."""
    lm = tiny_lm("llama", seed=3)
    for kw in ({"no_repeat_ngram_size": 2}, {"repetition_penalty": 1.5}):
        gens = decodelab.generate_batch(lm, PROMPTS[:2], method="dba", constraints=PHRASES, max_new_tokens=14,
                                        num_beams=4, num_return_sequences=2, **kw)
        for p, g in zip(PROMPTS[:2], gens):
            assert all(ph in g.text for ph in PHRASES), (kw, g.text)
            if "no_repeat_ngram_size" in kw:
                for c in g.candidates:
                    seq, start = lm.encode(p) + c.token_ids, len(lm.encode(p))
                    for j in range(start, len(seq)):  # an output token never completes a bigram seen before
                        assert (seq[j - 1], seq[j]) not in set(zip(seq[: j - 1], seq[1:j])), (p, c.token_ids, j)
