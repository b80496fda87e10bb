"""sspd (diffusion/sspd.py): the output is stepwise decoding's, in fewer forward calls; batch-invariant."""

from __future__ import annotations

import pytest

import decodelab
import decodelab.tasks

PROMPTS = ["copy : 1 2 3 =", "sort : 40 7 =", "latin : A B _ D | _ D A B | B A D C | D C B A ="]


@pytest.mark.parametrize("block_length,draft_length", [(0, 4), (4, 3), (5, 8), (0, 1)])
def test_sspd_equals_llada_one_token_per_step(tiny, block_length, draft_length):
    for prompt in PROMPTS:
        stepwise = decodelab.generate(tiny, prompt, method="llada", max_new_tokens=11, block_length=block_length)
        ssd = decodelab.generate(tiny, prompt, method="sspd", max_new_tokens=11, block_length=block_length,
                                 draft_length=draft_length)
        assert ssd.token_ids == stepwise.token_ids
        assert ssd.stats.forward_passes <= stepwise.stats.forward_passes
        if draft_length == 1:  # no draft beyond d_1: one call per token, like stepwise decoding
            assert ssd.stats.acceptance_rate is None


def test_sspd_on_a_trained_model_saves_calls_and_keeps_the_output():
    lm = decodelab.load("builtin:tasks-diffusion")
    items = [it for t in ("copy", "reverse") for it in decodelab.tasks.make(t, 2, 7)]
    saved = 0
    for it in items:
        stepwise = decodelab.generate(lm, it.prompt, method="llada", max_new_tokens=16)
        ssd = decodelab.generate(lm, it.prompt, method="sspd", max_new_tokens=16, draft_length=4)
        assert ssd.token_ids == stepwise.token_ids
        saved += stepwise.stats.forward_passes - ssd.stats.forward_passes
    assert saved > 0  # a trained model's confidence order mostly holds, so drafts get accepted


def test_sspd_rows_do_not_depend_on_the_batch(tiny):
    batch = decodelab.generate_batch(tiny, PROMPTS, method="sspd", max_new_tokens=12, block_length=4)
    for prompt, row in zip(PROMPTS, batch):
        assert row.token_ids == decodelab.generate(tiny, prompt, method="sspd", max_new_tokens=12,
                                                   block_length=4).token_ids


def test_sspd_refuses_sampling(tiny):
    with pytest.raises(ValueError, match="temperature 0"):
        decodelab.generate(tiny, PROMPTS[0], method="sspd", temperature=0.7)
