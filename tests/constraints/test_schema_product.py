"""Every schema × every method × several seeds (issue 13's test list), sized for a 2-core CI.

The 42 schemas — the 30 test schemas (constraint_cases.SCHEMAS + MORE_SCHEMAS) and the 12 of the `json`
bench suite (constraints/json_suite.py, each with its own prompt) — run under each of the nine causal
methods in two batches per method, each row its own schema (a per-row grammar list through
`row_processors`, the path generate_batch takes) and seed:

- temperature 0, one row per schema: every output is complete and validates with `jsonschema`, and
  for the seven lossless methods it equals constrained `greedy`'s row token for token;
- temperature 1.5 (`greedy` refuses a temperature), two seeds per schema: every output is complete
  and validates;
- `awrs` (one sequence at a time): every schema, token-by-token and with 2 SMC particles.

The tiny random byte-level llama (tests/fakes.py) with its tiny draft: random text pushes every
string to its maxLength and every optional branch, which is what a validity test wants.
"""

import pytest
from constraint_cases import MORE_SCHEMAS, SCHEMAS, satisfied

import decodelab
from decodelab.constraints import compile_constraint
from decodelab.constraints.json_suite import CASES
from decodelab.engine import run_method

from fakes import tiny_lm

METHODS = ["greedy", "sample", "speculative", "pld", "jacobi", "lookahead", "recycling", "tree", "selfspec"]
LOSSLESS = [m for m in METHODS if m not in ("greedy", "sample")]
CPU_SIZES = {"recycling": {"widths": "4,6,4,2"}, "lookahead": {"W": 3, "G": 3}}
CONSTRAINTS = [{"json_schema": s} for s in SCHEMAS + MORE_SCHEMAS + [c[2] for c in CASES]]
PROMPTS = ["{"] * (len(SCHEMAS) + len(MORE_SCHEMAS)) + [c[1] for c in CASES]
SEEDS = 2  # sampled rows per schema
MAX_NEW = 200  # bytes: every output here ends within it (strings are bounded), checked by the "stop" assertion


@pytest.fixture(scope="module")
def lm():
    target = tiny_lm("llama", seed=0)
    target.state["drafts"] = {"tiny-draft": tiny_lm("llama", seed=1)}
    return target


@pytest.fixture(scope="module")
def grammars(lm):
    return [compile_constraint(lm, c) for c in CONSTRAINTS]


def _batch(lm, method: str, grammars: list, temperature: float, copies: int, seed: int) -> list:
    """One batch: row i·copies + j follows schema i with seed seed + row; returns the Generations."""
    info = decodelab.methods()[method]
    params = {"temperature": temperature, **CPU_SIZES.get(method, {})}
    if "draft" in info.params:
        params["draft"] = "tiny-draft"
    rows = [g for g in grammars for _ in range(copies)]
    prompts = [lm.encode(p) for p in PROMPTS for _ in range(copies)]
    events = run_method(info, lm, prompts, info.check_params(params), MAX_NEW, seed, [], rows)
    gens = {e.row: e.generation for e in events if e.generation is not None}
    assert gens[0].stats.batch_size == len(rows)  # one batch, not row by row
    return [gens[b] for b in range(len(rows))]


def _assert_valid(gens: list, copies: int, method: str) -> None:
    for b, g in enumerate(gens):
        constraint = CONSTRAINTS[b // copies]
        assert g.finish_reason == "stop" and g.incomplete is False, (method, b, g.text)
        assert satisfied(constraint, g.text), (method, b, g.text)


@pytest.fixture(scope="module")
def greedy_rows(lm, grammars):
    return _batch(lm, "greedy", grammars, 0.0, 1, 0)


@pytest.mark.parametrize("method", METHODS)
def test_every_schema_under_every_method_and_seed(lm, grammars, greedy_rows, method):
    assert len(CONSTRAINTS) == 42
    rows = _batch(lm, method, grammars, 0.0, 1, 0)
    _assert_valid(rows, 1, method)
    if method in LOSSLESS:
        assert [g.token_ids for g in rows] == [g.token_ids for g in greedy_rows], method
    if method != "greedy":
        sampled = _batch(lm, method, grammars, 1.5, SEEDS, 1000 * METHODS.index(method))
        _assert_valid(sampled, SEEDS, method)
        assert len({tuple(g.token_ids) for g in sampled}) > len(CONSTRAINTS)  # the seeds do differ


def test_every_schema_under_awrs(lm):
    """awrs runs one sequence at a time: each schema twice — token-by-token AWRS and SMC with 2 particles —
    at temperature 1.5, its own seed each. (Before AWRS took log p as a float64 log-softmax, a token whose
    p underflowed to 0 in float32 could not be drawn: 41 of the 42 ended empty on this peaked model.)"""
    for i, (constraint, prompt) in enumerate(zip(CONSTRAINTS, PROMPTS)):
        for particles in (1, 2):
            g = decodelab.generate(lm, prompt, method="awrs", max_new_tokens=MAX_NEW, seed=100 * particles + i,
                                   temperature=1.5, n_particles=particles, constraint=constraint)
            assert g.finish_reason == "stop" and g.incomplete is False, (i, particles, g.text)
            assert satisfied(constraint, g.text), (i, particles, g.text)
