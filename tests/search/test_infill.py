"""`self_infill` (Zheng et al., arXiv:2311.17972) on builtin:pyco (trained with fill-in-the-middle): no
interruption (τ = 0) is plain greedy; an interruption at the first step (τ = 1) gives exactly suffix =
forced 'return' line + the greedy continuation of `<fim_prefix> prompt <fim_suffix> forced` to the
function's end, then middle = the greedy infill of `<fim_prefix> prompt <fim_suffix> suffix
<fim_middle>`, output prefix + middle + suffix; the stop rules on hand-made text; a model without FIM
tokens is refused."""

import pytest

import decodelab
from decodelab.search.infill import _function_end, _reaches, psm

from fakes import tiny_lm

PROMPT = 'def add(a, b):\n    """Add a and b."""'


@pytest.fixture(scope="module")
def pyco():
    return decodelab.load("builtin:pyco")


def test_no_interruption_is_greedy(pyco):
    ours = decodelab.generate(pyco, PROMPT, method="self_infill", infill_threshold=0.0, max_new_tokens=24)
    assert ours.token_ids == decodelab.generate(pyco, PROMPT, method="greedy", max_new_tokens=24).token_ids


def _greedy_until(lm, context, n, stop):
    out = decodelab.generate(lm, context, method="greedy", max_new_tokens=n).token_ids
    for i in range(1, len(out) + 1):
        keep = stop(out[:i])
        if keep is not None:
            return out[:keep]
    return [t for t in out if t not in lm.eos_token_ids]


def _infill(lm, prompt, suffix, n):
    first = next(ln.strip() for ln in lm.decode(suffix).split("\n") if ln.strip())
    reaches, end = _reaches(lm, first), _function_end(lm)
    return _greedy_until(lm, psm(lm, prompt, suffix), n, lambda t: reaches(t) if reaches(t) is not None else end(t))


def test_interrupted_at_once_is_suffix_then_middle_then_one_loop(pyco):
    n = 40
    prompt = pyco.encode(PROMPT)
    forced = pyco.encode("\n    return")
    tail = _greedy_until(pyco, psm(pyco, prompt, [])[:-1] + forced, n - len(forced) - 1, _function_end(pyco))
    suffix = forced + tail
    middle = _infill(pyco, prompt, suffix, n - len(suffix))
    ours = decodelab.generate(pyco, PROMPT, method="self_infill", infill_threshold=1.0, max_iters=0, max_new_tokens=n)
    assert ours.token_ids == middle + suffix
    assert pyco.decode(suffix).startswith("\n    return")
    # one loop: the suffix again, left to right after the middle, then the middle re-infilled for it
    at_start = pyco.decode(prompt + middle).endswith("\n")
    new_suffix = _greedy_until(pyco, prompt + middle, n - len(middle), _function_end(pyco, at_start))
    new_middle = _infill(pyco, prompt, new_suffix, n - len(new_suffix)) if new_suffix else []
    looped = decodelab.generate(pyco, PROMPT, method="self_infill", infill_threshold=1.0, max_new_tokens=n)
    assert looped.token_ids == (new_middle + new_suffix if new_middle else middle + suffix)


def test_stop_rules_on_hand_made_text(pyco):
    ids = pyco.encode("    x = 1\n    return x\n\ndef g():\n")
    keep = _function_end(pyco)
    cut = next(keep(ids[:i]) for i in range(1, len(ids) + 1) if keep(ids[:i]) is not None)
    assert pyco.decode(ids[:cut]) == "    x = 1\n    return x\n\n"
    assert _function_end(pyco, line_start=True)(pyco.encode("def")) == 0  # a column-0 line right away
    assert _function_end(pyco)(pyco.encode("def")) is None
    reach = _reaches(pyco, "return x")
    cut = next(reach(ids[:i]) for i in range(1, len(ids) + 1) if reach(ids[:i]) is not None)
    assert pyco.decode(ids[:cut]) == "    x = 1"


def test_layout_and_non_fim_model_refused(pyco):
    assert psm(pyco, [10, 11], [12]) == [4, 10, 11, 5, 12, 6]  # <fim_prefix> P <fim_suffix> S <fim_middle>
    with pytest.raises(decodelab.ModelError, match="fill-in-the-middle"):
        decodelab.generate(tiny_lm("llama"), "x", method="self_infill", infill_threshold=1.0, max_new_tokens=8)
