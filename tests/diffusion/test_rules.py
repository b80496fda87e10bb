"""The commit rules on hand-made confidences: exactly the positions the papers' rules name."""

from __future__ import annotations

import torch

from decodelab.diffusion.rules import Buffered, EntropyBound, Factor, LocalLeap, Schedule, Threshold
from decodelab.diffusion.sampling import Step, top_k_mask

X = float("-inf")


def step(rows):
    conf = torch.tensor(rows, dtype=torch.float64)
    return Step(conf, torch.zeros_like(conf, dtype=torch.long), torch.isfinite(conf))


def test_threshold_commits_exactly_the_positions_above_it_and_at_least_one():
    rule = Threshold(0, 5, threshold=0.9)
    got = rule.select(step([[0.95, 0.5, 0.91, X, 0.2], [0.3, 0.8, X, 0.1, 0.2]]))
    assert got.tolist() == [[True, False, True, False, False], [False, True, False, False, False]]


def test_top_k_per_row_and_schedule_of_llada():
    got = top_k_mask(torch.tensor([[0.1, 0.9, 0.5, X], [0.7, X, 0.2, 0.6]], dtype=torch.float64), torch.tensor([2, 3]))
    assert got.tolist() == [[False, True, True, False], [True, False, True, True]]
    rule = Schedule(block_length=0, gen_length=10, steps=4, remasking="low_confidence")
    rule.start_block(0, 0, 10, masks=10)
    assert rule.plan[0] == [3, 3, 2, 2]  # M // steps, the first M mod steps take one more
    picked = rule.select(step([[0.1, 0.2, 0.9, 0.8, 0.7, 0.3, 0.4, 0.5, 0.6, 0.05]]))
    assert picked[0].nonzero().flatten().tolist() == [2, 3, 4]


def test_factor_rule_accepts_the_longest_passing_prefix():
    rule = Factor(0, 5, factor=1.0)  # bars for j = 2, 3, 4: 1 - 1/3, 1 - 1/4, 1 - 1/5
    got = rule.select(step([[0.5, 0.99, 0.8, 0.9, X], [0.2, 0.1, X, X, X]]))
    assert got.tolist() == [[False, True, True, True, False], [True, False, False, False, False]]


def test_localleap_relaxes_only_near_anchors_and_reduces_to_threshold():
    s = step([[0.95, 0.8, 0.5, X, X, X, 0.8, 0.1]])
    leap = LocalLeap(0, 8, threshold=0.9, relaxed=0.75, radius=1).select(s)
    assert leap[0].nonzero().flatten().tolist() == [0, 1]  # position 6 passes 0.75 but is far from the anchor
    same = LocalLeap(0, 8, threshold=0.9, relaxed=0.9, radius=3).select(s)
    assert torch.equal(same, Threshold(0, 8, 0.9).select(s))
    no_anchor = LocalLeap(0, 8, threshold=0.9, relaxed=0.75, radius=8).select(step([[0.8, 0.85, X]]))
    assert no_anchor.tolist() == [[False, True, False]]  # without an anchor only the top-1


def test_buffered_rule_commits_the_stable_part_of_the_buffer():
    rule = Buffered(0, 8, steps=8, expand_ratio=3.0, warmup=1)  # b = 1, V grows 1 → 4
    conf = [[0.9, 0.8, 0.7, 0.6, 0.5, X, X, X]]
    first = rule.select(step(conf))  # warm-up: top-b only
    assert first[0].nonzero().flatten().tolist() == [0]
    s = step([[X, 0.8, 0.7, 0.6, 0.5, 0.4, X, X]])
    s.x0[0, 1] = 0  # same argmax as the buffered step at position 1
    assert rule.select(s)[0].nonzero().flatten().tolist() == [1]  # buffer was only {0}: V=1 at step 1
    s3 = step([[X, X, 0.7, 0.6, 0.5, 0.4, X, X]])
    s3.x0[0, 3] = 5  # V = 2 at step 2 buffered {1, 2}; 3 was not in it, so only 2 (same argmax) is kept
    assert rule.select(s3)[0].nonzero().flatten().tolist() == [2]


def test_entropy_bound_commits_the_largest_prefix_within_the_budget():
    # conf = −H: entropies 0.05, 0.3, 0.02, (committed), 0.1 → sorted 0.02, 0.05, 0.1, 0.3
    s = step([[-0.05, -0.3, -0.02, X, -0.1]])
    picks = {g: EntropyBound(0, 5, g).select(s)[0].nonzero().flatten().tolist() for g in (0.0, 0.02, 0.07, 0.17)}
    # Σ_{j≤k} H(j) − max: k=1: 0; k=2: 0.02; k=3: 0.07; k=4: 0.17
    assert picks == {0.0: [2], 0.02: [0, 2], 0.07: [0, 2, 4], 0.17: [0, 1, 2, 4]}
