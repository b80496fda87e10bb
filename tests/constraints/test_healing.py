"""Token healing: the prompt loses its last token, the first generated token re-covers its text."""

import pytest
from constraint_cases import satisfied

import decodelab
from decodelab.constraints import heal

from fakes import tiny_lm

TINY = tiny_lm("llama", seed=0)
TINY.state["drafts"] = {"tiny-draft": tiny_lm("llama", seed=1)}


@pytest.fixture(scope="module")
def pyco():
    return decodelab.load("builtin:pyco")


def test_first_token_re_covers_the_removed_prompt_token(pyco):
    for prompt in ["x = ", "def f(x):\n    ", "import os\n", "print("]:
        ids = pyco.encode(prompt)
        kept, removed = heal(pyco, ids)
        assert kept == ids[:-1] and removed == pyco.decode(ids[-1:])
        g = decodelab.generate(pyco, prompt, max_new_tokens=6, token_healing=True)
        full = pyco.decode(g.token_ids)
        assert full.startswith(removed) and g.text == full[len(removed):], prompt


def test_healing_changes_the_prompt_boundary_and_is_off_by_default(pyco):
    """"x = " ends in a space the model never saw alone: unhealed greedy starts with " #", healed with a name."""
    plain = decodelab.generate(pyco, "x = ", max_new_tokens=4)
    assert plain.token_ids == decodelab.generate(pyco, "x = ", max_new_tokens=4, token_healing=False).token_ids
    healed = decodelab.generate(pyco, "x = ", max_new_tokens=4, token_healing=True)
    assert healed.token_ids[0] != plain.token_ids[0]
    assert pyco.decode(healed.token_ids[:1]).startswith(" ")


@pytest.mark.parametrize("method", ["speculative", "pld", "recycling", "tree", "lookahead", "jacobi", "selfspec"])
def test_healing_keeps_lossless_methods_equal_to_greedy(method):
    extra = {"draft": "tiny-draft"} if method in ("speculative", "tree") else {}
    for prompt in ["hello wor", "abcabcab", "def f(x):\n  "]:
        for constraint in (None, {"regex": r"[a-z ]{1,12}"}):
            want = decodelab.generate(TINY, prompt, max_new_tokens=12, token_healing=True, constraint=constraint)
            got = decodelab.generate(TINY, prompt, method=method, max_new_tokens=12, token_healing=True,
                                     constraint=constraint, **extra)
            assert got.token_ids == want.token_ids, (method, prompt, constraint)


def test_healing_with_a_constraint_constrains_the_text_after_the_prompt(pyco):
    constraint = {"regex": r"[0-9]{1,3}"}
    for prompt in ["x = ", "n = int(", "return "]:
        g = decodelab.generate(pyco, prompt, max_new_tokens=8, token_healing=True, constraint=constraint)
        assert g.finish_reason == "stop" and satisfied(constraint, g.text), (prompt, g.text)


def test_single_token_prompt_and_bad_flag():
    g = decodelab.generate(TINY, "a", max_new_tokens=3, token_healing=True)  # nothing to back up
    assert g.token_ids == decodelab.generate(TINY, "a", max_new_tokens=3).token_ids
    with pytest.raises(ValueError, match="token_healing must be True or False"):
        decodelab.generate(TINY, "ab", token_healing="yes")


@pytest.mark.parametrize("constraint", [{"choice": ["yes", "no", "maybe"]}, {"lark": 'start: "(" /[0-9]/ ")"'},
                                        {"json_schema": {"enum": [1, 22]}}, {"regex": "[xy]{2}"}])
def test_healing_composes_with_every_constraint_kind(constraint):
    for method in ("greedy", "pld"):
        g = decodelab.generate(TINY, "hello wor", method=method, max_new_tokens=8, token_healing=True,
                               constraint=constraint, seed=0, temperature=0.0 if method == "greedy" else 1.0)
        assert g.finish_reason == "stop" and satisfied(constraint, g.text), (constraint, g.text)


LOSSLESS = ["speculative", "pld", "jacobi", "lookahead", "recycling", "tree", "selfspec"]
SIZES = {"recycling": {"widths": "4,6,4,2"}, "lookahead": {"W": 3, "G": 3}}


def _batch_equals_alone(lm, method: str, prompts: list[str], **params) -> None:
    batch = decodelab.generate_batch(lm, prompts, method=method, token_healing=True, seed=7, **params)
    assert batch[0].stats.batch_size == len(prompts), method  # one batch, not row by row
    for b, (prompt, got) in enumerate(zip(prompts, batch)):
        alone = decodelab.generate(lm, prompt, method=method, token_healing=True, seed=7 + b, **params)
        assert (got.token_ids, got.text, got.finish_reason) == (alone.token_ids, alone.text, alone.finish_reason), \
            (method, prompt, params)


@pytest.mark.parametrize("method", LOSSLESS)
def test_healed_speculative_batch_rows_equal_rows_alone(method):
    """Token healing under a speculative method runs as one ragged batch (each row its own healed prompt,
    first-token mask and seed): every row equals the row generated alone, greedy and sampled, with and
    without a constraint."""
    extra = {"draft": "tiny-draft"} if "draft" in decodelab.methods()[method].params else {}
    prompts = ["hello wor", "abcabcab", "def f(x):\n  ", "a"]  # "a": nothing to back up
    # recycling's adjacency matrix is shared by the rows (tests/methods/test_batched.py): sampled rows keep
    # their distribution but not seed-for-seed identity, so it is compared at temperature 0 only
    for temperature in (0.0,) if method == "recycling" else (0.0, 0.9):
        for constraint in (None, {"regex": r"[a-z ]{1,12}"}):
            _batch_equals_alone(TINY, method, prompts, max_new_tokens=12, temperature=temperature,
                                constraint=constraint, **extra, **SIZES.get(method, {}))


@pytest.mark.parametrize("method", ["pld", "speculative"])
def test_healed_batch_on_pyco(pyco, method):
    """The same on builtin:pyco, whose BPE tokens make healing's first-token mask hold many tokens."""
    _batch_equals_alone(pyco, method, ["x = ", "def f(x):\n    ", "import o", "print("], max_new_tokens=10,
                        temperature=0.8)


@pytest.mark.parametrize("method", ["sample", "speculative", "pld", "tree"])
def test_healed_constrained_sampling_has_the_exact_healed_distribution(method):
    """Healing + a constraint + sampling: 400 rows in one batch against the exact law of healed, constrained
    sampling (constraint_cases.exact_outcomes walks it with the same processors). α = 1e-3; with 400 samples
    over the 6 outcomes the test detects any Cohen's w ≥ 0.28 with probability ≥ 0.9 (test_constrained.py's
    min_detectable_effect). On this byte-level tokenizer the healed first token can only be the removed byte,
    so the healed law is the unhealed one: what is tested is healing's machinery (backed-up prompt, first-token
    mask, healed grammar, batch) under sampling, not a change of distribution."""
    from constraint_cases import exact_outcomes, flat_lm

    from stat_utils import ALPHA, chi2_pvalue

    lm = flat_lm(0)
    lm.state["drafts"] = {"flat-draft": flat_lm(3)}
    prompt, constraint = "abc d", {"choice": ["cat", "car", "cab", "dog", "do", "a"]}
    exact = exact_outcomes(lm, prompt, constraint, token_healing=True)
    assert len(exact) == 6
    extra = {"draft": "flat-draft"} if method in ("speculative", "tree") else {}
    gens = decodelab.generate_batch(lm, [prompt], n=400, method=method, temperature=1.0, seed=0, max_new_tokens=8,
                                    token_healing=True, constraint=constraint, **extra)
    assert gens[0].stats.batch_size == 400
    assert chi2_pvalue([g.text for g in gens], exact) > ALPHA, (method, exact)


def test_every_causal_method_heals_or_refuses(pyco):
    """token_healing is never silently ignored: under every causal method the first generated token
    re-covers the removed prompt text and `text` leaves it out — or the method refuses with a one-line
    error naming token_healing (self_infill: not left to right; superposed: raw logits)."""
    from decodelab.methods.registry import methods

    extra = {"dba": {"constraints": ["self"]}}
    refused = set()
    for name, info in sorted(methods().items()):
        if info.kind != "causal":
            continue
        for prompt in ("print(", "for i in ra"):
            _, removed = heal(pyco, pyco.encode(prompt))
            try:
                g = decodelab.generate(pyco, prompt, method=name, max_new_tokens=3, token_healing=True, seed=0,
                                       **extra.get(name, {}))
            except ValueError as error:
                assert "token_healing" in str(error) and "\n" not in str(error), (name, str(error))
                refused.add(name)
                continue
            full = pyco.decode([t for t in g.token_ids if t not in pyco.eos_token_ids])
            assert full.startswith(removed) and g.text == full[len(removed):], (name, prompt, full, g.text)
    assert refused == {"self_infill", "superposed"}


def test_healing_mask_keeps_only_tokens_that_re_cover_the_text_and_never_turns_a_row_nan(pyco):
    """The first-token mask as a processor: -inf wherever a token's text does not start with the removed
    text; where an earlier processor already set every such token to -inf (a penalty), the row keeps 0 at
    them instead of a NaN softmax. Past the first position it changes nothing."""
    import torch

    from decodelab.constraints import HealingMask
    from decodelab.constraints.healing import decoded_vocab

    vocab = decoded_vocab(pyco)
    mask = HealingMask(pyco, ["(", ""], prompt_len=3)
    scores = torch.randn(2, pyco.vocab_size)
    out = mask(torch.zeros(2, 3, dtype=torch.long), scores)
    ok = torch.tensor([v.startswith("(") for v in vocab])
    assert torch.equal(torch.isfinite(out[0]), ok) and torch.equal(out[0][ok], scores[0][ok])
    assert torch.equal(out[1], scores[1])  # an unhealed row
    penalised = scores.masked_fill(ok, -float("inf"))
    row = mask(torch.zeros(2, 3, dtype=torch.long), penalised)[0]
    assert torch.equal(torch.isfinite(row), ok) and bool((row[ok] == 0).all())
    assert not torch.isnan(row.softmax(-1)).any()
    assert torch.equal(mask(torch.zeros(2, 4, dtype=torch.long), scores), scores)
