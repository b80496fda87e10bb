"""Sampling parameters at the edge of float32: limits, never NaN."""

import torch

import decodelab

from fakes import tiny_lm


def test_temperature_past_float32_max_is_the_uniform_limit():
    lm = tiny_lm("llama")
    probs = decodelab.next_token_probs(lm, "abc", temperature=3.4028235677973366e38)
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs, torch.full_like(probs, 1 / probs.numel()))


def test_overflowed_penalty_and_temperature_sample_without_nan():
    lm = tiny_lm("llama")
    g = decodelab.generate(lm, "0", method="sample", seed=0, max_new_tokens=3,
                           temperature=3.4028235677973366e38, repetition_penalty=1e-300)
    assert len(g.token_ids) == 3
