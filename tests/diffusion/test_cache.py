"""Fast-dLLM's prefix / dual cache (diffusion/cache.py): exact mechanism, exact limits, batch invariance."""

from __future__ import annotations

import pytest
import torch

import decodelab
from decodelab.diffusion.cache import CanvasCache
from decodelab.diffusion.model import _positions

PROMPTS = ["copy : 1 2 3 =", "sort : 40 7 =", "latin : A B _ D | _ D A B | B A D C | D C B A ="]


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("which", ["tiny", "shifted"])
def test_a_cached_step_on_an_unchanged_canvas_equals_the_full_pass(request, which, mode):
    """The mechanism is exact: keys/values kept from this very canvas reproduce the full forward."""
    lm = request.getfixturevalue(which)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10] + [lm.mask_token_id] * 10, [2, 2, 2, 11, 12, 13] + [lm.mask_token_id] * 10])
    attention = (torch.arange(16) >= torch.tensor([[0], [3]])).long()
    full = lm.model(input_ids=ids, attention_mask=attention).logits
    cache = CanvasCache(mode, bool(lm.model.config.logit_shift))
    masked = ids[:, 6:] == lm.mask_token_id
    for start, end in (([0, 0], [0, 0]), ([4, 4], [8, 8])):  # the refresh pass, then a step in block [4, 8)
        a, b = cache.plan(6, masked, start, end, 16)
        pos = _positions(attention, 2, 16, ids.device)[:, a:b]
        out = lm.model(input_ids=ids[:, a:b], attention_mask=attention, position_ids=pos, kv_cache=cache).logits
        assert (a, b) == ((0, 16) if end == [0, 0] else (10 - cache.shift, 16 if mode == "prefix" else 14))
        lo = a + cache.shift  # with shifted logits the first fed position's logits are not defined
        torch.testing.assert_close(out[:, lo - a:], full[:, lo:b], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_one_position_blocks_refresh_every_step_so_the_cache_changes_nothing(shifted, mode):
    for prompt in PROMPTS:
        plain = decodelab.generate(shifted, prompt, method="fastdllm", max_new_tokens=6, block_length=1, threshold=0.5)
        cached = decodelab.generate(shifted, prompt, method="fastdllm", max_new_tokens=6, block_length=1,
                                    threshold=0.5, cache=mode)
        assert cached.token_ids == plain.token_ids


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_a_cached_run_commits_like_the_sampler_and_finishes(shifted, mode):
    for prompt in PROMPTS:
        g = decodelab.generate(shifted, prompt, method="llada", max_new_tokens=10, block_length=4, cache=mode)
        assert 1 <= len(g.token_ids) <= 10 and shifted.mask_token_id not in g.token_ids
        assert g.stats.forward_passes == g.stats.steps + 1 <= 10  # one token per step, as without cache


@pytest.mark.parametrize("method,params", [("fastdllm", {"threshold": 0.5, "block_length": 4}),
                                           ("llada", {"block_length": 3}),
                                           ("adablock", {"delimiters": "|", "threshold": 0.5, "block_length": 4})])
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cached_rows_do_not_depend_on_the_batch(shifted, method, params, mode):
    """Rows move through blocks at their own pace; each keeps its own cache and windows."""
    batch = decodelab.generate_batch(shifted, PROMPTS, method=method, max_new_tokens=12, cache=mode, **params)
    for i, prompt in enumerate(PROMPTS):
        alone = decodelab.generate(shifted, prompt, method=method, max_new_tokens=12, cache=mode, **params)
        assert batch[i].token_ids == alone.token_ids, (method, mode, i)


def test_cache_errors_are_one_line(tiny):
    with pytest.raises(ValueError, match="cache"):
        decodelab.generate(tiny, PROMPTS[0], method="fastdllm", cache="full")
    with pytest.raises(ValueError, match="cfg_scale"):
        decodelab.generate(tiny, PROMPTS[0], method="llada", cache="dual", cfg_scale=1.0)


def test_on_the_trained_task_model_the_approximation_is_bounded():
    """Stated bound on 35 held-out items (5 per task): cached accuracy within 3 items of no cache, and
    ≥ 24 of 35 outputs identical (measured: 19 / 18 / 18 solved, 27 of 35 identical for both caches)."""
    import decodelab.tasks as tasks

    lm = decodelab.load("builtin:tasks-diffusion")
    items = [it for t in tasks.names() for it in tasks.make(t, 5, 0)]
    runs = {c: decodelab.generate_batch(lm, [it.prompt for it in items], method="fastdllm", max_new_tokens=24,
                                        threshold=0.9, block_length=8, cache=c) for c in ("none", "prefix", "dual")}
    solved = {c: sum(g.text.strip() == it.answer for g, it in zip(gs, items)) for c, gs in runs.items()}
    for c in ("prefix", "dual"):
        assert abs(solved[c] - solved["none"]) <= 3, solved
        assert sum(a.token_ids == b.token_ids for a, b in zip(runs["none"], runs[c])) >= 24
