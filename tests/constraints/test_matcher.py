"""RowConstraint (advance / rollback / seek / fork), draft pruning and the grammar mask processor."""

import torch

from decodelab.constraints import GrammarMask, RowConstraint, compile_constraint, prune
from decodelab.verify import Draft

from fakes import EOS, tiny_lm

LM = tiny_lm("llama", seed=0)


def _row(constraint):
    return RowConstraint(compile_constraint(LM, constraint))


def b(text: str) -> list[int]:
    return list(text.encode())


def test_seek_rolls_back_to_the_common_prefix_and_forks_independently():
    row = _row({"regex": "a(bc)*d"})
    assert row.seek(b("abcbc")) and row.tokens == b("abcbc")
    assert row.validate(b("bcd")) == 3 and row.validate(b("x")) == 0
    assert row.seek(b("ad")) and row.stopped  # rolled back to "a", then advanced by "d"
    twin = row.fork()
    assert twin.seek(b("abc")) and not twin.stopped
    assert row.stopped and row.tokens == b("ad")  # the fork did not move the original
    assert not row.seek(b("abx")) and row.tokens == b("ab")  # invalid: left at the longest valid prefix


def test_prune_cuts_deterministic_chains_and_trees_at_the_first_rejected_token():
    row = _row({"choice": ["cat", "car", "dog"]})
    chain = Draft.chain(b("atx"))
    assert prune(chain, row, b("c")).tokens == b("at")
    #        a(0) ─ t(1)        tree after the pending "c": "at" and "ar" valid, "o…" and "ax" not
    #        o(2) ─ g(3)
    #        a(0) ─ x(4), r(5)
    tree = Draft(b("atogxr"), [-1, 0, -1, 2, 0, 0])
    pruned = prune(tree, row, b("c"))
    assert pruned.tokens == b("atr") and pruned.parents == [-1, 0, 0]
    whole = Draft.chain(b("at"))
    assert prune(whole, row, b("c")) is whole  # nothing rejected: the very same draft


def test_prune_never_cuts_sampled_drafts():
    """Cutting a q-sampled draft would condition on it (biased); verification rejects it exactly instead."""
    row = _row({"choice": ["cat"]})
    draft = Draft.chain(b("xy"), torch.full((2, LM.vocab_size), 1.0 / LM.vocab_size))
    assert prune(draft, row, []) is draft


def test_prune_keeps_the_lookahead_window_reindexed():
    row = _row({"regex": "[ab]+"})
    draft = Draft(b("ax"), [-1, -1], None, b("ab"), [-1, 2])  # aux parents index [candidates + aux]
    pruned = prune(draft, row, [])
    assert pruned.tokens == b("a") and pruned.aux_tokens == b("ab") and pruned.aux_parents == [-1, 1]


def test_grammar_mask_masks_each_row_by_its_own_generated_tokens():
    grammar = compile_constraint(LM, {"regex": "(ab|ba)c"})
    prompt = b("zz")
    mask = GrammarMask([grammar] * 2, len(prompt), LM.eos_token_ids)
    ids = torch.tensor([prompt + b("a"), prompt + b("b")])
    scores = mask(ids, torch.zeros(2, LM.vocab_size))
    assert torch.isfinite(scores[0]).nonzero().flatten().tolist() == [ord("b")]
    assert torch.isfinite(scores[1]).nonzero().flatten().tolist() == [ord("a")]
    done = mask(torch.tensor([prompt + b("abc"), prompt + b("bxc")]), torch.zeros(2, LM.vocab_size))
    assert torch.isfinite(done).nonzero()[:, 1].tolist() == [EOS, EOS]  # complete; rejected: EOS only, no NaN


def test_sampler_row_view_masks_row_b_with_its_own_prompt_length():
    """What a per-row (batched speculative) loop needs: row b's history alone, unpadded."""
    from decodelab.processors import Sampler

    grammar = compile_constraint(LM, {"regex": "(ab|ba)c"})
    mask = GrammarMask([grammar] * 2, 5, LM.eos_token_ids)  # padded width 5
    sampler = Sampler({"temperature": 0}, prompt_len=5, constraint=mask)
    view = sampler.for_row(1, prompt_len=2)  # row 1's own prompt has 2 tokens
    p = view.probs(torch.tensor([b("zz") + b("b")]), torch.zeros(1, LM.vocab_size))
    assert int(p.argmax()) == ord("a") and view.constraint.rows[0] is mask.rows[1]
