"""What each proposer proposes, on hand-made contexts (a lossless method's output cannot show a
proposer that stopped proposing useful tokens — only its speed can; see also tests/methods/test_tau_floors.py).

- prompt lookup: the exact continuation of the match of the longest final n-gram (the earliest
  occurrence, the rule of transformers' `prompt_lookup_num_tokens` and of Saxena's reference);
- Jacobi: the next iterate is the target's argmax after the accepted prefix, padded with its last guess;
- lookahead: the n-grams the window reads go to the pool under their first token and come back as
  the next candidates;
- token recycling: after a verify step, the row of every fed token is the top-k of the target's logits
  at that node, the accepted path written last;
- draft model: the q it reports is the processed distribution (every sampling parameter) it drew
  each token from, in the target's vocabulary.
"""

import random
from types import SimpleNamespace

import pytest
import torch

import decodelab
from decodelab.errors import UserError
from decodelab.methods.loop import speculative_loop
from decodelab.proposers.draft_model import DraftModel
from decodelab.proposers.jacobi import Jacobi
from decodelab.proposers.lookahead import Lookahead, trie
from decodelab.proposers.lookup import NgramIndex, PromptLookup
from decodelab.proposers.recycling import TokenRecycling
from decodelab.verify import Draft, Verdict

from fakes import context, noisy_copy, soft_lm, tiny_lm

# ---- prompt lookup ------------------------------------------------------------------------------

@pytest.mark.parametrize("ids,n,k,want", [
    ([1, 2, 3, 4, 5, 9, 9, 1, 2, 3], 3, 4, [4, 5, 9, 9]),  # the 3-gram's continuation, exactly
    ([1, 2, 3, 4, 5, 9, 9, 1, 2, 3], 3, 9, [4, 5, 9, 9, 1, 2, 3]),  # up to the end of the context
    ([7, 8, 1, 2, 7, 8, 3, 4, 7, 8], 2, 2, [1, 2]),  # two earlier matches: the earliest
    ([5, 6, 1, 2, 3, 0, 2, 3, 6], 3, 3, [1, 2, 3]),  # no 3- or 2-gram match: the 1-gram's
    ([4, 4, 4, 4], 2, 3, [4, 4]),  # overlapping match: continuation stops at the context end
    ([1, 2, 3, 4], 3, 5, []),  # nothing matches
    ([1, 2, 3, 4, 5, 1, 2, 3], 1, 3, [4, 5, 1]),  # max_ngram_size 1 only looks at the last token
])
def test_lookup_returns_the_continuation_of_the_match(ids, n, k, want):
    assert NgramIndex(n).find(ids, k) == want


def _lookup_by_scan(ids: list[int], max_n: int, k: int, min_n: int = 1) -> list[int]:
    """The rule stated plainly: longest n ≥ min_n first, earliest earlier occurrence, its next k tokens."""
    for n in range(min(max_n, len(ids) - 1), min_n - 1, -1):
        for start in range(len(ids) - n):
            if ids[start : start + n] == ids[-n:]:
                return ids[start + n : start + n + k]
    return []


@pytest.mark.parametrize("seed", range(4))
def test_ngram_index_follows_a_list_that_grows_is_cut_back_and_regrows(seed):
    rng = random.Random(seed)
    index, ids = NgramIndex(3), []
    for _ in range(300):
        move = rng.random()
        if move < 0.6:  # a step accepted a few tokens (a small vocabulary: many repeated n-grams)
            ids = ids + [rng.randrange(6) for _ in range(rng.randint(1, 4))]
        elif move < 0.85:  # a draft tree's next chain: back to a shared prefix, then other tokens
            ids = ids[: rng.randint(0, len(ids))] + [rng.randrange(6) for _ in range(rng.randint(0, 3))]
        else:  # another context altogether
            ids = [rng.randrange(6) for _ in range(rng.randint(0, 30))]
        k, min_n = rng.randint(1, 8), rng.randint(1, 3)
        assert index.find(ids, k, min_n) == _lookup_by_scan(ids, 3, k, min_n), ids
        assert index.tokens == ids and len(index.added) == len(ids)


def test_min_ngram_size_drafts_only_after_a_long_enough_match():
    ids = [5, 6, 1, 2, 3, 0, 2, 3, 6]  # only the last token (6) occurred before
    assert NgramIndex(3).find(ids, 3) == [1, 2, 3]
    assert NgramIndex(3).find(ids, 3, min_n=2) == []
    assert NgramIndex(3).find(ids[:-1], 3, min_n=2) == [0, 2, 3]  # "2 3" occurred before
    with pytest.raises(UserError, match="min_ngram_size .3. must not exceed max_ngram_size .2."):
        decodelab.methods()["pld"].check_params({"min_ngram_size": 3, "max_ngram_size": 2})


def test_prompt_lookup_proposes_a_deterministic_chain_within_the_limit():
    ctx = SimpleNamespace(ids=lambda: [1, 2, 3, 4, 5, 6, 1, 2, 3])
    draft = PromptLookup(max_ngram_size=3, num_draft_tokens=5).propose(ctx, limit=2)
    assert draft.tokens == [4, 5] and draft.is_chain() and draft.q is None
    assert PromptLookup(3, 2).propose(ctx, limit=9).tokens == [4, 5]


# ---- Jacobi -------------------------------------------------------------------------------------

def _logits_with_argmax(rows: list[int], vocab: int = 10) -> torch.Tensor:
    logits = torch.zeros(len(rows), vocab)
    logits[torch.arange(len(rows)), torch.tensor(rows)] = 1.0
    return logits


def test_jacobi_window_update():
    ctx = SimpleNamespace(ids=lambda: [3, 1, 4])
    jacobi = Jacobi(block_size=4)
    first = jacobi.propose(ctx, limit=9)
    assert first.tokens == [4, 4, 4, 4]  # no iterate yet: the pending token repeated
    # rows: at the pending token, then at each draft token; path = 1 accepted → iterate = rows 2..4
    jacobi.observe(ctx, first, Verdict([0], [4, 7]), _logits_with_argmax([4, 7, 5, 9, 2]))
    assert jacobi.guess == [5, 9, 2]
    assert jacobi.propose(ctx, limit=9).tokens == [5, 9, 2, 2]  # padded with the last guess
    assert jacobi.propose(ctx, limit=2).tokens == [5, 9]
    draft = Draft.chain([5, 9, 2, 2])
    jacobi.observe(ctx, draft, Verdict([], [6]), _logits_with_argmax([6, 8, 8, 1, 3]))
    assert jacobi.guess == [8, 8, 1, 3]  # nothing accepted: every later position is the next iterate
    jacobi.observe(ctx, draft, Verdict([0, 1, 2, 3], [5, 9, 2, 2, 0]), _logits_with_argmax([5, 9, 2, 2, 0]))
    assert jacobi.guess == [] and jacobi.propose(ctx, limit=3).tokens == [4, 4, 4]


# ---- lookahead ----------------------------------------------------------------------------------

def _tree_argmax(draft: Draft, pending: int, rule) -> torch.Tensor:
    """Logits [1 + n + n_aux, V] whose argmax at each node is rule(path from the pending token)."""
    tokens, parents = draft.tokens + draft.aux_tokens, draft.parents + draft.aux_parents
    best = [rule([pending])]
    for i in range(len(tokens)):
        path, j = [], i
        while j >= 0:
            path.append(tokens[j])
            j = parents[j]
        best.append(rule([pending] + path[::-1]))
    return _logits_with_argmax(best, vocab=97)


def test_lookahead_pool_collects_the_window_ngrams_and_proposes_them():
    rule = lambda path: (path[-2] + path[-1]) % 97 if len(path) > 1 else 5  # noqa: E731
    ids = [3, 8, 1, 4]
    ctx = SimpleNamespace(ids=lambda: ids, lm=SimpleNamespace(max_length=100))
    proposer = Lookahead(ids, ngram_size=3, window=3, pool_cap=8)
    stored = []
    for step in range(4):
        draft = proposer.propose(ctx, limit=4)
        if step > 0:  # the pool's n-grams under the pending token are the candidates, merged in a trie
            assert (draft.tokens, draft.parents) == trie(proposer.pool.get(ids[-1]), 4, 100)
        before = {k: list(v) for k, v in proposer.pool._table.items()}
        proposer.observe(ctx, draft, Verdict([], [0]), _tree_argmax(draft, ids[-1], rule))
        new = [(k, *g) for k, v in proposer.pool._table.items() for g in v if g not in before.get(k, [])]
        stored += new
        for gram in new:  # every n-gram read down a column beyond the first obeys the rule
            assert len(gram) == 3
            if gram[0] != ids[-1]:
                assert gram[2] == rule(list(gram[:2])), gram
    assert stored and proposer.pool.get(ids[-1])


# ---- token recycling ----------------------------------------------------------------------------

def _reference_topk(lm, ids: list[int], k: int) -> list[int]:
    return torch.topk(lm.session().forward(ids)[0, -1], k).indices.tolist()


def test_recycling_matrix_rows_after_a_verify_step_are_the_targets_topk():
    """One real step on a tiny model with a filled matrix: each fed token's row = top-k of the target
    at that node (its tree path); the pending token and the accepted path are written last."""
    lm = tiny_lm("llama", seed=5)
    ids = lm.encode("the cat sat on the mat. the cat")
    k = 3
    decodelab.generate(lm, ids, method="recycling", widths="3,3,2", k=k, max_new_tokens=12)  # fills M
    ctx = context(lm, ids, "recycling", max_new_tokens=8, widths="3,3,2", k=k)
    proposer = TokenRecycling(ctx, (3, 3, 2), k)
    seen = {}
    observe = proposer.observe
    proposer.observe = lambda ctx, draft, verdict, logits: (seen.update(draft=draft, verdict=verdict),
                                                            observe(ctx, draft, verdict, logits))
    steps = speculative_loop(ctx, proposer)
    ctx.out[0] += next(steps)[0]
    pending = ctx.ids()
    next(steps)
    draft, verdict = seen["draft"], seen["verdict"]
    assert len(draft) > 2 and len(set(draft.tokens)) > 2  # a real tree, not the zero matrix's chain
    contexts = []
    for i in range(len(draft)):
        path, j = [], i
        while j >= 0:
            path.append(draft.tokens[j])
            j = draft.parents[j]
        contexts.append(pending + path[::-1])
    writes = [i for i in range(len(draft)) if i not in verdict.path]
    last = {draft.tokens[i]: contexts[i] for i in writes}
    last[pending[-1]] = pending
    last.update({draft.tokens[i]: contexts[i] for i in verdict.path})
    for token, ctx_ids in last.items():
        assert proposer.matrix[token].tolist() == _reference_topk(lm, ctx_ids, k), token


# ---- draft model --------------------------------------------------------------------------------

def test_draft_model_q_is_the_processed_distribution_it_sampled_from():
    target = soft_lm("llama", seed=0, scale=0.2)
    draft_lm = noisy_copy(target, 0.3, seed=2)
    ids = target.encode("abcabc")
    params = dict(temperature=0.7, top_k=6, top_p=0.9, repetition_penalty=1.3)
    ctx = context(target, ids, "speculative", seed=11, **params)
    draft = DraftModel(ctx, draft_lm, num_draft_tokens=4, stop_threshold=1.0).propose(ctx, limit=4)
    assert len(draft) == 4 and draft.q.shape == (4, target.vocab_size)
    gen = torch.Generator().manual_seed(11)
    for i, x in enumerate(draft.tokens):
        want = decodelab.next_token_probs(draft_lm, ids + draft.tokens[:i], **params)
        torch.testing.assert_close(draft.q[i], want, atol=1e-5, rtol=0)
        assert int(torch.multinomial(want, 1, generator=gen)) == x  # drawn from this q, in this order
    assert (draft.q > 0).sum(-1).max() <= 6  # top-k applied to the draft too
