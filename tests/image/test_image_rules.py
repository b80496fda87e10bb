"""Each method's rule on small hand-made cases and tiny random models."""

import itertools

import numpy as np
import pytest
import torch
from conftest import tiny_image_lm

from decodelab.image import image_methods, layouts
from decodelab.image.lpd import _chebyshev, _neighbour_score, _query_probs, linear_cfg, lpd_order
from decodelab.image.methods import JacobiRow, verify_window
from decodelab.image.model import ImageModel, Processing
from decodelab.image.mulo import accepted_mask, expand_islands
from decodelab.image.zipar import settle, zipar_placeholders, zipar_ready


def _run(lm, method, labels, seeds, processing=None, **params):
    model = ImageModel(lm, processing or Processing())
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return image_methods()[method].run(model, torch.tensor(labels), gens, **params)


def test_raster_probs_hide_unknown_tokens(tiny8):
    model = ImageModel(tiny8)
    tokens = torch.randint(8, (1, 64), generator=torch.Generator().manual_seed(0))
    known = torch.ones(1, 64, dtype=torch.bool)
    known[0, 10] = False
    other = tokens.clone()
    other[0, 10] = (tokens[0, 10] + 3) % 8
    a = model.raster_probs(torch.tensor([3]), tokens, known)
    b = model.raster_probs(torch.tensor([3]), other, known)
    changed = (a - b).abs().amax(-1)[0]
    assert changed[11] > 1e-4  # the placeholder is the input of its own slot …
    assert torch.allclose(torch.cat([changed[:11], changed[12:]]), torch.zeros(63), atol=1e-6)  # … and no other


@pytest.mark.parametrize("window", [1, 2, 3, 4, 8])
def test_zipar_passes_follow_the_released_schedule(window):
    counts, passes = [0] * 8, 0
    while min(counts) < 8:
        for i in zipar_ready(counts, 8, window):
            counts[i] += 1
        passes += 1
    assert passes == (64 if window >= 8 else 2 * 8 + 6 * window)  # NFE = 2W + (H-2)s


def test_zipar_row_rule():
    # row 1 waits for row 0 to finish; row 2 needs row 1 to lead by s
    assert zipar_ready([7, 0, 0, 0], 8, 2) == [0]
    assert zipar_ready([8, 2, 0, 0], 8, 2) == [1, 2]
    assert zipar_ready([8, 3, 2, 0], 8, 2) == [1, 3]  # row 2 at column 2 needs row 1 ≥ 4; row 3 may start


def test_zipar_placeholder_rules():
    # 4×4 grid: row 0 complete, row 1 holds 3, row 2 holds 2, row 3 starts (its input slot x_{2,3} is missing)
    tokens = torch.arange(16) + 100
    counts = [4, 3, 2, 0]
    latest, above = tokens.clone(), tokens.clone()
    zipar_placeholders(latest, counts, [3], 4, "latest")
    zipar_placeholders(above, counts, [3], 4, "above")
    assert latest[11] == tokens[6]  # the latest token of row i-2 = 1 (x_{1,2}), LlamaGen port
    assert above[11] == tokens[3]  # x_{0,3}: the last column of the nearest complete row above
    counts = [4, 3, 0, 0]  # row 2 starts while row 1 is incomplete: row 0 is the nearest complete row
    above = tokens.clone()
    zipar_placeholders(above, counts, [2], 4, "above")
    assert above[7] == tokens[3] and torch.equal(above[:7], tokens[:7])
    untouched = tokens.clone()
    zipar_placeholders(untouched, [4, 4, 0, 0], [2], 4, "above")  # row 1 complete: nothing is missing
    assert torch.equal(untouched, tokens)


def test_zipar_full_window_is_raster(tiny8):
    z, zs = _run(tiny8, "zipar", [1, 7], [5, 6], window=8)
    r, rs = _run(tiny8, "raster", [1, 7], [5, 6])
    assert torch.equal(z, r) and zs[0]["forward_passes"] == rs[0]["forward_passes"] == 64


def test_sjd_acceptance_rule_hand_cases():
    k = 4
    row = JacobiRow(torch.tensor([2, 1, 3, 0]), torch.zeros(4, k), torch.zeros(4, k), accepted=0, drafted=3)
    row.q[:3] = torch.nn.functional.one_hot(row.tokens[:3], k).float()
    p = torch.tensor([[0.0, 0.0, 1.0, 0.0],   # draft 2 certain → accepted
                      [0.0, 1.0, 0.0, 0.0],   # draft 1 certain → accepted
                      [0.5, 0.5, 0.0, 0.0],   # draft 3 impossible → rejected, residual = p
                      [1.0, 0.0, 0.0, 0.0]])
    new = verify_window(row, p, torch.Generator().manual_seed(0))
    assert new == 3 and row.tokens[:2].tolist() == [2, 1] and row.tokens[2].item() in (0, 1)
    # every draft accepted → the bonus token comes from the last p
    row = JacobiRow(torch.tensor([2, 1, 0, 0]), torch.zeros(4, k), torch.zeros(4, k), accepted=0, drafted=2)
    row.q[:2] = p[:2]
    assert verify_window(row, p, torch.Generator().manual_seed(0)) == 3 and row.tokens[2].item() in (0, 1)


def test_sjd_greedy_equals_raster_greedy(tiny8):
    greedy = Processing(temperature=0.0)
    r, _ = _run(tiny8, "raster", [0, 4], [0, 1], greedy)
    for init, update in itertools.product(("random", "repeat_horizon", "sample_horizon"), ("jacobi", "reinit")):
        s, stats = _run(tiny8, "sjd", [0, 4], [0, 1], greedy, window=6, init=init, update=update)
        assert torch.equal(s, r), (init, update)
        assert all(st["forward_passes"] <= 64 for st in stats)


def test_nar_takes_2n_minus_1_passes_and_sees_exactly_earlier_diagonals():
    lm = tiny_image_lm(variant="nar", sharpen=4.0)
    _, stats = _run(lm, "nar", [2], [0])
    assert stats[0]["forward_passes"] == 15
    mask = layouts.nar_mask(8, 8)
    d = layouts.diagonals(8, 8)
    assert torch.equal(mask[1:, 1:], d[None, :] <= d[:, None]) and mask[:, 0].all() and not mask[0, 1:].any()
    # the logits of diagonal 5 change with diagonal 4 and not with diagonals ≥ 5
    from decodelab.image.nar import nar_step_logits

    model = ImageModel(lm)
    base = torch.randint(8, (1, 64), generator=torch.Generator().manual_seed(1))
    probs = nar_step_logits(model, torch.tensor([2]), base, 5)[0, d == 5]
    for diag, expect_change in ((4, True), (5, False), (9, False)):
        other = base.clone()
        other[0, d == diag] = (other[0, d == diag] + 1) % 8
        diff = (nar_step_logits(model, torch.tensor([2]), other, 5)[0, d == 5] - probs).abs().max().item()
        assert (diff > 1e-5) == expect_change, diag


def test_lpd_schedule_and_spacing_rule():
    assert layouts.group_sizes(64, 8) == [1, 4, 6, 8, 10, 11, 12, 12]
    assert layouts.group_sizes(64, 64) == [1] * 64 and sum(layouts.group_sizes(64, 50)) == 64
    assert layouts.group_sizes(256, 20) == [1, 2, 4, 5, 7, 8, 10, 11, 12, 14, 15, 16, 17, 18, 18, 19, 19, 20, 20, 20]
    for seed in range(3):
        leads = []
        groups = lpd_order(8, 8, 8, 1, torch.Generator().manual_seed(seed), leads)
        assert sorted(c for g in groups for c in g) == list(range(64))
        assert [len(g) for g in groups] == layouts.group_sizes(64, 8)
        selected = set(groups[0])
        for group, lead in zip(groups[1:], leads[1:]):
            score = {c: _neighbour_score(c, selected, 8) for c in range(64) if c not in selected}
            taken = group[:lead]
            assert all(score[c] >= 1.0 for c in taken)  # candidates: score ≥ 1 …
            assert all(_chebyshev(a, b, 8) > 1 for a in taken for b in taken if a != b)  # … spaced > ρ
            assert [score[c] for c in taken] == sorted((score[c] for c in taken), reverse=True)
            if lead < len(group):  # greedy: every skipped candidate is blocked by a taken cell
                skipped = [c for c in score if score[c] >= 1.0 and c not in taken]
                assert all(any(_chebyshev(c, t, 8) <= 1 for t in taken) for c in skipped)
            selected |= set(group)
        assert sum(leads) > 20  # the locality rule, not the farthest-point fill, places most cells


def test_lpd_mask_queries_see_earlier_groups_only():
    gid = torch.tensor([[0, 1, 1, 2]])
    m = layouts.lpd_mask(gid)[0]
    n = 4
    q = n + 1  # query slots start here
    assert not m[: q, q:].any()  # nothing but queries attends to queries
    assert m[q + 1, 1 + 0] and not m[q + 1, 1 + 1] and not m[q + 1, 1 + 2]  # query of group 1 sees group-0 context
    assert m[q + 1, q + 2] and not m[q + 1, q + 3]  # … and its own group's queries
    assert m[1 + 1, 1 + 2] and not m[1 + 1, 1 + 3]  # context: bidirectional in a group, block-causal


def test_lpd_takes_one_pass_per_group():
    lm = tiny_image_lm(variant="lpd")
    tokens, stats = _run(lm, "lpd", [1, 2], [0, 1], steps=8)
    assert [s["forward_passes"] for s in stats] == [8, 8] and tokens.shape == (2, 64)


@pytest.mark.parametrize("kv_cache", [False, True])
def test_lpd_linear_cfg_ramp(kv_cache):
    # one group of all 64 queries: the token decoded rank-th gets 1 + (cfg - 1)·rank/64
    lm = tiny_image_lm(variant="lpd")
    orders = [lpd_order(8, 8, 1, 1, torch.Generator().manual_seed(s)) for s in (0, 1)]
    gid = torch.zeros(2, 64, dtype=torch.long)
    labels, tokens, attend = torch.tensor([3, 8]), torch.zeros(2, 64, dtype=torch.long), layouts.lpd_mask(gid)
    scale = linear_cfg(orders, 64, 3.0)
    assert scale[0, orders[0][0][0]] == 1.0 and scale[1, orders[1][0][32]] == 2.0
    ramp = _query_probs(ImageModel(lm, Processing(cfg_scale=3.0), kv_cache=kv_cache), labels, tokens, attend, gid, 0, scale)
    for rank in (0, 20, 63):
        fixed = _query_probs(ImageModel(lm, Processing(cfg_scale=1 + 2 * rank / 64)), labels, tokens, attend, gid, 0)
        for row in (0, 1):
            cell = orders[row][0][rank]
            assert torch.allclose(ramp[row, cell], fixed[row, cell], atol=1e-5)
    assert not torch.allclose(ramp, _query_probs(ImageModel(lm, Processing(cfg_scale=3.0)), labels, tokens, attend, gid, 0))


def test_mulo_acceptance_and_islands():
    p = torch.tensor([[0.1, 0.2, 0.6, 0.1], [0.7, 0.1, 0.1, 0.1]])
    # k = 1: p(x̃) ≥ τ; k = 2: the two nearest levels
    assert accepted_mask(p, torch.tensor([2, 2]), 1, 0.5).tolist() == [True, False]
    assert accepted_mask(p, torch.tensor([3, 1]), 2, 0.6).tolist() == [True, True]  # {3,2}: .7; {1,0}: .8
    rejected = np.zeros((2, 8), dtype=bool)
    rejected[0, 1] = rejected[1, 6] = True
    islands = expand_islands(rejected, 1)
    assert sorted(map(len, islands)) == [6, 6] and (0, 0) in islands[0] and (1, 7) in islands[1]
    assert len(expand_islands(rejected, 3)) == 1  # grown islands merge
    assert expand_islands(np.zeros((2, 8), dtype=bool), 1) == []


def test_adaptive_zipar_acceptance_rule():
    gen = torch.Generator().manual_seed(0)
    p_old, p_new = torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.25, 0.25, 0.5])
    assert settle(0, p_old, p_new, 0.49, gen) == (0, True)  # r < p_new/p_old = 0.5
    assert settle(0, p_old, p_new, 0.51, gen) == (2, False)  # residual max(0, p_new - p_old) = level 2 only
    assert settle(1, p_new, p_old, 0.99, gen) == (1, True)  # ratio 2 → always accepted


def test_adaptive_zipar_full_window_is_raster_and_small_windows_save_passes(tiny8):
    z, _ = _run(tiny8, "zipar", [1, 7], [5, 6], min_window=8)
    r, _ = _run(tiny8, "raster", [1, 7], [5, 6])
    assert torch.equal(z, r)
    tokens, stats = _run(tiny_image_lm(sharpen=8.0), "zipar", [1, 7, 3], [5, 6, 7], min_window=1)
    assert tokens.shape == (3, 64) and all(s["forward_passes"] < 64 for s in stats)
    assert any(s["resampled_first_tokens"] > 0 for s in stats), stats  # a wider context changes p
