"""Per-row penalty state (processors/history.py `TokenHistory`): a row view advanced over new tokens,
rolled back over removed ones and forked gives exactly what the stateless processor recomputes from
the whole history — on walks that move like a speculative verifier does (extend a branch, abandon it,
take a sibling, accept a prefix)."""

from __future__ import annotations

import random

import pytest
import torch

from decodelab.processors import NoRepeatNGram, PresenceFrequencyPenalty, RepetitionPenalty, Sampler
from decodelab.processors.history import TokenHistory

V = 23  # a small vocabulary: tokens repeat often, so n-grams recur and counts exceed 1
PROMPT = 7


def processors():
    return [RepetitionPenalty(1.7), PresenceFrequencyPenalty(0.4, 0.9, PROMPT), NoRepeatNGram(2), NoRepeatNGram(3)]


def walk(seed: int, steps: int = 120):
    """Histories a verifier visits: the committed prefix grows; drafts branch off it and are dropped."""
    rng = random.Random(seed)
    committed = [rng.randrange(V + 2) for _ in range(PROMPT)]  # ids ≥ V occur (ignored like transformers)
    for _ in range(steps):
        branch = [rng.randrange(V) for _ in range(rng.randrange(1, 6))]
        for j in range(1, len(branch) + 1):
            yield committed + branch[:j]  # walk down a draft
        if rng.random() < 0.3:
            yield committed[: rng.randrange(PROMPT, len(committed) + 1)]  # back up (a fork's other beam)
        committed = committed + branch[: rng.randrange(len(branch) + 1)] + [rng.randrange(V)]  # accept a prefix
        yield committed


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("index", range(4))
def test_row_view_equals_recomputing_from_the_history(seed, index):
    stateless = processors()[index]
    view = stateless.for_row(0, PROMPT)
    g = torch.Generator().manual_seed(seed)
    for history in walk(seed):
        ids = torch.tensor([history])
        scores = torch.randn(1, V, generator=g)
        torch.testing.assert_close(view(ids, scores), stateless(ids, scores), rtol=0, atol=0)
    assert view.history is not None and view.history.tokens == history  # the state was used, and kept up


def test_state_moves_by_the_difference_only():
    """Counts after a long walk equal a fresh state's: nothing leaks from abandoned branches."""
    state = TokenHistory(V, PROMPT, ngram=3)
    for history in walk(5):
        state.seek(history)
    fresh = TokenHistory(V, PROMPT, ngram=3)
    fresh.seek(history)
    assert torch.equal(state.counts, fresh.counts) and torch.equal(state.generated, fresh.generated)
    assert state.follow == fresh.follow


def test_fork_is_independent():
    state = TokenHistory(V, PROMPT, ngram=2)
    state.seek(list(range(10)))
    twin = state.fork()
    twin.seek(list(range(10)) + [3, 3, 3])
    state.seek(list(range(5)))
    assert state.tokens == list(range(5)) and twin.tokens == list(range(10)) + [3, 3, 3]
    again = TokenHistory(V, PROMPT, ngram=2)
    again.seek(list(range(10)) + [3, 3, 3])
    assert torch.equal(twin.counts, again.counts) and twin.follow == again.follow
    assert sorted(twin.banned()) == [3, 4] and state.banned() == []  # 3 was followed by 4 and by 3


def test_each_row_of_a_sampler_keeps_its_own_state():
    sampler = Sampler({"temperature": 1.0, "repetition_penalty": 2.0, "presence_penalty": 1.0}, prompt_len=4)
    rows = [sampler.for_row(b, 3) for b in range(2)]
    logits = torch.zeros(1, V)
    a = rows[0].probs(torch.tensor([[1, 2, 3, 5]]), logits)
    b = rows[1].probs(torch.tensor([[4, 4, 4, 6, 6]]), logits)
    assert a[0, 5] < a[0, 6] and b[0, 6] < b[0, 5]  # each row penalises its own generated tokens
    ref = sampler.for_row(0, 3).probs(torch.tensor([[1, 2, 3, 5]]), logits)
    torch.testing.assert_close(rows[0].probs(torch.tensor([[1, 2, 3, 5]]), logits), ref)
