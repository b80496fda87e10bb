"""Grammars and token healing per row of the continuous Engine (`Engine.add(constraint=…, token_healing=…)`).

Each constrained or healed row joins a running batch beside plain rows and rows with other grammars, and
gets exactly what `generate` gives it alone — the same tokens at temperature 0, the same tokens for the
same seed when sampling (so the same distribution, which tests/constraints/ tests with stated power) —
including fast-forwarded grammar-forced tokens, on both backends, for plain decoding and speculative
methods, in an Engine of one method and in a mixed one. Its output satisfies its grammar and carries
`incomplete=False`; what cannot be done is one clear error that loses no other row.
"""

import re

import pytest
from test_batched import SHARP, SOFT, _needs

import decodelab
from decodelab.errors import UserError

PROMPTS = ["id: ", "name:", "code =", "def f(x):\n    return", "answer: "]
PATTERNS = [r"[0-9]{3}-[0-9]{2}", r" ?(alice|bob|carol)!", r" ?[A-F]{4}", None, r" ?(yes|no)\."]
WAVES = {0: [0, 1], 2: [2], 3: [3, 4]}  # step → rows that join before it


def _row(i: int) -> dict:
    constraint = {"regex": PATTERNS[i]} if PATTERNS[i] else None
    return dict(constraint=constraint, token_healing=i % 2 == 1, seed=30 + i, max_new_tokens=10 + i)


def _run(engine, per_row) -> dict:
    rows, done, step = {}, {}, 0
    while step <= max(WAVES) or engine.busy:
        for i in WAVES.get(step, []):
            rows[engine.add(PROMPTS[i], **_row(i), **per_row(i))] = i
        for event in engine.step():
            if event.generation is not None:
                done[rows[event.row]] = event.generation
        step += 1
    return done


CASES = [  # (method, engine made with mixed=True, sampled)
    ("greedy", True, False), ("sample", True, True), ("pld", False, False), ("speculative", False, True),
    ("tree", False, False)]


@pytest.mark.parametrize("backend", ["transformers", "native"])
@pytest.mark.parametrize("method,mixed,sampled", CASES)
def test_constrained_and_healed_rows_in_a_running_batch_equal_each_row_alone(method, mixed, sampled, backend):
    lm = (SOFT if sampled else SHARP)[backend]
    params = {**_needs(method), **({"temperature": 1.0} if sampled else {})}
    engine = decodelab.Engine(lm, method, mixed=mixed, **params)
    done = _run(engine, lambda i: {})
    assert sorted(done) == list(range(len(PROMPTS)))
    for i, gen in done.items():
        alone = decodelab.generate(lm, PROMPTS[i], method=method, **_row(i), **params)
        assert gen.token_ids == alone.token_ids and gen.text == alone.text, (method, i)
        if PATTERNS[i] is not None:
            assert re.fullmatch(PATTERNS[i], gen.text), gen.text
            assert gen.incomplete is False and gen.finish_reason == "stop"
        else:
            assert gen.incomplete is None


def test_a_mixed_engine_takes_constrained_rows_of_every_method():
    """Rows of different methods, each under its own grammar (or none, or healed), in one batch."""
    lm = SOFT["native"]
    methods = [("greedy", {}), ("pld", {}), ("speculative", {"temperature": 1.0, **_needs("speculative")}),
               ("sample", {"temperature": 1.0, "top_k": 20}), ("lookahead", {})]
    engine = decodelab.Engine(lm, mixed=True)
    done = _run(engine, lambda i: {"method": methods[i][0], **methods[i][1]})
    for i, gen in done.items():
        method, params = methods[i]
        alone = decodelab.generate(lm, PROMPTS[i], method=method, **_row(i), **params)
        assert gen.method == method and gen.token_ids == alone.token_ids, method


def test_fast_forward_saves_forward_passes_in_the_engine():
    """A grammar that forces most of its text: the Engine's row feeds forced tokens at once, in fewer
    steps than tokens, as `generate` does."""
    lm = SHARP["native"]
    constraint = {"regex": r"status: (accepted|rejected) by reviewer [0-9]"}
    engine = decodelab.Engine(lm, mixed=True)
    b = engine.add("x", constraint=constraint, max_new_tokens=40)
    gen = None
    while engine.busy:
        gen = next((e.generation for e in engine.step() if e.row == b and e.generation), gen)
    alone = decodelab.generate(lm, "x", constraint=constraint, max_new_tokens=40)
    assert gen.token_ids == alone.token_ids and re.fullmatch(constraint["regex"], gen.text)
    assert gen.stats.forward_passes < len(gen.token_ids) / 2


def test_generate_batch_with_max_batch_runs_grammars_on_the_engine():
    """`generate_batch(max_batch=…)` with per-prompt constraints and token healing: a rolling window on the
    Engine, the same outputs as one batch."""
    lm = SOFT["transformers"]
    constraints = [{"regex": p} if p else {"regex": "[a-z]{2,4}"} for p in PATTERNS]
    kw = dict(method="sample", temperature=1.0, seed=11, max_new_tokens=12, constraint=constraints, token_healing=True)
    windowed = decodelab.generate_batch(lm, PROMPTS, max_batch=2, **kw)
    whole = decodelab.generate_batch(lm, PROMPTS, **kw)
    assert [g.token_ids for g in windowed] == [g.token_ids for g in whole]
    assert all(g.incomplete is False for g in windowed)


def test_what_the_engine_cannot_do_is_one_clear_error_and_loses_no_row():
    lm = SHARP["transformers"]
    engine = decodelab.Engine(lm, "greedy")
    engine.add(PROMPTS[3], max_new_tokens=8)  # a running row the refusals must not disturb
    cases = [
        (dict(constraint={"regex": "a+"}), r"needs an Engine that verifies drafts: .*mixed=True"),
        (dict(token_healing="yes"), "token_healing must be True or False"),
        (dict(token_healing=True, logprobs=2), "logprobs are defined without token healing"),
    ]
    for kw, message in cases:
        with pytest.raises(UserError, match=message):
            engine.add(PROMPTS[0], **kw)
    with pytest.raises(UserError, match="invalid regex constraint"):
        decodelab.Engine(lm, "pld").add(PROMPTS[0], constraint={"regex": "("})
    with pytest.raises(UserError, match="unknown constraint key"):
        decodelab.Engine(lm, "greedy", mixed=True).add(PROMPTS[0], constraint={"xml": "a"})
    for option, value in (("constraint", {"regex": "a+"}), ("token_healing", True)):
        with pytest.raises(UserError, match=f"takes {option} per row: pass it to Engine.add"):
            decodelab.Engine(lm, "greedy", **{option: value})
    gens = []
    while engine.busy:
        gens += [e.generation for e in engine.step() if e.generation]
    assert [g.token_ids for g in gens] == [decodelab.generate(lm, PROMPTS[3], max_new_tokens=8).token_ids]
    assert engine.rows == {} and len(engine.ctx.prompts) == 1  # the refused rows never joined
