"""Every processor against its transformers peer on random logits; the Sampler against a
`LogitsProcessorList` of the same peers; parameter checking."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitsProcessorList,
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from decodelab.processors import (
    SAMPLING_DEFAULTS,
    EpsilonCutoff,
    EtaCutoff,
    MinP,
    NoRepeatNGram,
    PresenceFrequencyPenalty,
    RepetitionPenalty,
    Sampler,
    Temperature,
    TopK,
    TopP,
    Typical,
    check_sampling_params,
)

SEEDS = (0, 1, 2)
VOCABS = (50, 257, 1000)
KINDS = ("normal", "ties", "peaky")
CASES = [(s, v, k) for s in SEEDS for v in VOCABS for k in KINDS]
BATCH = 3


def make_logits(seed: int, vocab: int, kind: str) -> torch.Tensor:
    """[BATCH, vocab] float32 logits: plain Gaussian, heavily tied, or dominated by a few tokens."""
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(BATCH, vocab, generator=g)
    if kind == "ties":
        return (x * 2).round() / 2  # ~20 distinct values, many ties (also at the top)
    if kind == "peaky":
        x[:, :3] += torch.tensor([14.0, 12.0, 12.0])  # a peak and a tie just below it
    return x


def make_history(seed: int, vocab: int, length: int = 24, alphabet: int | None = None) -> torch.Tensor:
    """[BATCH, length] token ids with repeats (a small alphabet forces repeated n-grams)."""
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randint(0, alphabet or vocab, (BATCH, length), generator=g)


def assert_same(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Same removed (-inf) positions exactly, same finite values."""
    assert torch.equal(torch.isneginf(ours), torch.isneginf(ref))
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


def check_peer(ours, ref, history_kwargs: dict | None = None) -> None:
    for seed, vocab, kind in CASES:
        scores = make_logits(seed, vocab, kind)
        ids = make_history(seed, vocab, **(history_kwargs or {}))
        assert_same(ours(ids, scores.clone()), ref(ids, scores.clone()))


# ---- warpers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0.3, 0.7, 1.5, 2.0])
def test_temperature(t):
    check_peer(Temperature(t), TemperatureLogitsWarper(t))


@pytest.mark.parametrize("k", [1, 2, 7, 49, 50, 1005])
def test_top_k(k):
    check_peer(TopK(k), TopKLogitsWarper(k))


@pytest.mark.parametrize("p", [1.0, 1e-6, 0.1, 0.5, 0.9, 0.999])
def test_top_p(p):
    check_peer(TopP(p), TopPLogitsWarper(p))


@pytest.mark.parametrize("p", [0.25, 0.5, 0.75])
def test_top_p_at_an_exact_mass_boundary(p):
    """Uniform over 8 tokens: cumulative sums hit 1 - p exactly, so `<=` vs `<` matters."""
    scores = torch.zeros(BATCH, 8)
    scores[1, 4:] = -float("inf")  # uniform over 4
    assert_same(TopP(p)(None, scores.clone()), TopPLogitsWarper(p)(None, scores.clone()))


@pytest.mark.parametrize("min_p", [0.0, 0.01, 0.1, 0.5, 1.0])
def test_min_p(min_p):
    check_peer(MinP(min_p), MinPLogitsWarper(min_p))


@pytest.mark.parametrize("mass", [0.2, 0.5, 0.9, 0.99])
def test_typical_p(mass):
    check_peer(Typical(mass), TypicalLogitsWarper(mass))


@pytest.mark.parametrize("eps", [3e-4, 4e-3, 0.1, 0.5])
def test_epsilon_cutoff(eps):
    check_peer(EpsilonCutoff(eps), EpsilonLogitsWarper(eps))


@pytest.mark.parametrize("eps", [3e-4, 4e-3, 0.1, 0.5])
def test_eta_cutoff(eps):
    check_peer(EtaCutoff(eps), EtaLogitsWarper(eps))


def test_warpers_on_already_filtered_logits():
    """Warpers after top-k see -inf entries; they must still agree with transformers."""
    pairs = [
        (TopP(0.8), TopPLogitsWarper(0.8)),
        (MinP(0.1), MinPLogitsWarper(0.1)),
        (Typical(0.7), TypicalLogitsWarper(0.7)),
        (EpsilonCutoff(0.01), EpsilonLogitsWarper(0.01)),
        (EtaCutoff(0.01), EtaLogitsWarper(0.01)),
    ]
    for seed, vocab, kind in CASES:
        scores = TopKLogitsWarper(10)(None, make_logits(seed, vocab, kind))
        for ours, ref in pairs:
            assert_same(ours(None, scores.clone()), ref(None, scores.clone()))


# ---- history processors ----------------------------------------------------------------------


@pytest.mark.parametrize("penalty", [1.3, 0.7, 2.5])
def test_repetition_penalty(penalty):
    check_peer(RepetitionPenalty(penalty), RepetitionPenaltyLogitsProcessor(penalty))


def test_repetition_penalty_ignores_ids_outside_the_vocab():
    scores, ids = make_logits(0, 50, "normal"), torch.tensor([[3, 60, 3], [49, 50, 0], [70, 71, 72]])
    assert_same(RepetitionPenalty(1.3)(ids, scores), RepetitionPenaltyLogitsProcessor(1.3)(ids, scores))


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("length", [1, 2, 3, 30])
def test_no_repeat_ngram(n, length):
    check_peer(NoRepeatNGram(n), NoRepeatNGramLogitsProcessor(n), {"length": length, "alphabet": 4})


def test_no_repeat_ngram_bans_something():
    ids = torch.tensor([[1, 2, 3, 1, 2]])
    out = NoRepeatNGram(3)(ids, torch.zeros(1, 5))
    assert torch.isneginf(out).nonzero().tolist() == [[0, 3]]


def presence_frequency_reference(ids, scores, presence, frequency, prompt_len):
    """The OpenAI / vLLM formula, written out token by token."""
    out = scores.clone()
    for b, row in enumerate(ids.tolist()):
        generated = row[prompt_len:]
        for tok in set(generated):
            out[b, tok] -= frequency * generated.count(tok) + presence
    return out


@pytest.mark.parametrize("presence,frequency", [(0.5, 0.0), (0.0, 0.7), (-1.5, 2.0), (2.0, -2.0)])
@pytest.mark.parametrize("prompt_len", [0, 5, 24, 40])
def test_presence_frequency_penalty(presence, frequency, prompt_len):
    ours = PresenceFrequencyPenalty(presence, frequency, prompt_len)
    for seed, vocab, kind in CASES:
        scores, ids = make_logits(seed, vocab, kind), make_history(seed, vocab, alphabet=8)
        ref = presence_frequency_reference(ids, scores, presence, frequency, prompt_len)
        torch.testing.assert_close(ours(ids, scores), ref)


# ---- the Sampler pipeline --------------------------------------------------------------------

PIPELINES = [
    {"temperature": 0.8, "top_k": 20, "top_p": 0.9},
    {
        "repetition_penalty": 1.2,
        "no_repeat_ngram_size": 2,
        "temperature": 0.7,
        "top_k": 40,
        "top_p": 0.95,
        "min_p": 0.05,
    },
    {
        "repetition_penalty": 0.8,
        "temperature": 1.3,
        "typical_p": 0.8,
        "epsilon_cutoff": 3e-4,
        "eta_cutoff": 3e-4,
    },
    {
        "no_repeat_ngram_size": 3,
        "top_k": 1005,
        "top_p": 0.5,
        "min_p": 0.2,
        "typical_p": 0.95,
        "eta_cutoff": 0.01,
    },
    {
        "presence_penalty": 0.5,
        "frequency_penalty": 0.3,
        "repetition_penalty": 1.1,
        "temperature": 0.9,
        "top_p": 0.8,
    },
]


class RefPresenceFrequency:
    def __init__(self, presence, frequency, prompt_len):
        self.args = (presence, frequency, prompt_len)

    def __call__(self, input_ids, scores):
        return presence_frequency_reference(input_ids, scores, *self.args)


def hf_pipeline(params: dict, prompt_len: int) -> LogitsProcessorList:
    """The same processors from transformers (and the reference formula), in the same order."""
    p = {**SAMPLING_DEFAULTS, **params}
    chain = []
    if p["repetition_penalty"] != 1.0:
        chain.append(RepetitionPenaltyLogitsProcessor(p["repetition_penalty"]))
    if p["presence_penalty"] or p["frequency_penalty"]:
        chain.append(RefPresenceFrequency(p["presence_penalty"], p["frequency_penalty"], prompt_len))
    if p["no_repeat_ngram_size"]:
        chain.append(NoRepeatNGramLogitsProcessor(p["no_repeat_ngram_size"]))
    if p["temperature"] != 1.0:
        chain.append(TemperatureLogitsWarper(p["temperature"]))
    if p["top_k"]:
        chain.append(TopKLogitsWarper(p["top_k"]))
    if p["top_p"] < 1.0:
        chain.append(TopPLogitsWarper(p["top_p"]))
    if p["min_p"]:
        chain.append(MinPLogitsWarper(p["min_p"]))
    if p["typical_p"] < 1.0:
        chain.append(TypicalLogitsWarper(p["typical_p"]))
    if p["epsilon_cutoff"]:
        chain.append(EpsilonLogitsWarper(p["epsilon_cutoff"]))
    if p["eta_cutoff"]:
        chain.append(EtaLogitsWarper(p["eta_cutoff"]))
    return LogitsProcessorList(chain)


@pytest.mark.parametrize("params", PIPELINES)
def test_sampler_matches_transformers_pipeline(params):
    prompt_len = 10
    sampler, ref = Sampler(check_sampling_params(params), prompt_len), hf_pipeline(params, prompt_len)
    for seed, vocab, kind in CASES:
        scores, ids = make_logits(seed, vocab, kind), make_history(seed, vocab, alphabet=6)
        expected = ref(ids, scores.clone())
        assert_same(sampler.process(ids, scores.clone()), expected)
        probs = sampler.probs(ids, scores.clone())
        assert probs.dtype == torch.float32
        torch.testing.assert_close(probs, expected.softmax(dim=-1))


def test_off_values_add_no_processor():
    sampler = Sampler(check_sampling_params({}), prompt_len=0)
    assert sampler.logits_processors == [] and sampler.warpers == []
    assert not sampler.greedy and not sampler.needs_history
    scores = make_logits(0, 50, "normal")
    assert torch.equal(sampler.process(make_history(0, 50), scores), scores)


def test_needs_history():
    assert not Sampler(check_sampling_params({"top_p": 0.9, "eta_cutoff": 0.01}), 0).needs_history
    for key, value in [("repetition_penalty", 1.1), ("presence_penalty", 0.1), ("no_repeat_ngram_size", 2)]:
        assert Sampler(check_sampling_params({key: value}), 0).needs_history


def test_greedy_probs_are_one_hot_at_penalised_argmax():
    params = check_sampling_params({"temperature": 0, "repetition_penalty": 3.0, "top_k": 5, "top_p": 0.1})
    sampler = Sampler(params, prompt_len=0)
    assert sampler.greedy and sampler.warpers == []
    for seed, vocab, kind in CASES:
        scores, ids = make_logits(seed, vocab, kind), make_history(seed, vocab)
        best = RepetitionPenaltyLogitsProcessor(3.0)(ids, scores.clone()).argmax(dim=-1)
        probs = sampler.probs(ids, scores)
        assert torch.equal(probs, torch.nn.functional.one_hot(best, vocab).float())
        assert torch.equal(sampler.sample(probs, None), best)


def test_sample_is_reproducible_with_a_generator():
    sampler = Sampler(check_sampling_params({"temperature": 1.5}), prompt_len=0)
    probs = sampler.probs(make_history(0, 50), make_logits(0, 50, "normal"))
    draws = [sampler.sample(probs, torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1]) and draws[0].shape == (BATCH,)


# ---- parameter checking ----------------------------------------------------------------------

BAD = {
    "temperature": [-0.1, "1", True, math.nan, math.inf, None],
    "top_k": [-1, 2.5, "5", True, math.inf],
    "top_p": [0, 0.0, 1.1, -0.1, math.nan],
    "min_p": [-0.1, 1.1],
    "typical_p": [0, 1.5],
    "epsilon_cutoff": [-1e-3, 1.0],
    "eta_cutoff": [-1e-3, 1],
    "repetition_penalty": [0, -1.0, "x"],
    "presence_penalty": [-2.1, 2.1],
    "frequency_penalty": [2.5, -3],
    "no_repeat_ngram_size": [-1, 1.5, False],
}


@pytest.mark.parametrize("name,value", [(n, v) for n, vs in BAD.items() for v in vs])
def test_bad_values_raise_naming_the_parameter(name, value):
    with pytest.raises(ValueError, match=name) as info:
        check_sampling_params({name: value})
    assert "\n" not in str(info.value)


def test_defaults_filled_and_other_keys_left_out():
    assert check_sampling_params({}) == SAMPLING_DEFAULTS
    checked = check_sampling_params({"top_p": 0.5, "num_draft_tokens": 5, "draft": "x"})
    assert set(checked) == set(SAMPLING_DEFAULTS) and checked["top_p"] == 0.5


def test_values_coerced_to_the_default_type():
    checked = check_sampling_params(
        {"top_k": 5.0, "no_repeat_ngram_size": 2, "temperature": 1, "top_p": 1, "presence_penalty": -2}
    )
    assert checked["top_k"] == 5 and type(checked["top_k"]) is int
    assert type(checked["no_repeat_ngram_size"]) is int
    for name in ("temperature", "top_p", "presence_penalty"):
        assert type(checked[name]) is float
    edges = {
        "temperature": 0,
        "top_p": 1.0,
        "min_p": 1.0,
        "typical_p": 1.0,
        "epsilon_cutoff": 0.0,
        "frequency_penalty": 2,
    }
    assert check_sampling_params(edges)["temperature"] == 0.0
