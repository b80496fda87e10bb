"""Token Recycling: template builder, tree instantiation, matrix updates, greedy exactness,
persistence of the adjacency matrix across calls, and the sampled distribution (α = stat_utils.ALPHA)."""

from collections import Counter
from types import SimpleNamespace

import pytest
import torch

import decodelab
from decodelab.proposers.recycling import (
    PAPER_WIDTHS,
    TokenRecycling,
    build_template,
    parse_widths,
    template_depths,
)
from decodelab.verify import Draft, Verdict

from fakes import MANY_PROMPTS, soft_lm, tiny_lm
from stat_utils import ALPHA, chi2_pvalue, exact_joint

PROMPTS = MANY_PROMPTS
SETTINGS = [{}, {"widths": "4,6,4,2", "k": 4}, {"widths": "2,2,2,2,2,2,2,2", "k": 2}]


# ---- template ----------------------------------------------------------------------------
@pytest.mark.parametrize("widths,k", [(PAPER_WIDTHS, 8), ((4, 6, 4, 2), 4), ((1, 1, 1), 1),
                                      ((3, 9, 27), 3), ((8, 1, 5), 8)])
def test_template_shape(widths, k):
    template = build_template(widths, k)
    assert len(template) == sum(widths)
    assert all(parent < i for i, (parent, _) in enumerate(template))
    assert all(0 <= rank < k for _, rank in template)
    assert len(set(template)) == len(template)  # no (parent, rank) twice
    depths = template_depths(template)
    assert [depths.count(d) for d in range(1, len(widths) + 1)] == list(widths)
    assert depths == sorted(depths)  # BFS order


def test_paper_template_and_rank_prior():
    template = build_template(PAPER_WIDTHS, 8)
    assert len(template) == 80 and max(template_depths(template)) == 6
    assert template[:8] == [(-1, j) for j in range(8)]
    # a parent's children always take its lowest ranks: the prior decreases with rank
    for parent in set(p for p, _ in template):
        ranks = [r for p, r in template if p == parent]
        assert ranks == list(range(len(ranks)))


def test_bad_widths_raise():
    with pytest.raises(ValueError):
        build_template((9,), 8)
    with pytest.raises(ValueError):
        build_template((2, 5), 2)
    for text in ("", "a,b", "3,0", "-1"):
        with pytest.raises(ValueError):
            parse_widths(text)
    assert parse_widths("8, 21,25") == (8, 21, 25)


# ---- proposer on a fake context -------------------------------------------------------------
def _ctx(ids, vocab=10):
    lm = SimpleNamespace(state={}, vocab_size=vocab, max_length=1000)
    return SimpleNamespace(lm=lm, ids=lambda: list(ids))


def test_zero_matrix_drafts_one_deduplicated_chain():
    ctx = _ctx([1, 2, 3])
    draft = TokenRecycling(ctx, PAPER_WIDTHS, 8).propose(ctx, limit=64)
    assert draft.tokens == [0] * 6 and draft.parents == [-1, 0, 1, 2, 3, 4]


def test_siblings_are_unique_and_depth_respects_limit():
    ctx = _ctx([5], vocab=10)
    prop = TokenRecycling(ctx, (3, 4, 2), 3)
    prop.matrix[:] = torch.tensor([[1, 1, 2], [3, 4, 3], [5, 6, 7], [8, 9, 8], [1, 2, 3], [1, 2, 1],
                                   [0, 1, 2], [0, 1, 2], [0, 1, 2], [0, 1, 2]])
    draft = prop.propose(ctx, limit=64)
    kids = draft.children()
    for children in kids.values():
        toks = [draft.tokens[c] for c in children]
        assert len(toks) == len(set(toks))
    assert [draft.tokens[c] for c in kids[-1]] == [1, 2]  # root 5 → row [1, 2, 1]: duplicate dropped
    assert all(draft.tokens[c] == prop.matrix[draft.tokens[p], r] for p in kids if p >= 0
               for r, c in enumerate(kids[p]))
    assert prop.propose(ctx, limit=1).tokens == [1, 2]
    ctx.lm.max_length = 4  # one pending token in the context: room for 3 nodes, a BFS prefix
    assert prop.propose(ctx, limit=64).tokens == draft.tokens[:3]


def test_observe_writes_topk_rows_path_last():
    ctx = _ctx([2, 4], vocab=6)
    prop = TokenRecycling(ctx, (2, 1), 2)
    draft = Draft([3, 3, 1], [-1, 0, 1])  # token 3 fed twice; the path is [0]
    logits = torch.tensor([[0., 1, 5, 2, 0, 0],  # pending 4 → top-2 (2, 3)
                           [9., 8, 0, 0, 0, 0],  # node 0 (token 3, on the path) → (0, 1)
                           [0., 0, 0, 0, 7, 9],  # node 1 (token 3, off the path) → (5, 4)
                           [0., 0, 0, 6, 0, 5]])  # node 2 (token 1) → (3, 5)
    prop.observe(ctx, draft, Verdict([0], [3, 0]), logits)
    m = ctx.lm.state["recycling"][2]
    assert m[4].tolist() == [2, 3] and m[3].tolist() == [0, 1] and m[1].tolist() == [3, 5]
    assert m[0].tolist() == [0, 0]


# ---- end to end --------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_exact(arch):
    lm = tiny_lm(arch, seed=3)
    for i, prompt in enumerate(PROMPTS):
        n = 40 if i % 3 == 0 else 1 + i % 3
        want = decodelab.generate(lm, prompt, max_new_tokens=n).token_ids
        for kw in SETTINGS:
            got = decodelab.generate(lm, prompt, method="recycling", max_new_tokens=n, **kw).token_ids
            assert got == want, (prompt, n, kw)


def test_greedy_exact_with_repetition_penalty():
    lm = tiny_lm("llama", seed=4)
    for prompt in PROMPTS[:6]:
        kw = {"max_new_tokens": 30, "repetition_penalty": 1.3}
        assert (decodelab.generate(lm, prompt, method="recycling", widths="4,6,4,2", **kw).token_ids
                == decodelab.generate(lm, prompt, **kw).token_ids)


@pytest.mark.parametrize("length", [200, 240, 254])
def test_near_context_limit_the_tree_shrinks_to_fit(length):
    lm = tiny_lm("llama", seed=3)
    prompt = [ord("a") + i % 26 for i in range(length)]
    want = decodelab.generate(lm, prompt, max_new_tokens=64)
    got = decodelab.generate(lm, prompt, method="recycling", max_new_tokens=64)
    assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason


def test_matrix_persists_across_calls_and_second_call_accepts():
    lm = tiny_lm("llama", seed=5)
    prompt = "the cat sat on the mat. the cat sat on the"
    first = decodelab.generate(lm, prompt, method="recycling", max_new_tokens=40)
    matrix = lm.state["recycling"][8]
    assert matrix.shape == (lm.vocab_size, 8) and matrix.any()
    snapshot = matrix.clone()
    second = decodelab.generate(lm, prompt, method="recycling", max_new_tokens=40)
    assert lm.state["recycling"][8] is matrix  # the same matrix, updated in place
    assert not torch.equal(matrix, snapshot)  # the second call rewrote rows of the shared matrix
    assert second.token_ids == first.token_ids == decodelab.generate(lm, prompt, max_new_tokens=40).token_ids
    assert second.stats.mean_accepted > 1.5
    assert second.stats.mean_accepted >= first.stats.mean_accepted
    decodelab.generate(lm, prompt, method="recycling", max_new_tokens=5, k=4, widths="4")
    assert set(lm.state["recycling"]) == {8, 4}  # each k keeps its own matrix


def test_sampling_distribution_of_first_three_tokens():
    lm = soft_lm("llama", seed=6)
    ids = lm.encode("hello")
    kw = {"temperature": 0.9, "top_k": 3}
    samples, accepted = [], 0
    for seed in range(800):
        g = decodelab.generate(lm, ids, method="recycling", widths="4,6,4,2", k=4, max_new_tokens=5, seed=seed, **kw)
        samples.append(tuple(g.token_ids[:3]))
        accepted += sum(g.stats.accepted)
    assert accepted > 200  # the matrix learned the support: drafts really were accepted
    exact = exact_joint(lm, ids, 3, **kw)
    assert abs(sum(exact.values()) - 1) < 1e-4
    assert chi2_pvalue(samples, exact) > ALPHA, Counter(samples).most_common(5)
    assert len(set(samples)) > 6
