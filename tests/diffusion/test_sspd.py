"""sspd (diffusion/sspd.py): the output is stepwise decoding's, in fewer forward calls; batch-invariant."""

from __future__ import annotations

import pytest

import decodelab
import decodelab.tasks

PROMPTS = ["copy : 1 2 3 =", "sort : 40 7 =", "latin : A B _ D | _ D A B | B A D C | D C B A ="]


RANDOM_PROMPTS = [f"{task} : {' '.join(str((7 * i + 3 * j) % 50) for j in range(2 + i % 4))} ="
                  for i, task in enumerate(["copy", "sort", "reverse", "insert", "remove", "replace"] * 4)]


@pytest.mark.parametrize("tree", ["chain", "tree"])
@pytest.mark.parametrize("block_length,draft_length", [(0, 4), (4, 3), (5, 8), (0, 1), (0, 16)])
def test_sspd_equals_llada_one_token_per_step(tiny, block_length, draft_length, tree):
    for prompt in PROMPTS + RANDOM_PROMPTS[:8]:
        stepwise = decodelab.generate(tiny, prompt, method="llada", max_new_tokens=11, block_length=block_length)
        ssd = decodelab.generate(tiny, prompt, method="sspd", max_new_tokens=11, block_length=block_length,
                                 draft_length=draft_length, tree=tree)
        assert ssd.token_ids == stepwise.token_ids
        assert ssd.stats.forward_passes <= stepwise.stats.forward_passes
        if draft_length == 1:  # no draft beyond d_1: one call per token, like stepwise decoding
            assert ssd.stats.acceptance_rate is None


@pytest.mark.parametrize("width", [1, 3, 8])
def test_sspd_tree_is_exact_on_many_prompts_and_both_models(tiny, shifted, width):
    """The tree only changes which canvases are checked: every shape gives stepwise decoding's tokens."""
    for lm in (tiny, shifted):
        for prompt in RANDOM_PROMPTS:
            stepwise = decodelab.generate(lm, prompt, method="llada", max_new_tokens=9, block_length=3)
            ssd = decodelab.generate(lm, prompt, method="sspd", max_new_tokens=9, block_length=3, draft_length=12,
                                     tree="tree", tree_width=width)
            assert ssd.token_ids == stepwise.token_ids, (lm.name, prompt)


def test_sspd_tree_builds_best_first_and_reduces_to_the_chain():
    import torch

    from decodelab.diffusion.sspd import Draft, build_tree

    logits = torch.tensor([[0.0, 3.0, 1.0, -9.0], [0.0, 1.0, 4.0, -9.0], [2.0, 0.0, 1.0, -9.0],
                           [0.0, 0.0, 5.0, -9.0]], dtype=torch.float64)  # G = 4 positions, V = 4
    masked = torch.ones(4, dtype=torch.bool)
    draft = Draft(logits, masked, 4)
    assert draft.order == [3, 1, 0, 2]  # by confidence
    ids = torch.full((6,), 3)
    chain = build_tree(draft, ids, masked, 2, 4, None)
    assert [n.edge for n in chain] == [(3, 2), (1, 2), (0, 1), (2, 0)] and [n.depth for n in chain] == [0, 1, 2, 3]
    q = torch.tensor([[0.5, 0.0], [0.4, 0.0]], dtype=torch.float64)
    tree = build_tree(draft, ids, masked, 2, 4, q)
    # scores: root 1; (0,0) 0.5 and (1,0) 0.4 under the root; then (0,0)(0,0) 0.25 beats (0,0)(1,0) 0.2
    assert [(n.parent, n.edge, round(n.score, 3)) for n in tree] == [
        (None, (3, 2), 1.0), (0, (1, 2), 0.5), (0, (0, 1), 0.4), (1, (0, 1), 0.25)]


def test_sspd_tree_saves_calls_over_the_chain_at_equal_budget():
    """On the trained model the stepwise order often swaps neighbours the chain cannot follow."""
    lm = decodelab.load("builtin:tasks-diffusion")
    items = [it for t in ("copy", "reverse", "sort", "latin4") for it in decodelab.tasks.make(t, 2, 3)]
    calls = {"chain": 0, "tree": 0}
    for it in items:
        stepwise = decodelab.generate(lm, it.prompt, method="llada", max_new_tokens=24)
        for tree in calls:
            g = decodelab.generate(lm, it.prompt, method="sspd", max_new_tokens=24, draft_length=16, tree=tree)
            assert g.token_ids == stepwise.token_ids
            calls[tree] += g.stats.forward_passes
    assert calls["tree"] < calls["chain"], calls


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
    batch = decodelab.generate_batch(tiny, PROMPTS, method="sspd", max_new_tokens=12, block_length=4,
                                     draft_length=8)
    for prompt, row in zip(PROMPTS, batch):
        alone = decodelab.generate(tiny, prompt, method="sspd", max_new_tokens=12, block_length=4, draft_length=8)
        assert row.token_ids == alone.token_ids  # each row's tree and estimate are its own


def test_sspd_refuses_sampling_and_bad_trees(tiny):
    with pytest.raises(ValueError, match="temperature 0"):
        decodelab.generate(tiny, PROMPTS[0], method="sspd", temperature=0.7)
    with pytest.raises(ValueError, match="tree"):
        decodelab.generate(tiny, PROMPTS[0], method="sspd", tree="forest")
