"""`generate_batch(constraint=[...])`: one constraint per prompt, each row following its own grammar in
one batch — every row equals the same prompt run alone under its constraint (greedy, sampled with the
row's seed, a speculative method, n samples per prompt); bad lists are one clear error."""

import re

import pytest

import decodelab

from fakes import tiny_lm

PROMPTS = ["id: ", "name: ", "code: "]
CONSTRAINTS = [{"regex": r"[0-9]{3}-[0-9]{2}"}, {"regex": r"(alice|bob|carol)!"}, {"regex": r"[A-F]{4}"}]
PATTERNS = [r"[0-9]{3}-[0-9]{2}", r"(alice|bob|carol)!", r"[A-F]{4}"]


@pytest.fixture(scope="module")
def lm():
    target = tiny_lm("llama", seed=0)
    target.state["drafts"] = {"tiny-draft": tiny_lm("llama", seed=1)}
    return target


@pytest.mark.parametrize("method,kw", [("greedy", {}), ("sample", {"temperature": 1.5, "seed": 7}),
                                       ("speculative", {"draft": "tiny-draft", "temperature": 1.5, "seed": 7}),
                                       ("pld", {})])
def test_each_row_follows_its_own_constraint_and_equals_the_row_alone(lm, method, kw):
    batch = decodelab.generate_batch(lm, PROMPTS, method=method, constraint=CONSTRAINTS, max_new_tokens=12, **kw)
    for b, (prompt, constraint, pattern, got) in enumerate(zip(PROMPTS, CONSTRAINTS, PATTERNS, batch)):
        assert re.fullmatch(pattern, got.text), (method, got.text)
        row_kw = {**kw, "seed": kw["seed"] + b} if "seed" in kw else kw
        alone = decodelab.generate(lm, prompt, method=method, constraint=constraint, max_new_tokens=12, **row_kw)
        assert got.token_ids == alone.token_ids


def test_n_samples_of_a_prompt_follow_that_prompts_constraint(lm):
    gens = decodelab.generate_batch(lm, PROMPTS[:2], method="sample", n=3, constraint=CONSTRAINTS[:2],
                                    temperature=1.5, seed=0, max_new_tokens=12)
    assert [bool(re.fullmatch(PATTERNS[i // 3], g.text)) for i, g in enumerate(gens)] == [True] * 6


@pytest.mark.parametrize("kw,message", [
    (dict(constraint=CONSTRAINTS[:2]), "2 constraints for 3 prompts"),
    (dict(constraint=[CONSTRAINTS[0], None, CONSTRAINTS[2]]), "no None"),
    (dict(constraint=CONSTRAINTS, method="beam"), "one constraint for the whole batch"),
    (dict(constraint=[CONSTRAINTS[0], {"regex": "("}, CONSTRAINTS[2]]), "invalid regex constraint"),
])
def test_bad_per_prompt_constraints_are_one_clear_error(lm, kw, message):
    with pytest.raises(decodelab.UserError, match=message):
        decodelab.generate_batch(lm, PROMPTS, max_new_tokens=4, **kw)
