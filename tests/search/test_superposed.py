"""`superposed` (Shen et al., arXiv:2405.18400) and the Session's superposed input: a one-hot superposition
is the plain forward (both backends), a mixed one equals transformers' forward on the mixed embedding;
n-gram counts, the interpolation and one scoring step by hand; the whole run equals a cache-free
reference loop fed the same superposed embeddings; k = 1, α = 0 is greedy."""

import math

import pytest
import torch

import decodelab
from decodelab.model.hf import HFSession
from decodelab.search.superposed import LAMBDAS, Draft, NGrams, extend, superposition, top_n_log_probs

from fakes import tiny_lm


def test_session_superposed_input():
    lm = tiny_lm("llama", seed=1)
    ids = lm.encode("def f(x):")
    s = lm.session()
    s.forward(ids)
    w = torch.zeros(1, 1, lm.vocab_size)
    w[0, 0, 65], w[0, 0, 66] = 0.25, 0.75
    ours = s.forward([65], token_weights=w)[0, -1]
    table = lm.model.get_input_embeddings().weight
    embeds = torch.cat([table[ids], (0.25 * table[65] + 0.75 * table[66])[None]])[None]
    with torch.no_grad():
        ref = lm.model(inputs_embeds=embeds).logits[0, -1].float()
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-3)  # logits of the sharpened tiny model are ~50
    refusing = type("Refusing", (HFSession,), {"accepts_token_weights": False})(lm, 1)
    with pytest.raises(decodelab.ModelError, match="superposed"):
        refusing.forward([65], token_weights=w)


def test_native_superposed_step_equals_transformers_on_pyco():
    native, hf = decodelab.load("builtin:pyco"), decodelab.load("builtin:pyco", backend="transformers")
    ids = native.encode("def add(a, b):")
    w = torch.zeros(1, 1, native.vocab_size)
    w[0, 0, 300], w[0, 0, 301], w[0, 0, 9] = 0.5, 0.3, 0.2
    out = []
    for lm in (native, hf):
        s = lm.session()
        s.forward(ids)
        out.append(s.forward([300], token_weights=w)[0, -1])
        one_hot = torch.zeros_like(w)
        one_hot[0, 0, 300] = 1.0
        plain = lm.session()
        plain.forward(ids)
        again = lm.session()
        again.forward(ids)
        assert torch.allclose(plain.forward([300])[0, -1], again.forward([7], token_weights=one_hot)[0, -1], atol=1e-5)
    assert torch.allclose(out[0], out[1], atol=1e-3)


def test_ngrams_and_one_step_by_hand():
    t = NGrams([1, 2, 3, 1, 2, 4])
    assert t.prob((1,), 2) == 1.0 and t.prob((2,), 3) == 0.5 and t.prob((1, 2), 4) == 0.5 and t.prob((9,), 1) == 0.0
    assert t.interpolated([5, 1, 2], 3) == pytest.approx(LAMBDAS[0] * 0.5 + LAMBDAS[1] * 0.5)  # bigram, trigram
    log_p = torch.full((6,), float("-inf"))
    log_p[3], log_p[4] = math.log(0.6), math.log(0.4)
    alive, done = extend([Draft([2], -1.0), Draft([9], -2.0)], log_p, t, [1], 0.5, 2, {5}, first=False)
    # draft [2] (history 1 2): bigram P(3|2)=P(4|2)=.5, trigram P(3|1 2)=P(4|1 2)=.5 → mix .025 each;
    # draft [9] (history 1 9): no n-gram support → (1 − α)·log p − 200
    mix = math.log(LAMBDAS[0] * 0.5 + LAMBDAS[1] * 0.5)
    expected = sorted([(-1.0 + 0.5 * math.log(0.6) + 0.5 * mix, [2, 3]), (-1.0 + 0.5 * math.log(0.4) + 0.5 * mix, [2, 4]),
                       (-2.0 + 0.5 * math.log(0.6) - 200, [9, 3]), (-2.0 + 0.5 * math.log(0.4) - 200, [9, 4])], reverse=True)
    assert [d.tokens for d in alive] == [tk for _, tk in expected[:2]] and not done
    assert [d.score for d in alive] == pytest.approx([sc for sc, _ in expected[:2]], rel=1e-6)
    w = superposition([Draft([3], math.log(0.2)), Draft([4], math.log(0.6)), Draft([3], math.log(0.2))], 6)
    assert w[0, 0].tolist() == pytest.approx([0, 0, 0, 0.4, 0.6, 0])
    assert top_n_log_probs(torch.tensor([0.0, 1.0, 2.0]), 2).exp().tolist() == pytest.approx(
        [0, 1 / (1 + math.e), math.e / (1 + math.e)])


def _reference(lm, prompt, n_new, k, n, alpha, temperature):
    """The rule with no cache: every step runs transformers over all input embeddings so far."""
    ids = lm.encode(prompt)
    table, grams = lm.model.get_input_embeddings().weight, NGrams(ids)
    embeds, alive, finished = [table[i] for i in ids], [Draft([], 0.0)], []
    for step in range(n_new):
        with torch.no_grad():
            logits = lm.model(inputs_embeds=torch.stack(embeds)[None]).logits[0, -1].float()
        alive, done = extend(alive, top_n_log_probs(logits / temperature, n), grams, ids, alpha, k,
                             set(lm.eos_token_ids), first=step == 0)
        finished = sorted(finished + done, key=lambda c: -c.score)[:k]
        if not alive:
            break
        embeds.append(superposition(alive, lm.vocab_size)[0, 0] @ table)
    return sorted(finished + alive, key=lambda d: -d.score / len(d.tokens))


def test_equals_cache_free_reference_and_k1_is_greedy():
    lm = tiny_lm("llama", seed=4)
    for prompt in ("abcabc ab", "def f(x):"):
        g = decodelab.generate(lm, prompt, method="superposed", max_new_tokens=10, num_drafts=3, num_tokens=5,
                               ngram_corpus="prompt", temperature=1.0)
        ref = _reference(lm, prompt, 10, 3, 5, 0.54, 1.0)
        assert [c.token_ids for c in g.candidates] == [d.tokens for d in ref]
        assert g.stats.forward_passes == 10  # one pass per token for all three drafts (prefill + 9 steps)
        greedy = decodelab.generate(lm, prompt, method="greedy", max_new_tokens=10).token_ids
        one = decodelab.generate(lm, prompt, method="superposed", max_new_tokens=10, num_drafts=1, alpha=0.0,
                                 ngram_corpus="prompt")
        assert one.token_ids == greedy


def test_training_split_table_and_bad_input():
    lm = decodelab.load("builtin:pyco")
    g = decodelab.generate(lm, "def f(x):", method="superposed", max_new_tokens=6, ngram_chars=20_000)
    assert len(g.candidates) == 3 and ("superposed.ngrams", 20_000) in lm.state
    with pytest.raises(ValueError, match="temperature"):
        decodelab.generate(lm, "x", method="superposed", temperature=0, max_new_tokens=4, ngram_corpus="prompt")
