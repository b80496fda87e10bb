"""decodelab.tasks: deterministic per seed, answers right (checked by an independent solver here)."""

from __future__ import annotations

import itertools
import re

import pytest

from decodelab import tasks
from decodelab.tasks import tokenizer


def _solve_list(prompt: str) -> str:
    head, _, rest = prompt.partition(" : ")
    values = rest.removesuffix(" =").split()
    words = head.split()
    op = words[0]
    if op == "copy":
        return " ".join(values)
    if op == "reverse":
        return " ".join(values[::-1])
    if op == "sort":
        return " ".join(sorted(values, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v)))
    if op == "insert":
        new, at = words[1], int(words[3])
        return " ".join(values[:at] + [new] + values[at:])
    if op == "remove":
        at = int(words[2])
        return " ".join(values[:at] + values[at + 1:])
    if op == "replace":
        at, new = int(words[2]), words[4]
        return " ".join(values[:at] + [new] + values[at + 1:])
    raise AssertionError(op)


def _latin_solutions(prompt: str) -> list[str]:
    cells = prompt.removeprefix("latin : ").removesuffix(" =").replace("| ", "").split()
    assert len(cells) == 16
    grid = [cells[4 * r:4 * r + 4] for r in range(4)]
    per_row = [[p for p in itertools.permutations("ABCD") if all(g in ("_", c) for g, c in zip(row, p))]
               for row in grid]
    found = []
    for rows in itertools.product(*per_row):
        if all(len({rows[r][c] for r in range(4)}) == 4 for c in range(4)):
            found.append(" | ".join(" ".join(r) for r in rows))
    return found


def test_names_and_determinism():
    assert tasks.names() == ["copy", "reverse", "sort", "insert", "remove", "replace", "latin4"]
    for task in tasks.names():
        a, b = tasks.make(task, 20, seed=5), tasks.make(task, 20, seed=5)
        assert a == b
        assert [i.prompt for i in tasks.make(task, 20, seed=6)] != [i.prompt for i in a]
        assert tasks.make(task, 5, seed=5) == a[:5]


@pytest.mark.parametrize("task", ["copy", "reverse", "sort", "insert", "remove", "replace"])
def test_list_answers_match_an_independent_solver(task):
    for item in tasks.make(task, 200, seed=1):
        assert item.answer == _solve_list(item.prompt), item
        assert 3 <= len(item.prompt.partition(" : ")[2].split()) - 1 <= 6


def test_latin_answers_are_the_unique_completion():
    for item in tasks.make("latin4", 40, seed=2):
        assert _latin_solutions(item.prompt) == [item.answer]
        assert item.prompt.count("_") >= 1


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown task"):
        tasks.make("sudoku", 1, 0)
    with pytest.raises(ValueError, match="n must be"):
        tasks.make("copy", -1, 0)


def test_tokenizer_is_exact_for_every_item():
    tok = tokenizer.build()
    assert tok.mask_token_id is not None and tok.eos_token_id is not None
    for task in tasks.names():
        for item in tasks.make(task, 50, seed=3):
            ids = tok.encode(f"{item.prompt} {item.answer}", add_special_tokens=False)
            assert tok.unk_token_id not in ids
            answer = tok.encode(item.answer, add_special_tokens=False)
            assert tok.decode(answer, skip_special_tokens=False, clean_up_tokenization_spaces=False) == item.answer
            assert re.fullmatch(r"[\w|_ ]+", item.answer)
