"""Constrained generation under every method (issue 13).

- every method's output satisfies its constraint (builtin:pyco, several constraints, prompts, seeds);
- constrained greedy of every lossless method equals constrained `greedy`, token for token;
- constrained `speculative` (a sampled draft) and `pld` / `recycling` (deterministic drafts) sample
  the exact constrained distribution (chi-square, α and power below);
- the grammar's end stops with finish_reason "stop"; running out of tokens is "length" + incomplete;
- invalid constraints are one-line ValueErrors raised before any forward pass.
"""

import math

import pytest
import torch
from constraint_cases import CHOICES, CONSTRAINTS, exact_outcomes, flat_lm, satisfied
from scipy.stats import chi2, ncx2

import decodelab
from decodelab.cli import main as cli_main

from fakes import tiny_lm
from stat_utils import ALPHA, chi2_pvalue

METHODS = ["greedy", "sample", "speculative", "pld", "jacobi", "lookahead", "recycling", "tree", "selfspec"]
LOSSLESS = [m for m in METHODS if m not in ("greedy", "sample")]
CPU_SIZES = {"recycling": {"widths": "4,6,4,2"}, "lookahead": {"W": 3, "G": 3}}


@pytest.fixture(scope="module")
def pyco():
    return decodelab.load("builtin:pyco")


# ---- every method, builtin:pyco --------------------------------------------------------------------
PYCO_PROMPTS = ["x = ", "def area(r):\n    return ", "result = f(", "# config\nDEBUG = "]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_output_satisfies_the_constraint(pyco, method):
    """Two (constraint, prompt, seed) cases per method, rotating so every constraint is used; sampled at
    temperature 0.8 except greedy."""
    i = METHODS.index(method)
    for k in (2 * i, 2 * i + 1):
        constraint = CONSTRAINTS[k % len(CONSTRAINTS)]
        temperature = 0.0 if method == "greedy" else 0.8
        g = decodelab.generate(pyco, PYCO_PROMPTS[k % len(PYCO_PROMPTS)], method=method, max_new_tokens=48,
                               seed=k, temperature=temperature, constraint=constraint,
                               **CPU_SIZES.get(method, {}))
        assert g.finish_reason == "stop" and g.incomplete is False, (method, constraint, g.text)
        assert satisfied(constraint, g.text), (method, constraint, g.text)


# ---- T = 0: every lossless method equals constrained greedy ---------------------------------------------
def _tiny_models():
    target = tiny_lm("llama", seed=0)
    target.state["drafts"] = {"tiny-draft": tiny_lm("llama", seed=1)}
    return target


TINY = _tiny_models()
TINY_CASES = [("def f(x):", {"regex": r"[a-c]{2,5}(x|yz)+"}), ("abcabcabc", {"choice": ["abcab", "abd", "b"]}),
              ("{", CONSTRAINTS[1]), ("hello hello", CONSTRAINTS[6]), ("zzzz", CONSTRAINTS[2])]


def _needs(method: str) -> dict:
    return {"draft": "tiny-draft"} if "draft" in decodelab.methods()[method].params else {}


@pytest.mark.parametrize("method", LOSSLESS)
def test_constrained_lossless_methods_equal_constrained_greedy(method):
    for prompt, constraint in TINY_CASES:
        want = decodelab.generate(TINY, prompt, max_new_tokens=24, constraint=constraint)
        got = decodelab.generate(TINY, prompt, method=method, max_new_tokens=24, constraint=constraint,
                                 **_needs(method), **CPU_SIZES.get(method, {}))
        assert (got.token_ids, got.finish_reason) == (want.token_ids, want.finish_reason), (method, prompt)


# ---- sampling: the exact constrained distribution ---------------------------------------------------------
N_SAMPLES = 400
DIST_PROMPT = "abc"
DIST_CONSTRAINT = {"choice": ["cat", "car", "cab", "dog", "do", "a"]}


def min_detectable_effect(n: int, cells: int, alpha: float = ALPHA, power: float = 0.9) -> float:
    """Smallest Cohen's w = sqrt(Σ (p1 − p0)² / p0) that a chi-square test of n samples over `cells`
    outcomes detects with probability `power` at level `alpha`."""
    crit = chi2.ppf(1 - alpha, cells - 1)
    lo, hi = 0.0, 5.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ncx2.sf(crit, cells - 1, n * mid * mid) < power else (lo, mid)
    return hi


@pytest.fixture(scope="module")
def dist_models():
    target = flat_lm(0)
    target.state["drafts"] = {"flat-draft": flat_lm(3)}  # a different distribution: drafts get rejected
    return target


@pytest.mark.parametrize("method", ["sample", "speculative", "pld", "recycling", "awrs"])
def test_constrained_sampling_matches_the_exact_constrained_distribution(dist_models, method):
    """α = 1e-3 per test. Power: with 400 samples over the 6 outcomes the test detects any alternative with
    Cohen's w ≥ 0.28 with probability ≥ 0.9 (min_detectable_effect); sampling from the draft's own
    constrained distribution instead of the target's (what skipping verification gives) is w ≈ 0.85."""
    exact = exact_outcomes(dist_models, DIST_PROMPT, DIST_CONSTRAINT)
    extra = {"draft": "flat-draft"} if method == "speculative" else {}
    samples = [decodelab.generate(dist_models, DIST_PROMPT, method=method, temperature=1.0, seed=s,
                                  max_new_tokens=6, constraint=DIST_CONSTRAINT, **extra).text
               for s in range(N_SAMPLES)]
    assert chi2_pvalue(samples, exact) > ALPHA, (method, exact)


@pytest.mark.parametrize("method", ["tree", "lookahead", "jacobi", "selfspec"])
def test_the_other_lossless_methods_sample_the_exact_constrained_distribution_in_a_batch(dist_models, method):
    """The same test for the remaining lossless methods, each as one batch of 400 rows (row b: seed b, its own
    generator), which is also the path generate_batch takes; α, power and the alternative as above."""
    exact = exact_outcomes(dist_models, DIST_PROMPT, DIST_CONSTRAINT)
    extra = {"draft": "flat-draft"} if "draft" in decodelab.methods()[method].params else {}
    gens = decodelab.generate_batch(dist_models, [DIST_PROMPT], n=N_SAMPLES, method=method, temperature=1.0, seed=0,
                                    max_new_tokens=6, constraint=DIST_CONSTRAINT, **extra, **CPU_SIZES.get(method, {}))
    assert gens[0].stats.batch_size == N_SAMPLES
    assert chi2_pvalue([g.text for g in gens], exact) > ALPHA, (method, exact)


def test_distribution_test_power():
    """The figures quoted above: w* < 0.28 at n = 400, and the draft-only alternative is far beyond it."""
    assert min_detectable_effect(N_SAMPLES, 6) < 0.28
    target = exact_outcomes(flat_lm(0), DIST_PROMPT, DIST_CONSTRAINT)
    draft = exact_outcomes(flat_lm(3), DIST_PROMPT, DIST_CONSTRAINT)
    w = math.sqrt(sum((draft.get(k, 0) - p) ** 2 / p for k, p in target.items()))
    assert w > 0.5


# ---- ends, batches, streams --------------------------------------------------------------------------------
def test_grammar_end_stops_and_length_flags_incomplete():
    g = decodelab.generate(TINY, "abc", max_new_tokens=20, constraint={"choice": CHOICES})
    assert g.finish_reason == "stop" and not g.incomplete and g.text in CHOICES
    assert g.to_dict()["incomplete"] is False
    short = decodelab.generate(TINY, "abc", max_new_tokens=2, constraint={"json_schema": CONSTRAINTS[0]["json_schema"]})
    assert short.finish_reason == "length" and short.incomplete is True
    assert "incomplete" not in decodelab.generate(TINY, "abc", max_new_tokens=2).to_dict()
    cut = decodelab.generate(TINY, "abc", max_new_tokens=20, constraint={"regex": "[a-d]{10}"}, stop="bb")
    assert cut.finish_reason == "stop" and cut.incomplete is True  # a stop string is not the grammar's end


def test_batch_rows_match_single_runs_and_stream_carries_the_text():
    prompts = ["a", "hello hello", "zzzz", "def f(x):"]
    constraint = {"regex": r"[a-z]{1,3}(, [a-z]{1,3}){0,3}"}
    batch = decodelab.generate_batch(TINY, prompts, max_new_tokens=20, constraint=constraint)
    for prompt, row in zip(prompts, batch):
        alone = decodelab.generate(TINY, prompt, max_new_tokens=20, constraint=constraint)
        assert (row.token_ids, row.finish_reason) == (alone.token_ids, alone.finish_reason)
    events = list(decodelab.stream(TINY, prompts[1], max_new_tokens=20, constraint=constraint))
    assert "".join(e.text for e in events) == events[-1].generation.text == batch[1].text


@pytest.mark.parametrize("method", ["pld", "speculative"])
def test_constrained_speculative_batch_rows_match_single_runs(method):
    """Each row keeps its own grammar state in a batch (row b: seed s + b), greedy and sampled."""
    prompts = ["hello", "abc d", "x", "def f(x):\n  "]
    constraint = {"regex": r"[a-z]{1,3}(, [a-z]{1,3}){0,4}"}
    for temperature in (0.0, 0.8):
        batch = decodelab.generate_batch(TINY, prompts, method=method, max_new_tokens=16, seed=3, constraint=constraint,
                                         temperature=temperature, **_needs(method))
        for i, (prompt, row) in enumerate(zip(prompts, batch)):
            alone = decodelab.generate(TINY, prompt, method=method, max_new_tokens=16, seed=3 + i, constraint=constraint,
                                       temperature=temperature, **_needs(method))
            assert row.token_ids == alone.token_ids and satisfied(constraint, row.text), (method, prompt)


# ---- bad input -------------------------------------------------------------------------------------------
BAD = [({"regex": "(ab"}, "invalid regex"), ({"lark": "start: foo"}, "foo"),
       ({"json_schema": {"type": "objec"}}, "objec"), ({"json_schema": {"$ref": "#/nope"}}, "nope"),
       ({"xml": "<a/>"}, "unknown constraint key 'xml'"), ({"choice": []}, "non-empty list"),
       ({"choice": ["a", 3]}, "non-empty strings"), ({"regex": "a", "choice": ["a"]}, "exactly one"),
       ("a|b", "must be a dict"), ({"json_schema": "{oops"}, "not valid JSON"),
       ({"json_schema": {"type": "array", "uniqueItems": True}}, "Unimplemented keys")]  # refused, not ignored


@pytest.mark.parametrize("constraint, message", BAD)
def test_invalid_constraint_is_a_one_line_value_error_before_generation(constraint, message):
    lm = tiny_lm("llama", seed=0)
    lm.model.register_forward_pre_hook(lambda *a: (_ for _ in ()).throw(AssertionError("model ran")))
    with pytest.raises(ValueError, match=message) as err:
        decodelab.generate(lm, "x", constraint=constraint)
    assert "\n" not in str(err.value)


def test_cli_constraint_flags(capsys, tmp_path):
    assert cli_main(["generate", "x = ", "--choice", "True,False", "--max-new-tokens", "8", "--json"]) == 0
    out = __import__("json").loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["text"] in ("True", "False") and out["finish_reason"] == "stop" and out["incomplete"] is False
    schema = tmp_path / "s.json"
    schema.write_text('{"type": "objec"}')
    assert cli_main(["generate", "x", "--json-schema", str(schema)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("decodelab: error: invalid json_schema") and err.count("\n") == 1
    assert cli_main(["generate", "x", "--regex", "a", "--choice", "a"]) == 2
    assert "at most one constraint" in capsys.readouterr().err


def test_constraint_holds_with_penalties_and_warpers():
    constraint = {"regex": r"(ab|ba){2,4}"}
    for params in (dict(repetition_penalty=1.5), dict(temperature=0.7, top_k=3, top_p=0.9), dict(no_repeat_ngram_size=2)):
        for seed in range(3):
            g = decodelab.generate(TINY, "xyz", method="sample", seed=seed, max_new_tokens=12, constraint=constraint,
                                   **params)
            assert satisfied(constraint, g.text) or g.finish_reason == "length", (params, g.text)
            assert torch.isfinite(torch.tensor(g.token_ids, dtype=torch.float)).all()


def test_fast_forward_feeds_forced_tokens_and_changes_no_token(pyco):
    """Forced JSON keys go in as drafts (p = 1 under the mask) — in greedy itself too: the tokens of the
    plain one-token-per-pass loop, in fewer target passes than tokens."""
    from decodelab.methods.autoregressive import autoregressive

    schema = CONSTRAINTS[1]
    want = decodelab.generate(pyco, "x = ", max_new_tokens=40, constraint=schema)
    for method in ("greedy", "jacobi"):
        got = decodelab.generate(pyco, "x = ", method=method, max_new_tokens=40, constraint=schema)
        assert got.token_ids == want.token_ids
        assert got.stats.forced_tokens > 0 and got.stats.forward_passes < len(got.token_ids)
    from dataclasses import replace

    from decodelab.constraints import compile_constraint
    from decodelab.engine import run_method

    plain = replace(decodelab.methods()["greedy"], run=autoregressive)  # the loop without fast-forward
    ids = pyco.encode("x = ")
    events = list(run_method(plain, pyco, [ids], plain.check_params({}), 40, None, [],
                             compile_constraint(pyco, schema)))
    assert events[-1].generation.token_ids == want.token_ids


def test_a_token_outside_the_grammar_stops_the_row_with_the_reason():
    """Defence in depth: a method that emits a token the grammar rejects (a bug) ends that row with
    `error` set and `incomplete=True`, instead of returning unconstrained text."""
    from types import SimpleNamespace

    from decodelab.constraints import compile_constraint
    from decodelab.engine import run_method

    def bad_method(ctx):
        yield [[ord("a")]]
        yield [[ord("z")]]

    info = SimpleNamespace(name="bad", run=bad_method, refuse=lambda **options: None)
    grammar = compile_constraint(TINY, {"regex": "a[bc]+"})
    params = decodelab.methods()["greedy"].check_params({})
    events = list(run_method(info, TINY, [TINY.encode("x")], params, 10, None, [], grammar))
    g = events[-1].generation
    assert g.finish_reason == "stop" and g.incomplete is True and "not allowed" in g.error


@pytest.mark.parametrize("method", LOSSLESS)
def test_constrained_batch_rows_equal_rows_alone(method):
    """One constraint over a ragged batch, every lossless method, greedy and sampled: each row is the row
    generated alone (its own grammar state, its own seed) — the batch runs as one batch, not row by row."""
    prompts = [p for p, _ in TINY_CASES]
    constraint = {"regex": r"[a-d]{1,6}(xy|z)+"}
    for temperature in (0.0, 0.9) if method != "greedy" else (0.0,):
        batch = decodelab.generate_batch(TINY, prompts, method=method, max_new_tokens=20, seed=11,
                                         temperature=temperature, constraint=constraint, **_needs(method),
                                         **CPU_SIZES.get(method, {}))
        assert batch[0].stats.batch_size == len(prompts)  # one batch
        for b, (prompt, got) in enumerate(zip(prompts, batch)):
            alone = decodelab.generate(TINY, prompt, method=method, max_new_tokens=20, seed=11 + b,
                                       temperature=temperature, constraint=constraint, **_needs(method),
                                       **CPU_SIZES.get(method, {}))
            assert (got.token_ids, got.finish_reason) == (alone.token_ids, alone.finish_reason), (method, b)
            assert satisfied(constraint, got.text) or got.finish_reason == "length"
