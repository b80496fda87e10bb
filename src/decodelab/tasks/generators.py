"""The task generators. Each takes a `random.Random` and returns (prompt, answer) strings.

Lists hold 3–6 values, either numbers 0–99 or names (ParallelBench's Waiting Line uses both);
indices are 0-based. A Latin-square item blanks cells of a random 4×4 Latin square until just
before the completion would stop being unique, capped at `LATIN_BLANKS` cells.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from ..errors import UserError

NAMES = ("ada", "ben", "cleo", "dan", "eve", "finn", "gus", "hana", "ivy", "jon", "kim", "leo", "mia",
         "ned", "olga", "pia")
SYMBOLS = ("A", "B", "C", "D")
MIN_LEN, MAX_LEN = 3, 6
LATIN_BLANKS = 6


@dataclass(frozen=True)
class Item:
    task: str
    prompt: str
    answer: str


def _values(rng: random.Random, n: int | None = None) -> list[str]:
    n = n or rng.randint(MIN_LEN, MAX_LEN)
    if rng.random() < 0.5:
        return [str(v) for v in rng.sample(range(100), n)]
    return rng.sample(NAMES, n)


def _new_value(rng: random.Random, values: list[str]) -> str:
    pool = NAMES if values[0] in NAMES else [str(v) for v in range(100)]
    return rng.choice([v for v in pool if v not in values])


def _sort_key(value: str):
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def copy(rng):
    v = _values(rng)
    return f"copy : {' '.join(v)} =", " ".join(v)


def reverse(rng):
    v = _values(rng)
    return f"reverse : {' '.join(v)} =", " ".join(reversed(v))


def sort(rng):
    v = _values(rng)
    return f"sort : {' '.join(v)} =", " ".join(sorted(v, key=_sort_key))


def insert(rng):
    v = _values(rng, rng.randint(MIN_LEN, MAX_LEN - 1))
    new, at = _new_value(rng, v), rng.randint(0, len(v))
    return f"insert {new} at {at} : {' '.join(v)} =", " ".join(v[:at] + [new] + v[at:])


def remove(rng):
    v = _values(rng)
    at = rng.randrange(len(v))
    return f"remove at {at} : {' '.join(v)} =", " ".join(v[:at] + v[at + 1:])


def replace(rng):
    v = _values(rng)
    new, at = _new_value(rng, v), rng.randrange(len(v))
    return f"replace at {at} with {new} : {' '.join(v)} =", " ".join(v[:at] + [new] + v[at + 1:])


@cache
def latin_squares() -> tuple[tuple[tuple[int, ...], ...], ...]:
    """All 576 Latin squares of order 4 (rows are permutations, columns hold distinct symbols)."""
    perms = list(itertools.permutations(range(4)))
    out = []
    for rows in itertools.product(perms, repeat=4):
        if all(len({r[c] for r in rows}) == 4 for c in range(4)):
            out.append(rows)
    return tuple(out)


def _completions(cells: dict[tuple[int, int], int]) -> int:
    return sum(all(sq[r][c] == v for (r, c), v in cells.items()) for sq in latin_squares())


def _grid(square, blanks=frozenset()) -> str:
    rows = [" ".join("_" if (r, c) in blanks else SYMBOLS[square[r][c]] for c in range(4)) for r in range(4)]
    return " | ".join(rows)


def latin4(rng):
    square = rng.choice(latin_squares())
    blanks: set[tuple[int, int]] = set()
    order = [(r, c) for r in range(4) for c in range(4)]
    rng.shuffle(order)
    for cell in order:
        if len(blanks) == LATIN_BLANKS:
            break
        trial = blanks | {cell}
        known = {(r, c): square[r][c] for r in range(4) for c in range(4) if (r, c) not in trial}
        if _completions(known) == 1:
            blanks = trial
    return f"latin : {_grid(square, frozenset(blanks))} =", _grid(square)


TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "copy": copy, "reverse": reverse, "sort": sort, "insert": insert, "remove": remove,
    "replace": replace, "latin4": latin4,
}


def names() -> list[str]:
    """The task names, in a fixed order."""
    return list(TASKS)


def make(task: str, n: int, seed: int = 0) -> list[Item]:
    """`n` items of `task`; the same (task, n, seed) always gives the same items."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UserError(f"n must be an integer ≥ 0, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"seed must be an integer, got {seed!r}")
    rng = random.Random(f"{task}:{seed}")
    return [Item(task, *TASKS[task](rng)) for _ in range(n)]
