"""The public API's input checking, the methods registry, and next_token_probs."""

import pytest
import torch

import decodelab
from decodelab.processors import SAMPLING_DEFAULTS

from fakes import tiny_lm


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("qwen2", seed=3)


# ---- bad input: ValueError naming the problem ----------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    ({"temperature": -0.5}, r"temperature.*>= 0"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 1.5}, r"top_p.*\(0, 1\]"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 2.5}, "top_k.*integer"),
    ({"min_p": 2}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"no_repeat_ngram_size": -2}, "no_repeat_ngram_size"),
    ({"tempreature": 0.5}, r"unknown parameter 'tempreature'"),
    ({"method": "no-such-method"}, r"unknown method 'no-such-method'.*greedy"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": -3}, "max_new_tokens"),
    ({"max_new_tokens": 2.0}, "max_new_tokens"),
    ({"max_new_tokens": True}, "max_new_tokens"),
    ({"stop": ""}, "stop"),
    ({"stop": ["ok", 3]}, "stop"),
])
@pytest.mark.parametrize("entry", ["generate", "stream", "generate_batch"])
def test_bad_parameters_raise_value_error(lm, kw, match, entry):
    with pytest.raises(ValueError, match=match):
        if entry == "generate":
            decodelab.generate(lm, "x", **kw)
        elif entry == "stream":
            decodelab.stream(lm, "x", **kw)  # raises when called, before iteration
        else:
            decodelab.generate_batch(lm, ["x", "y"], **kw)


@pytest.mark.parametrize("prompt,match", [
    ("", "empty"),
    ([], "empty"),
    ([1, 10_000], r"token id 10000 out of range \[0, 258\)"),
    ([-1], "token id -1 out of range"),
    ([258], "out of range"),
    (123, "prompt must be"),
    (b"bytes", "prompt must be"),
    ([1.0, 2.0], "prompt must be"),
    ([True], "prompt must be"),
    (None, "prompt must be"),
    ("a" * 256, "256"),
])
def test_bad_prompts_raise_value_error(lm, prompt, match):
    with pytest.raises(ValueError, match=match):
        decodelab.generate(lm, prompt, max_new_tokens=2)
    with pytest.raises(ValueError, match=match):
        decodelab.next_token_probs(lm, prompt)


def test_batch_checks_every_prompt_and_rejects_empty_list(lm):
    with pytest.raises(ValueError, match="out of range"):
        decodelab.generate_batch(lm, ["fine", [999]], max_new_tokens=2)
    with pytest.raises(ValueError, match="empty"):
        decodelab.generate_batch(lm, [], max_new_tokens=2)


def test_method_parameters_are_checked_per_method(lm):
    # sampling parameters are accepted by every method; each method rejects the others' names
    g = decodelab.generate(lm, "x", method="greedy", max_new_tokens=2, top_k=5, repetition_penalty=1.2)
    assert g.params["top_k"] == 5 and g.params["repetition_penalty"] == 1.2
    with pytest.raises(ValueError, match="unknown parameter 'draft'.*'greedy'"):
        decodelab.generate(lm, "x", method="greedy", max_new_tokens=2, draft="builtin:pyco-draft")


# ---- methods() -----------------------------------------------------------------------------------

def test_methods_registry_lists_greedy_and_sample():
    table = decodelab.methods()
    assert {"greedy", "sample"} <= set(table)
    for name, info in table.items():
        assert isinstance(info, decodelab.MethodInfo)
        assert info.name == name
        assert isinstance(info.description, str) and info.description.strip()
        assert isinstance(info.lossless, bool)
        assert "temperature" in info.params
        assert info.kind == "image" or set(SAMPLING_DEFAULTS) <= set(info.params)  # image: cfg_scale, top_k
        assert info.paper is None or isinstance(info.paper, str)
    assert table["greedy"].lossless and table["sample"].lossless
    assert table["greedy"].params["temperature"] == 0
    assert table["sample"].params["temperature"] == 1.0


def test_methods_returns_a_copy():
    table = decodelab.methods()
    table.pop("greedy")
    assert "greedy" in decodelab.methods()


# ---- next_token_probs ----------------------------------------------------------------------------

def _last_logits(lm, ids):
    with torch.no_grad():
        return lm.model(torch.tensor([ids])).logits[0, -1].float()


@pytest.mark.parametrize("prompt", ["def f(x):", "a"])
def test_next_token_probs_plain_is_softmax_of_logits(lm, prompt):
    p = decodelab.next_token_probs(lm, prompt)
    assert p.shape == (lm.vocab_size,)
    assert p.dtype == torch.float32
    assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert (p >= 0).all()
    torch.testing.assert_close(p, torch.softmax(_last_logits(lm, lm.encode(prompt)), dim=-1), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(decodelab.next_token_probs(lm, lm.encode(prompt)), p)


def test_next_token_probs_with_processors(lm):
    ids = lm.encode("x = 1\n")
    logits = _last_logits(lm, ids)
    greedy = decodelab.next_token_probs(lm, ids, temperature=0)
    assert greedy.sum().item() == pytest.approx(1.0)
    assert greedy.argmax().item() == logits.argmax().item() and greedy.max().item() == 1.0
    top3 = decodelab.next_token_probs(lm, ids, top_k=3)
    assert (top3 > 0).sum().item() == 3
    assert set(top3.nonzero().flatten().tolist()) == set(logits.topk(3).indices.tolist())
    assert top3.sum().item() == pytest.approx(1.0, abs=1e-5)
    hot = decodelab.next_token_probs(lm, ids, temperature=2.0)
    torch.testing.assert_close(hot, torch.softmax(logits / 2.0, dim=-1), atol=1e-6, rtol=1e-4)
    # sampling at temperature 0 picks what greedy decoding picks
    assert decodelab.generate(lm, ids, max_new_tokens=1).token_ids == [greedy.argmax().item()]


@pytest.mark.parametrize("kw,match", [
    ({"tempreature": 1.0}, "unknown sampling parameter 'tempreature'"),
    ({"draft": "builtin:pyco-draft"}, "unknown sampling parameter 'draft'"),
    ({"top_p": 0}, "top_p"),
    ({"temperature": -1}, "temperature"),
])
def test_next_token_probs_rejects_bad_params(lm, kw, match):
    with pytest.raises(ValueError, match=match):
        decodelab.next_token_probs(lm, "x", **kw)
