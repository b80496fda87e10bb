"""τ floors: every lossless method keeps proposing useful tokens.

A proposer can break without changing a single output token — verification keeps a lossless method
exact whatever it is offered — so only its speed shows it: prompt lookup copying the continuation one
position late still decodes exactly, at τ ≈ 1. Each method's τ (tokens per target forward, greedy) on a
fixed repetitive prompt must stay above a floor, set half-way between 1 and the τ measured when the
floor was written (`python -m pytest -q -p no:xdist tests/methods/test_tau_floors.py -s` prints them):

- builtin:pyco (draft methods use builtin:pyco-draft), 48 tokens after two copies of a small Python
  function: measured τ lookahead 1.62, pld 2.47, recycling 3.13, selfspec 1.21, speculative 2.24,
  tree 3.36;
- jacobi does not speed up a real model's greedy decoding (τ = 1.00 on the prompt above: a guess is
  conditioned on the rejected guesses before it), so its floor is on a tiny model whose next token
  depends only on the position, where Jacobi's update fixes the whole block at once: τ 4.70.
"""

import pytest
import torch

import decodelab

from fakes import rule_lm

BLOCK = "def area(width, height):\n    result = width * height\n    return result\n\n\n"
PROMPT = BLOCK * 2 + "def area(width, height):\n"
MAX_NEW = 48
PYCO_FLOORS = {"lookahead": 1.31, "pld": 1.73, "recycling": 2.06, "selfspec": 1.10, "speculative": 1.62,
               "tree": 2.18}
ALPHABET = torch.tensor(list(b"abcdefghijklmnopqrstuvwxyz"))
CLOCK_FLOORS = {"jacobi": 2.9}
LOSSLESS = sorted(n for n, m in decodelab.methods().items()
                  if m.lossless and m.kind == "causal" and n not in ("greedy", "sample"))


@pytest.fixture(scope="module")
def pyco():
    lm = decodelab.load("builtin:pyco")
    return lm, decodelab.generate(lm, PROMPT, max_new_tokens=MAX_NEW).token_ids


@pytest.fixture(scope="module")
def clock():
    """Next token = the alphabet at the next position, whatever came before."""
    lm = rule_lm(lambda ids, positions: ALPHABET[(positions + 1) % len(ALPHABET)])
    return lm, decodelab.generate(lm, "xyz", max_new_tokens=MAX_NEW).token_ids


def test_every_lossless_method_has_a_floor():
    missing = sorted(set(LOSSLESS) - set(PYCO_FLOORS) - set(CLOCK_FLOORS))
    assert not missing, f"add a τ floor for {missing} in {__file__}"


@pytest.mark.parametrize("method", sorted(PYCO_FLOORS) + sorted(CLOCK_FLOORS))
def test_tau_stays_above_its_floor(method, request):
    on_pyco = method in PYCO_FLOORS
    lm, want = request.getfixturevalue("pyco" if on_pyco else "clock")
    g = decodelab.generate(lm, PROMPT if on_pyco else "xyz", method=method, max_new_tokens=MAX_NEW)
    print(f"{method}: τ = {g.stats.mean_accepted:.2f}")
    assert g.token_ids == want
    assert g.stats.mean_accepted >= (PYCO_FLOORS if on_pyco else CLOCK_FLOORS)[method]
