"""`phi` (φ-Decoding, Xu et al., arXiv:2503.13288): its rules on hand-made numbers — in-width pruning
(mean − std, top-up by softmax(F/0.1)), the joint weight ½[softmax(r) + softmax(A/0.1)], cluster shares,
the in-depth stop rule, TF-IDF + k-means grouping — and a run whose answer is one of its ranked
completions, same seed → same text, with the foresight completion's steps ending at newlines."""

import math

import pytest
import torch

import decodelab
from decodelab.search.phi import cluster, draw, joint_weights, prune_width, shares, softmax, stop_in_depth

from fakes import soft_lm


def test_in_width_pruning_by_hand():
    f = [-1.0, -2.0, -3.0, -10.0]  # mean −4, std √(9+4+1+36)/2 = √12.5 ≈ 3.54 → threshold ≈ −7.54
    assert prune_width(f, 2, None) == [0, 1, 2]
    f = [-1.0, -1.0, -1.0, -5.0]  # mean −2, std √3 ≈ 1.73 → threshold −3.73: three kept
    assert prune_width(f, 4, None) == [0, 1, 2, 3]  # topped up with the pruned one
    assert prune_width([-1.0, -1.0, -1.0], 2, None) == [0, 1]  # std 0: F > mean fails for all → top up to M
    # mean 2.42, std 3.45 → threshold −1.03 keeps the four 5.0s; the top-up to M = 5 draws from the pruned
    # −1.5 and −3.0 by softmax(F/0.1) ≈ [1, 3e-7]
    assert prune_width([5.0, 5.0, 5.0, 5.0, -1.5, -3.0], 5, torch.Generator().manual_seed(0)) == [0, 1, 2, 3, 4]


def test_joint_weights_shares_and_depth_rule():
    r = shares([0, 0, 1, 2])
    assert r == [0.5, 0.5, 0.25, 0.25]
    w = joint_weights(r, [0.0, 0.1, 0.0, 0.0])
    a, b = softmax(r), softmax([0.0, 0.1, 0.0, 0.0], 0.1)
    assert w == pytest.approx([0.5 * (x + y) for x, y in zip(a, b)])
    assert sum(w) == pytest.approx(1.0)
    assert softmax([0.0, 0.1], 0.1)[1] == pytest.approx(math.e / (1 + math.e))
    assert not stop_in_depth(3, ["a", "a"], [0, 0])  # too early
    assert stop_in_depth(4, ["a", "a"], [0, 0])  # all agree
    assert stop_in_depth(4, ["a", "b", "c"], [0, 0, 1]) is False  # 2/3 < 0.69
    assert stop_in_depth(5, list("abcdefghij"), [0] * 7 + [1, 2, 2])  # 0.7 ≥ 0.69
    assert draw([0.1, 0.7, 0.2], 2, None) == [1, 2]


def test_clustering_groups_alike_texts():
    texts = ["return a + b", "return a + b", "x = foo(bar)", "x = foo(baz)", "while True: pass"]
    labels = cluster(texts)
    assert labels[0] == labels[1] and labels[2] == labels[3] and len(set(labels)) == 3
    assert cluster(["same", "same"]) == [0, 0]


def test_run_answer_is_ranked_and_seeded():
    lm = soft_lm("llama", seed=3, scale=0.4)
    kw = dict(method="phi", max_new_tokens=12, seed=4, num_beams=2, num_rollouts=2, max_steps=3)
    g = decodelab.generate(lm, "a = 1\nb", **kw)
    assert g.candidates and g.token_ids == g.candidates[0].token_ids and len(g.candidates) <= 2
    assert decodelab.generate(lm, "a = 1\nb", **kw).token_ids == g.token_ids
    with pytest.raises(ValueError, match="constraint"):
        decodelab.generate(lm, "x", method="phi", max_new_tokens=4, constraint={"regex": "[a-z]+"})


def test_temperature_zero_is_greedy():
    """Greedy steps and greedy rollouts: every completion is the greedy text, so φ's answer is greedy's."""
    lm = soft_lm("llama", seed=3, scale=0.4)
    for prompt in ("a = 1\nb", "def f(x):\n"):
        ours = decodelab.generate(lm, prompt, method="phi", max_new_tokens=16, temperature=0, num_beams=2,
                                  num_rollouts=2, max_steps=5)
        assert ours.token_ids == decodelab.generate(lm, prompt, method="greedy", max_new_tokens=16).token_ids
