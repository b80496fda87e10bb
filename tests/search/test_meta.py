"""Meta-generation: `best_of_n` returns the best-scoring of exactly the N samples that `n=N` sampling
gives with the same seed, scores are the model's log-likelihood; `self_consistency` returns a sample
with the majority answer; bad input is a clear error."""

from collections import Counter

import pytest
import torch

import decodelab

from fakes import tiny_lm

PROMPTS = ["def f(x):", "hello world"]


def _soft_lm():
    lm = tiny_lm("llama", seed=0)
    with torch.no_grad():  # spread out the sharpened head so samples differ
        lm.model.get_output_embeddings().weight.mul_(0.15)
    return lm


def _mean_logprob(lm, prompt_ids, completion):
    ids = torch.tensor([prompt_ids + completion])
    with torch.no_grad():
        logp = lm.model(ids).logits[0].float().log_softmax(-1)
    n = len(prompt_ids)
    return sum(logp[n + i - 1, t].item() for i, t in enumerate(completion)) / len(completion)


def test_best_of_n_is_the_best_of_the_same_seed_samples():
    lm = _soft_lm()
    samples = decodelab.generate_batch(lm, PROMPTS, method="sample", n=5, seed=11, max_new_tokens=8,
                                       temperature=0.9, top_p=0.95)
    best = decodelab.generate_batch(lm, PROMPTS, method="best_of_n", num_samples=5, seed=11, max_new_tokens=8,
                                    temperature=0.9, top_p=0.95)
    for b, (prompt, g) in enumerate(zip(PROMPTS, best)):
        mine = samples[b * 5: (b + 1) * 5]
        assert len({tuple(s.token_ids) for s in mine}) > 1  # the test would be vacuous otherwise
        assert sorted(c.token_ids for c in g.candidates) == sorted(s.token_ids for s in mine)
        ref = {tuple(s.token_ids): _mean_logprob(lm, lm.encode(prompt), s.token_ids) for s in mine}
        for c in g.candidates:
            assert c.score == pytest.approx(ref[tuple(c.token_ids)], abs=1e-4)
        assert [c.score for c in g.candidates] == sorted((c.score for c in g.candidates), reverse=True)
        assert tuple(g.token_ids) == max(ref, key=ref.get)


def test_single_prompt_matches_generate_batch_n_and_callable_scorer():
    lm = _soft_lm()
    samples = decodelab.generate_batch(lm, ["a"], method="sample", n=6, seed=3, max_new_tokens=6)
    longest = decodelab.generate(lm, "a", method="best_of_n", num_samples=6, seed=3, max_new_tokens=6,
                                 scorer=lambda text, ids: len(text.encode()))
    assert longest.text == max((s.text for s in samples), key=lambda t: len(t.encode()))
    summed = decodelab.generate(lm, "a", method="best_of_n", num_samples=6, seed=3, max_new_tokens=6,
                                scorer="sum_logprob")
    assert sorted(c.token_ids for c in summed.candidates) == sorted(s.token_ids for s in samples)


def test_self_consistency_returns_a_majority_answer():
    lm = _soft_lm()
    first_char = lambda text: text[:1]  # noqa: E731
    samples = decodelab.generate_batch(lm, ["a"], method="sample", n=9, seed=6, max_new_tokens=3)
    votes = Counter(first_char(s.text) for s in samples)
    g = decodelab.generate(lm, "a", method="self_consistency", num_samples=9, seed=6, max_new_tokens=3,
                           extract=first_char)
    assert len(votes) > 1 and sorted(votes.values())[-1] > sorted(votes.values())[-2]  # a strict majority answer
    top = max(votes.values())
    assert votes[first_char(g.text)] == top
    assert g.candidates[0].score == pytest.approx(top / 9)
    majority = [s for s in samples if votes[first_char(s.text)] == top]  # the most likely of them is returned
    assert g.token_ids == max(majority, key=lambda s: _mean_logprob(lm, lm.encode("a"), s.token_ids)).token_ids
    assert [c.score for c in g.candidates] == sorted((c.score for c in g.candidates), reverse=True)


@pytest.mark.parametrize("params, message", [
    (dict(inner="best_of_n"), "meta method"),
    (dict(inner="no_such_method"), "unknown method"),
    (dict(scorer="bogus"), "scorer"),
    (dict(num_samples=0), "num_samples"),
])
def test_bad_input_is_a_clear_error(params, message):
    with pytest.raises(ValueError, match=message):
        decodelab.generate(tiny_lm("llama"), "a", method="best_of_n", max_new_tokens=2, **params)


def test_edit_similarity_on_hand_made_sequences():
    from decodelab.search.meta import edit_similarity

    assert edit_similarity([1, 2, 3], [1, 2, 3]) == 1.0
    assert edit_similarity([1, 2, 3], [1, 3]) == pytest.approx(1 - 1 / 3)  # one deletion
    assert edit_similarity([1, 2], [3, 4]) == 0.0 and edit_similarity([], []) == 1.0
    assert edit_similarity([5, 1, 2, 3], [1, 2, 3, 5]) == pytest.approx(0.5)  # delete + insert


def test_mbr_picks_the_candidate_with_the_highest_mean_utility():
    from decodelab.search.meta import edit_similarity

    lm = _soft_lm()
    samples = decodelab.generate_batch(lm, ["a"], method="sample", n=5, seed=2, max_new_tokens=6)
    g = decodelab.generate(lm, "a", method="mbr", num_samples=5, seed=2, max_new_tokens=6)
    ids = [s.token_ids for s in samples]
    expected = [sum(edit_similarity(y, z) for j, z in enumerate(ids) if j != i) / 4 for i, y in enumerate(ids)]
    assert len(set(expected)) > 1
    assert sorted(c.score for c in g.candidates) == pytest.approx(sorted(expected))
    assert g.token_ids == ids[max(range(5), key=expected.__getitem__)]
    same = decodelab.generate(lm, "a", method="mbr", num_samples=5, seed=2, max_new_tokens=6,
                              utility=lambda a, b: float(a == b))  # self-consistency on whole texts
    votes = Counter(s.text for s in samples)
    assert votes[same.text] == max(votes.values())


@pytest.mark.parametrize("method", ["best_of_n", "adaptive_best_of_k"])
def test_token_healing_runs_the_inner_method_healed_and_scores_against_the_backed_up_prompt(method):
    """With token_healing the inner method heals the same boundary: best_of_n's candidates are exactly
    `generate_batch(n=N, token_healing=True)`'s rows with the same seeds, each scored by its mean
    log-likelihood after the backed-up prompt; the returned text leaves out the re-covered part."""
    from decodelab.constraints import heal

    lm = _soft_lm()
    prompts = ["def f(x):", "hello wor"]
    kw = dict(seed=11, max_new_tokens=8, temperature=0.9, token_healing=True)
    samples = decodelab.generate_batch(lm, prompts, method="sample", n=4, **kw)
    params = {"num_samples": 4} if method == "best_of_n" else {"max_samples": 4, "budget": 4.0}
    best = decodelab.generate_batch(lm, prompts, method=method, **params, **kw)
    for b, (prompt, g) in enumerate(zip(prompts, best)):
        kept, removed = heal(lm, lm.encode(prompt))
        ref = {tuple(c.token_ids): _mean_logprob(lm, kept, c.token_ids) for c in g.candidates}
        if method == "best_of_n":
            mine = samples[b * 4: (b + 1) * 4]
            assert len({tuple(s.token_ids) for s in mine}) > 1
            assert sorted(c.token_ids for c in g.candidates) == sorted(s.token_ids for s in mine)
        for c in g.candidates:
            assert c.score == pytest.approx(ref[tuple(c.token_ids)], abs=1e-4)
            assert lm.decode(c.token_ids[:1]).startswith(removed)
        assert tuple(g.token_ids) == max(ref, key=ref.get)
        assert g.text == lm.decode(g.token_ids)[len(removed):]


def test_meta_methods_under_a_grammar_constraint():
    """The inner method runs under the request's grammar: every candidate (and the answer) obeys it."""
    import re

    lm = tiny_lm("llama", seed=1)
    for method in ("best_of_n", "mbr", "self_consistency"):
        g = decodelab.generate(lm, "x", method=method, num_samples=3, seed=2, max_new_tokens=8,
                               constraint={"regex": "[ab]{2,6}"})
        assert re.fullmatch("[ab]{2,6}", g.text) and len(g.candidates) == 3
        assert all(re.fullmatch("[ab]{2,6}", lm.decode([t for t in c.token_ids if t not in lm.eos_token_ids]))
                   for c in g.candidates)


@pytest.mark.parametrize("penalty", [{"repetition_penalty": 1.3}, {"presence_penalty": 0.5, "frequency_penalty": 0.2}])
def test_best_of_n_with_penalties_is_the_best_of_the_same_penalised_samples(penalty):
    """Penalties are sampling parameters like any other (they were once taken for token healing and refused)."""
    lm = _soft_lm()
    kw = dict(seed=3, max_new_tokens=6, temperature=0.9, **penalty)
    samples = decodelab.generate_batch(lm, PROMPTS[:1], method="sample", n=4, **kw)
    best = decodelab.generate(lm, PROMPTS[0], method="best_of_n", num_samples=4, **kw)
    assert best.token_ids in [s.token_ids for s in samples]
