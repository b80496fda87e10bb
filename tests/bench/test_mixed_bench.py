"""`python -m decodelab.bench.mixed`: both modes decode every row of every method, to the same tokens
(greedy's, at temperature 0); bad arguments are one line."""

import decodelab
from decodelab.bench.mixed import _run, main

from fakes import tiny_lm


def test_mixed_and_separate_engines_give_every_row_greedys_tokens():
    lm = tiny_lm("llama", seed=0)
    prompts = ["def f(x):", "hello world", "abcabcabc"]
    _, mixed = _run(lm, ["greedy", "pld", "jacobi"], prompts, 10, True)
    _, separate = _run(lm, ["greedy", "pld", "jacobi"], prompts, 10, False)
    assert mixed == separate and len(mixed) == 9
    for (method, i), tokens in mixed.items():
        assert tokens == decodelab.generate(lm, prompts[i], max_new_tokens=10).token_ids, method


def test_bad_arguments_are_one_line(capsys):
    assert main(["--methods", "greedy"]) == 2
    err = capsys.readouterr().err.strip()
    assert "two or more methods" in err and len(err.splitlines()) == 1
