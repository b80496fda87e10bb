"""Draft-model trees (SpecInfer) with the prompt-lookup second stage (staged speculation): greedy
exactness, τ = depth + 1 when the draft is the target, the stage's saved draft forwards, and the
sampled distribution (α = stat_utils.ALPHA)."""

from collections import Counter

import pytest
import torch

import decodelab
from decodelab.proposers.draft_tree import greedy_extend

from fakes import MANY_PROMPTS, soft_lm, tiny_lm
from stat_utils import ALPHA, chi2_pvalue, exact_joint

PROMPTS = MANY_PROMPTS
SETTINGS = [{}, {"branching": 2, "depth": 3, "ngram_stage": False}, {"branching": 1, "depth": 8}]


def _noisy_copy(arch, seed, noise=0.1):
    """The target's weights plus noise: a draft that agrees with the target most of the time."""
    d = tiny_lm(arch, seed=seed)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in d.model.parameters():
            p.add_(noise * p.std() * torch.randn(p.shape, generator=gen))
    return d


def _with_drafts(lm, arch="llama", seed=0):
    """Drafts: a random tiny model (rejects nearly everything), a noisy copy, the target itself."""
    lm.state["drafts"] = {"tiny-draft": tiny_lm("llama", seed=1), "noisy": _noisy_copy(arch, seed), "self": lm}
    return lm


def test_greedy_extend():
    logits = torch.zeros(4, 6)
    logits[0, 2] = logits[1, 3] = logits[2, 5] = logits[3, 1] = 1.0
    assert greedy_extend(logits, [2, 3, 4]) == [2, 3, 5]  # 2, 3 accepted, 4 ≠ argmax 5
    assert greedy_extend(logits, [2, 3, 5]) == [2, 3, 5, 1]  # all accepted + the next argmax
    assert greedy_extend(logits, [0, 3, 5]) == [2]
    assert greedy_extend(logits[:1], []) == [2]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_exact(arch):
    lm = _with_drafts(tiny_lm(arch, seed=3), arch, seed=3)
    for i, prompt in enumerate(PROMPTS):  # every prompt, each setting on a third of them
        n = 40 if i % 3 == 0 else 1 + i % 3
        kw = {**SETTINGS[i % len(SETTINGS)], "draft": "noisy" if i % 2 else "tiny-draft"}
        want = decodelab.generate(lm, prompt, max_new_tokens=n).token_ids
        got = decodelab.generate(lm, prompt, method="tree", max_new_tokens=n, **kw)
        assert got.token_ids == want, (prompt, n, kw)


def test_greedy_exact_with_repetition_penalty():
    lm = _with_drafts(tiny_lm("llama", seed=4), seed=4)
    for prompt in PROMPTS[:6]:
        kw = {"max_new_tokens": 30, "repetition_penalty": 1.3}
        for draft in ("noisy", "self"):
            assert (decodelab.generate(lm, prompt, method="tree", draft=draft, **kw).token_ids
                    == decodelab.generate(lm, prompt, **kw).token_ids)


@pytest.mark.parametrize("kw", [{"depth": 5}, {"depth": 3, "branching": 2, "ngram_stage": False},
                                {"depth": 7, "branching": 1}])
def test_target_as_draft_accepts_every_branch(kw):
    """The draft's greedy chain is the target's: τ = depth + 1 on (almost) every full step."""
    lm = _with_drafts(tiny_lm("llama", seed=5))
    drafted = accepted = 0
    for prompt in PROMPTS[:8]:
        g = decodelab.generate(lm, prompt, method="tree", draft="self", max_new_tokens=40, **kw)
        assert g.token_ids == decodelab.generate(lm, prompt, max_new_tokens=40).token_ids
        assert len(g.stats.drafted) == kw["depth"]
        drafted += g.stats.drafted[-1]  # steps that offered a full-depth branch
        accepted += g.stats.accepted[-1]  # … and accepted all of it
    assert accepted >= 0.95 * drafted


def test_ngram_stage_saves_draft_forwards_and_changes_nothing():
    lm = _with_drafts(tiny_lm("llama", seed=1))
    for prompt in ["abcabcabcabcabcabc", "the cat sat on the mat. the cat sat on the"]:
        kw = {"method": "tree", "draft": "self", "branching": 1, "depth": 6, "max_new_tokens": 60}
        on = decodelab.generate(lm, prompt, ngram_stage=True, **kw)
        off = decodelab.generate(lm, prompt, ngram_stage=False, **kw)
        assert on.token_ids == off.token_ids
        assert on.stats.forward_passes == off.stats.forward_passes  # the target sees the same trees
        assert on.stats.draft_forward_passes < 0.8 * off.stats.draft_forward_passes


@pytest.mark.parametrize("length", [200, 240, 254])
def test_near_context_limit_the_tree_shrinks_to_fit(length):
    """The tree narrows to fit the target's context and the draft's (here a shorter one)."""
    lm = _with_drafts(tiny_lm("llama", seed=3), seed=3)
    lm.state["drafts"]["short"] = tiny_lm("llama", seed=3, max_position_embeddings=220)
    prompt = [ord("a") + i % 26 for i in range(length)]
    want = decodelab.generate(lm, prompt, max_new_tokens=64)
    for kw in ({"draft": "self", "branching": 4, "depth": 10}, {"draft": "noisy"}, {"draft": "short"}):
        got = decodelab.generate(lm, prompt, method="tree", max_new_tokens=64, **kw)
        assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason, kw


def test_default_draft_is_auto():
    from decodelab.methods import methods

    info = methods()["tree"]
    assert info.lossless and info.params["draft"] == "auto" and info.params["ngram_stage"] is True
    with pytest.raises(ValueError):
        decodelab.generate(tiny_lm("llama"), "x", method="tree", max_new_tokens=3)  # no known draft


@pytest.mark.parametrize("draft,seeds,depth", [("self", 800, 2), ("tiny-draft", 400, 2)])
def test_sampling_distribution_of_first_three_tokens(draft, seeds, depth):
    lm = soft_lm("llama", seed=6)
    lm.state["drafts"] = {"tiny-draft": soft_lm("llama", seed=1), "self": lm}
    ids = lm.encode("hello")
    kw = {"temperature": 0.9, "top_k": 3}
    samples, accepted = [], 0
    for seed in range(seeds):
        g = decodelab.generate(lm, ids, method="tree", draft=draft, depth=depth, max_new_tokens=2 + depth,
                               seed=seed, **kw)
        samples.append(tuple(g.token_ids[:3]))
        accepted += sum(g.stats.accepted)
    if draft == "self":
        assert accepted > 800  # the top-3 children are the target's support: drafts are accepted
    exact = exact_joint(lm, ids, 3, **kw)
    assert abs(sum(exact.values()) - 1) < 1e-4
    assert chi2_pvalue(samples, exact) > ALPHA, Counter(samples).most_common(5)
    assert len(set(samples)) > 6


def test_draft_cache_never_keeps_a_forest_as_a_sequence():
    """After proposing, the draft's cache holds only the context (a prefix of it): the forest of chains
    the proposer fed side by side is rolled back, so a later sync cannot keep a second chain's root as
    if it continued the first (llama.cpp refused that; other backends silently drafted from it)."""
    from decodelab.engine import Context
    from decodelab.processors import Sampler
    from decodelab.proposers.draft_tree import DraftTree
    from decodelab.stats import Stats

    lm = _with_drafts(tiny_lm("llama", seed=3))
    ids = lm.encode(PROMPTS[0])
    ctx = Context(lm, [ids], {}, Sampler({"temperature": 0.0}, len(ids)), None, 20, Stats())
    proposer = DraftTree(ctx, lm.state["drafts"]["noisy"], branching=3, depth=4, ngram_stage=False)
    draft = proposer.propose(ctx, 4)
    assert len(set(p for p in draft.parents if p == -1)) == 1 and draft.parents.count(-1) == 3  # a forest
    assert proposer.session.real_tokens(0) == ids[: proposer.session.length]
