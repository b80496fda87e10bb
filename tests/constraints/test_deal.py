"""DeAL: reward-guided search finds what the reward asks for, inside the constraint."""

import pytest
from constraint_cases import CONSTRAINTS, satisfied

import decodelab

from fakes import tiny_lm

LM = tiny_lm("llama", seed=0)
LETTERS = {"regex": "[a-d]{6}"}


def _count(text: str, words) -> int:
    return sum(w in text for w in words)


def test_keyword_reward_is_found_and_beats_greedy():
    """Greedy writes "dcbbbb"; the search finds both words (a greedy look-ahead finds a word it can reach
    in ≤ 4 likely steps — "abc" alone it misses: DeAL is a heuristic search, not an exhaustive one)."""
    words = ["ba", "cd"]
    greedy = decodelab.generate(LM, "hello", max_new_tokens=8, constraint=LETTERS)
    found = decodelab.generate(LM, "hello", method="deal", reward="keyword:ba,cd", max_new_tokens=8,
                               constraint=LETTERS)
    assert satisfied(LETTERS, found.text) and found.finish_reason == "stop"
    assert _count(found.text, words) == 2 > _count(greedy.text, words), (found.text, greedy.text)


def test_callable_reward_and_json_reward_under_a_schema():
    g = decodelab.generate(LM, "x", method="deal", reward=lambda t: t.count("c"), max_new_tokens=8, constraint=LETTERS)
    assert g.text.count("c") >= 5, g.text
    schema = CONSTRAINTS[1]
    j = decodelab.generate(LM, "{", method="deal", reward="json", branching=2, keep=2, lookahead=2,
                           max_new_tokens=40, constraint=schema)
    assert j.finish_reason == "stop" and satisfied(schema, j.text), j.text


@pytest.mark.parametrize("reward", ["keyword", "length:x", 3, "nope"])
def test_bad_reward_is_a_one_line_value_error(reward):
    with pytest.raises(ValueError, match="reward") as err:
        decodelab.generate(LM, "x", method="deal", reward=reward)
    assert "\n" not in str(err.value)


def test_final_states_are_ranked_candidates():
    g = decodelab.generate(LM, "hello", method="deal", reward="keyword:ba,cd", max_new_tokens=8, constraint=LETTERS)
    if not hasattr(g, "candidates"):
        pytest.skip("Generation.candidates not available")
    scores = [c.score for c in g.candidates]
    assert scores == sorted(scores, reverse=True) and g.candidates[0].text == g.text and len(scores) == 4
