"""Local normalisation distortion (processors/distortion.py, Kempton & Burrell, arXiv:2503.21929):
log Z_t of every sampled token in `Stats.log_z`, against a direct computation with transformers' own
warpers, per row of a batch."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

import decodelab
from decodelab.processors import Sampler
from tests.fakes import noisy_copy, soft_lm, tiny_lm

CASES = [  # several truncation samplers, each with and without temperature
    {"top_k": 5},
    {"top_p": 0.8, "temperature": 0.7},
    {"min_p": 0.1},
    {"typical_p": 0.9, "temperature": 1.3},
    {"epsilon_cutoff": 0.02},
    {"eta_cutoff": 0.01},
    {"temperature": 0.6},
    {"top_k": 20, "top_p": 0.9, "min_p": 0.05, "temperature": 0.8},
]


def hf_warpers(params: dict) -> LogitsProcessorList:
    """The same warpers, from transformers, in the same order (the reference for the kept set)."""
    table = [("temperature", TemperatureLogitsWarper), ("top_k", TopKLogitsWarper), ("top_p", TopPLogitsWarper),
             ("min_p", MinPLogitsWarper), ("typical_p", TypicalLogitsWarper),
             ("epsilon_cutoff", EpsilonLogitsWarper), ("eta_cutoff", EtaLogitsWarper)]
    return LogitsProcessorList([cls(params[name]) for name, cls in table if name in params])


def direct_log_z(logits: torch.Tensor, params: dict) -> torch.Tensor:
    """[B, V] logits → [B]: log Σ_{v kept} p(v)^{1/τ}, p = softmax(logits), kept by transformers' warpers."""
    kept = torch.isfinite(hf_warpers(params)(None, logits.clone()))
    p = logits.double().softmax(-1)
    tau = params.get("temperature", 1.0)
    return torch.stack([(p[b][kept[b]] ** (1 / tau)).sum().log() for b in range(len(p))]).float()


@pytest.mark.parametrize("params", CASES, ids=lambda p: ",".join(p))
def test_log_z_is_the_kept_mass_and_the_normaliser(params):
    logits = 2.0 * torch.randn(3, 300, generator=torch.Generator().manual_seed(0))
    sampler = Sampler(params, prompt_len=0)
    probs, log_z = sampler.probs_and_log_z(None, logits)
    torch.testing.assert_close(log_z, direct_log_z(logits, params), atol=1e-4, rtol=1e-4)
    # the defining identity: every kept token is drawn with probability p(v)^{1/τ} / Z_t
    tau = params.get("temperature", 1.0)
    logp = logits.log_softmax(-1)
    kept = probs > 0
    torch.testing.assert_close(probs.log()[kept], (logp / tau - log_z[:, None]).expand_as(logp)[kept],
                               atol=1e-4, rtol=1e-4)


def test_no_truncation_at_temperature_one_is_undistorted():
    _, log_z = Sampler({}, prompt_len=0).probs_and_log_z(None, torch.randn(2, 50))
    torch.testing.assert_close(log_z, torch.zeros(2), atol=1e-6, rtol=0)
    assert Sampler({"temperature": 0}, prompt_len=0).probs_and_log_z(None, torch.randn(2, 50))[1] is None


PROMPTS = ["def f(x):", "hello", "abcabcabc"]


def teacher_forced_log_z(lm, prompt: str, tokens: list[int], params: dict) -> list[float]:
    """log Z_t at each generated position, from one forward pass over prompt + tokens."""
    ids = lm.encode(prompt)
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids + tokens])).logits[0, len(ids) - 1 : len(ids) - 1 + len(tokens)]
    return direct_log_z(logits.float(), params).tolist()


@pytest.mark.parametrize("params", [CASES[0], CASES[1], CASES[3], CASES[7]], ids=lambda p: ",".join(p))
def test_stats_log_z_per_row_of_a_batch(params):
    lm = soft_lm("llama")
    gens = decodelab.generate_batch(lm, PROMPTS, method="sample", max_new_tokens=12, seed=3, **params)
    for prompt, gen in zip(PROMPTS, gens):
        assert len(gen.stats.log_z) == len(gen.token_ids) == gen.stats.new_tokens
        assert gen.stats.log_z == pytest.approx(teacher_forced_log_z(lm, prompt, gen.token_ids, params), abs=2e-4)
        assert gen.stats.log_distortion == pytest.approx(-sum(gen.stats.log_z))
        assert gen.stats.to_dict()["log_distortion"] == gen.stats.log_distortion
    alone = decodelab.generate(lm, PROMPTS[1], method="sample", max_new_tokens=12, seed=4, **params)
    assert alone.token_ids == gens[1].token_ids  # row 1 of the batch has seed 3 + 1
    assert alone.stats.log_z == pytest.approx(gens[1].stats.log_z, abs=2e-4)
    assert any(z < -1e-3 for g in gens for z in g.stats.log_z)  # the samplers did truncate (not all 0)


def test_log_z_follows_stop_cutting_and_is_absent_when_not_measured():
    lm = soft_lm("llama")
    full = decodelab.generate(lm, "hello", method="sample", max_new_tokens=16, seed=1, top_k=8)
    stop = lm.decode(full.token_ids[5:6])
    cut = decodelab.generate(lm, "hello", method="sample", max_new_tokens=16, seed=1, top_k=8, stop=stop)
    assert cut.finish_reason == "stop" and len(cut.stats.log_z) == len(cut.token_ids) < len(full.token_ids)
    assert cut.stats.log_z == full.stats.log_z[: len(cut.token_ids)]
    greedy = decodelab.generate(lm, "hello", method="greedy", max_new_tokens=4)
    assert greedy.stats.log_z is None and greedy.stats.log_distortion is None
    assert "log_z" not in greedy.stats.to_dict()
    assert math.isfinite(full.stats.log_distortion)


def test_engine_rows_record_their_own_log_z():
    lm = soft_lm("llama")
    engine = decodelab.Engine(lm, "sample")
    rows = {engine.add(p, max_new_tokens=8, seed=7 + i, top_p=0.7 + 0.1 * i): i for i, p in enumerate(PROMPTS)}
    done = {}
    while engine.busy:
        done.update({e.row: e.generation for e in engine.step() if e.generation is not None})
    for r, i in rows.items():
        alone = decodelab.generate(lm, PROMPTS[i], method="sample", max_new_tokens=8, seed=7 + i, top_p=0.7 + 0.1 * i)
        assert done[r].token_ids == alone.token_ids
        assert done[r].stats.log_z == pytest.approx(alone.stats.log_z, abs=2e-4)


def test_overflowed_scores_take_the_samplers_limit():
    """+inf scores (an extreme penalty) share the mass as the Sampler draws it: log Z_t stays finite."""
    logits = torch.randn(2, 30)
    logits[0, [3, 7]] = float("inf")
    _, log_z = Sampler({"top_k": 5, "temperature": 2.0}, prompt_len=0).probs_and_log_z(None, logits)
    assert math.isfinite(log_z[1]) and log_z[0].item() == pytest.approx(math.log(2 * 0.5 ** 0.5))
    g = decodelab.generate(tiny_lm("llama"), "0", method="sample", max_new_tokens=1, seed=0,
                           repetition_penalty=1e-300, temperature=3.4028235677973366e38)
    assert all(math.isfinite(z) for z in g.stats.log_z)  # τ beyond float32: once NaN


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_bregman_log_z_is_the_kept_mass(alpha):
    logits = 2.0 * torch.randn(3, 200, generator=torch.Generator().manual_seed(1))
    params = {"bregman_alpha": alpha, "bregman_lambda": 0.02, "temperature": 0.9}
    probs, log_z = Sampler(params, prompt_len=0).probs_and_log_z(None, logits)
    p = logits.double().softmax(-1)
    kept = probs > 0
    assert 1 < kept.sum(-1).min() and kept.sum(-1).max() < 200
    direct = torch.stack([(p[b][kept[b]] ** (1 / 0.9)).sum().log() for b in range(3)]).float()
    torch.testing.assert_close(log_z, direct, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["speculative", "pld", "recycling"])
def test_speculative_methods_record_log_z_of_every_emitted_token(method):
    """Lossless methods emit several tokens per verify step (accepted drafts, a residual draw, the bonus):
    each token's log Z_t is the target's at its position, as if it had been sampled one by one."""
    lm = soft_lm("llama")
    lm.state["drafts"] = {"tiny-draft": noisy_copy(lm, 0.3)}  # often accepted, sometimes not
    kw = {"draft": "tiny-draft"} if method == "speculative" else {}
    params = CASES[7]
    gens = decodelab.generate_batch(lm, PROMPTS, method=method, max_new_tokens=16, seed=3, **params, **kw)
    assert sum(gens[0].stats.accepted) > 0  # some steps emitted more than one token
    for prompt, gen in zip(PROMPTS, gens):
        assert len(gen.stats.log_z) == len(gen.token_ids)
        assert gen.stats.log_z == pytest.approx(teacher_forced_log_z(lm, prompt, gen.token_ids, params), abs=2e-4)
    alone = decodelab.generate(lm, PROMPTS[0], method=method, max_new_tokens=16, seed=3, **params, **kw)
    assert alone.stats.log_z == pytest.approx(teacher_forced_log_z(lm, PROMPTS[0], alone.token_ids, params), abs=2e-4)
