"""A mixed Engine (`Engine(lm, mixed=True)`): rows of different methods — greedy, sample and every
speculative method, each with its own parameters — share one batch: each row drafts with its own method's
proposer, all rows are verified in one target forward per step, and each row gets exactly the tokens it
gets alone (greedy rows equal greedy, sampled rows equal the row alone with the same seed), with rows
joining in waves and leaving at different times."""

import pytest
from test_batched import PROMPTS, SOFT, _needs

import decodelab
from decodelab.errors import UserError

# (method, its parameters, sampled?) — every method that has a per-row proposer, greedy and sampled
ROWS = [("greedy", {}, False), ("pld", {"num_draft_tokens": 4}, False), ("speculative", {}, True),
        ("sample", {"temperature": 1.0, "top_k": 20}, True), ("recycling", {"widths": "4,4,2"}, False),
        ("lookahead", {}, False), ("jacobi", {"block_size": 4}, False), ("tree", {}, False),
        ("selfspec", {"exit_layer": 1}, False), ("speculative", {"num_draft_tokens": 2}, False),
        ("pld", {"temperature": 0.9}, True)]


def _run(lm):
    engine = decodelab.Engine(lm, mixed=True)
    pending = list(enumerate(ROWS))
    rows, done, step = {}, {}, 0
    while pending or engine.busy:
        for _ in range(3 if step % 2 == 0 else 0):  # three rows join every other step
            if pending:
                i, (method, params, sampled) = pending.pop(0)
                kw = {**_needs(method), **params, **({"temperature": params.get("temperature", 1.0)} if sampled else {})}
                rows[engine.add(PROMPTS[i % len(PROMPTS)], max_new_tokens=10 + 2 * (i % 4), seed=50 + i,
                                method=method, **kw)] = (i, kw)
        for event in engine.step():
            if event.generation is not None:
                done[rows[event.row][0]] = (event.generation, rows[event.row][1])
        step += 1
    return engine, done


@pytest.mark.parametrize("backend", ["transformers", "native"])
def test_rows_of_different_methods_share_a_batch_and_equal_each_row_alone(backend):
    lm = SOFT[backend]
    engine, done = _run(lm)
    assert sorted(done) == list(range(len(ROWS)))
    passes_alone = 0
    for i, (gen, kw) in done.items():
        method = ROWS[i][0]
        alone = decodelab.generate(lm, PROMPTS[i % len(PROMPTS)], method=method, max_new_tokens=10 + 2 * (i % 4),
                                   seed=50 + i, **kw)
        assert gen.token_ids == alone.token_ids, (i, method)
        assert gen.method == method and gen.text == alone.text
        passes_alone += alone.stats.forward_passes
    # one target forward per step serves every method's rows: far fewer than the rows alone would need
    assert engine.stats.forward_passes < passes_alone / 2


def test_speculative_rows_with_one_draft_configuration_share_one_batch_drafter():
    lm = SOFT["native"]
    engine = decodelab.Engine(lm, mixed=True)
    for i in range(4):
        engine.add(PROMPTS[i], method="speculative", max_new_tokens=8, **_needs("speculative"))
    engine.add(PROMPTS[4], method="pld", max_new_tokens=8)
    while engine.busy:
        engine.step()
    assert len([key for key in engine._factories if key[0] == "speculative"]) == 1
    alone = sum(decodelab.generate(lm, PROMPTS[i], method="speculative", max_new_tokens=8,
                                   **_needs("speculative")).stats.draft_forward_passes for i in range(4))
    assert engine.stats.draft_forward_passes < alone / 2  # one draft forward per draft step for the 4 rows


def test_mixed_engine_errors_are_one_line():
    engine = decodelab.Engine(SOFT["native"], mixed=True)
    with pytest.raises(UserError, match="cannot share a batch"):
        engine.add(PROMPTS[0], method="beam")
    with pytest.raises(UserError, match="unknown parameter 'widths' for method 'pld'"):
        engine.add(PROMPTS[0], method="pld", widths="4,4")
    with pytest.raises(UserError, match="mixed=True"):
        decodelab.Engine(SOFT["native"], "greedy").add(PROMPTS[0], method="pld")
    with pytest.raises(UserError, match="takes no temperature"):
        engine.add(PROMPTS[0], method="greedy", temperature=0.5)
    assert not engine.busy  # nothing was added by the failed calls
