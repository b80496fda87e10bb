"""Fast-forward for plain greedy / sampling (constraints/fastforward.py), as a test-only method.

`greedy` and `sample` use it under a constraint (methods/autoregressive.py); here it also runs as a
registered test method, compared with the plain one-token-per-pass loop (`plain_test`) under the same
constraints.
"""

import pytest
from constraint_cases import exact_outcomes, flat_lm

import decodelab
from decodelab.constraints.fastforward import fast_forward_loop
from decodelab.constraints.json_suite import CASES
from decodelab.methods import registry

from fakes import tiny_lm
from stat_utils import ALPHA, chi2_pvalue

CHOICE = {"choice": ["cat", "car", "cab", "dog", "do", "a"]}  # after "d" the "o" is forced


@pytest.fixture(scope="module", autouse=True)
def ff_method():
    from decodelab.methods.autoregressive import autoregressive

    registry.register("ff_test", description="test-only: plain decoding with fast-forward", lossless=True,
                      batched=True)(fast_forward_loop)
    registry.register("plain_test", description="test-only: plain decoding, no fast-forward", lossless=True,
                      batched=True, temperature=0.0)(autoregressive)
    yield "ff_test"
    registry._REGISTRY.pop("ff_test")
    registry._REGISTRY.pop("plain_test")


def test_greedy_with_fast_forward_equals_constrained_greedy_in_fewer_passes():
    pyco = decodelab.load("builtin:pyco")
    for _, prompt, schema, _ in CASES[:3]:
        constraint = {"json_schema": schema}
        want = decodelab.generate(pyco, prompt, method="plain_test", max_new_tokens=80, constraint=constraint)
        got = decodelab.generate(pyco, prompt, method="ff_test", max_new_tokens=80, constraint=constraint)
        assert decodelab.generate(pyco, prompt, max_new_tokens=80, constraint=constraint).token_ids == got.token_ids
        assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason
        assert got.stats.forced_tokens > 0 and got.stats.forward_passes < want.stats.forward_passes


def test_sampling_with_fast_forward_has_the_exact_constrained_distribution():
    """α = 1e-3; 400 samples over 6 outcomes detect Cohen's w ≥ 0.28 with probability ≥ 0.9
    (test_constrained.py, min_detectable_effect). Forced tokens occur (outputs starting with "d")."""
    lm = flat_lm(0)
    exact = exact_outcomes(lm, "abc", CHOICE)
    gens = [decodelab.generate(lm, "abc", method="ff_test", temperature=1.0, seed=s, max_new_tokens=6,
                               constraint=CHOICE) for s in range(400)]
    assert sum(g.stats.forced_tokens for g in gens) > 20
    assert chi2_pvalue([g.text for g in gens], exact) > ALPHA


def test_batch_rows_equal_single_runs_when_sampling():
    lm = tiny_lm("llama", seed=1)
    prompts = ["a", "hello", "zz", "def f(x):"]
    constraint = {"regex": r"(do|cat)( (do|cat)){0,3}"}
    batch = decodelab.generate_batch(lm, prompts, method="ff_test", temperature=0.8, seed=7, max_new_tokens=16,
                                     constraint=constraint)
    for i, (prompt, row) in enumerate(zip(prompts, batch)):
        alone = decodelab.generate(lm, prompt, method="ff_test", temperature=0.8, seed=7 + i, max_new_tokens=16,
                                   constraint=constraint)
        assert row.token_ids == alone.token_ids
    assert sum(g.stats.forced_tokens for g in batch) > 0
