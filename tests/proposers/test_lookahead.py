"""Lookahead decoding: greedy-exact, window/pool mechanics, and the exact sampling distribution."""

import itertools
from types import SimpleNamespace

import pytest
import torch

import decodelab
from decodelab.engine import Context
from decodelab.methods import get
from decodelab.methods.loop import speculative_loop
from decodelab.processors import Sampler
from decodelab.proposers.lookahead import Lookahead, NGramPool, Window, trie
from decodelab.stats import Stats
from decodelab.treeshape import tree_depths

from fakes import tiny_lm

PROMPTS = [
    "abcabcabcabcabcabc", "def f(x):\n    return x\n" * 2, "for i in range(10):\n    print(i)\n" * 2,
    "the cat sat on the mat. the cat sat on the mat.", "1, 2, 3, 1, 2, 3, 1, 2, 3,", "hello world",
    "a", "import os\nimport sys\n", "class Foo(object):\n    pass", "x = 1\ny = 2\n", "<div><div></div>",
    "Lorem ipsum dolor sit amet",
]
SETTINGS = [dict(N=4, W=5, G=5), dict(N=3, W=2, G=1), dict(N=5, W=7, G=7), dict(N=3, W=1, G=3)]


def _same_as_greedy(lm, prompt, n, **params):
    want = decodelab.generate(lm, prompt, max_new_tokens=n)
    got = decodelab.generate(lm, prompt, method="lookahead", max_new_tokens=n, **params)
    assert got.token_ids == want.token_ids, (prompt, params)
    assert got.finish_reason == want.finish_reason
    return got


# ---- (1) greedy: token-identical to plain greedy -------------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_equals_greedy(arch):
    lm = tiny_lm(arch, seed=1)
    taus = []
    for i, prompt in enumerate(PROMPTS):
        taus.append(_same_as_greedy(lm, prompt, 28, **SETTINGS[i % len(SETTINGS)]).stats.mean_accepted)
    assert max(taus) > 1.5  # pool n-grams made by the window really get accepted


def test_greedy_on_gpt2_and_short_budgets():
    lm = tiny_lm("gpt2", seed=2)
    for prompt, params in zip(PROMPTS[:3], SETTINGS):
        _same_as_greedy(lm, prompt, 20, **params)
    lm = tiny_lm("llama", seed=1)
    for n, params in itertools.product((1, 2, 3), SETTINGS[:2]):
        g = _same_as_greedy(lm, PROMPTS[1], n, **params)
        assert len(g.token_ids) == n


def test_repetitive_prompt_accepts_ngrams():
    lm = tiny_lm("llama", seed=1)
    g = _same_as_greedy(lm, PROMPTS[1], 48)
    assert g.stats.mean_accepted > 1.5


def _drive(lm, ids, n, seed=None, grams=(), stop_after=None, **params):
    """Run the lookahead loop for n new tokens directly (stopping once `stop_after` are out):
    (steps of emitted tokens, stats). `grams` prime the pool."""
    params = get("lookahead").check_params(params)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    ctx = Context(lm, [ids], params, Sampler(params, prompt_len=len(ids)), gen, n, Stats())
    proposer = Lookahead(ids, params["N"], params["W"], params["G"])
    for gram in grams:
        proposer.pool.add(gram[0], gram[1:])
    steps = []
    for step in speculative_loop(ctx, proposer):
        steps.append(step[0])
        ctx.out[0].extend(step[0])
        if len(ctx.out[0]) >= (stop_after or n):
            return steps, ctx.stats
    raise AssertionError("the loop ended early")  # pragma: no cover


def _new_token_inside_a_step(steps):
    """Index of a token first seen in the run and emitted before the last token of its step."""
    run = []
    for step in steps[1:]:
        for i, t in enumerate(step[:-1]):
            if t not in run + step[:i] and steps[0][0] != t:
                return len(steps[0]) + len(run) + i
        run += step
    return None


def test_eos_inside_an_accepted_run():
    """EOS = a token first emitted inside a multi-token step: the engine cuts the step there."""
    lm = tiny_lm("llama", seed=1)
    for prompt in PROMPTS:
        steps, _ = _drive(lm, lm.encode(prompt), 40)
        k = _new_token_inside_a_step(steps)
        if k is not None:
            break
    assert k is not None, "no multi-token step emitted a new token"
    run = sum(steps, [])
    lm = tiny_lm("llama", seed=1, eos_token_id=run[k])
    g = _same_as_greedy(lm, prompt, 40)
    assert g.finish_reason == "eos" and g.token_ids == run[: k + 1]


def test_context_limit():
    lm = tiny_lm("qwen2", seed=1)
    prompt = lm.encode(PROMPTS[1]) * 5
    prompt = prompt[: lm.max_length - 12]
    g = _same_as_greedy(lm, prompt, 64)
    assert len(prompt) + len(g.token_ids) == lm.max_length


# ---- (2) window and pool mechanics --------------------------------------------------------------

def _fib(path):
    """A stand-in model whose argmax depends on the last two tokens: x[t+1] = x[t−1] + x[t] (mod 97)."""
    return (path[-2] + path[-1]) % 97


def _jacobi_step(window, pending):
    """Feed the window to _fib with tree attention: each node sees its ancestors and the pending token."""
    tokens, parents = window.tree()
    guesses = []
    for i in range(len(tokens)):
        path, j = [], i
        while j >= 0:
            path.append(tokens[j])
            j = parents[j]
        guesses.append(_fib([pending] + path[::-1]))
    return window.step(pending, guesses)


def test_window_layout_matches_the_paper():
    n, w = 4, 3
    window = Window(n, list(range(10, 10 + w + n - 3)))
    tokens, parents = window.tree()
    assert parents == [-1, 0, 1, 2]  # level 0: a chain off the pending token, columns 1..4
    for _ in range(n - 2):
        assert _jacobi_step(window, pending=1) == []  # filling: no n-grams yet
    assert [len(r) for r in window.rows] == [w - 1, w, w]
    tokens, parents = window.tree()
    index = {}
    for lvl, row in enumerate(window.rows):
        for j in range(len(row)):
            index[(lvl, j + (lvl == 0))] = len(index)
    depths = tree_depths(parents)
    for (lvl, col), i in index.items():
        assert depths[i] + 1 == lvl + col  # position offset from the pending token
        above = (0, col - 1) if lvl == 0 else (lvl - 1, col)
        assert parents[i] == index.get(above, -1)


def test_ngrams_read_down_the_columns_are_jacobi_consistent():
    """Every n-gram from columns ≥ 1 obeys the model: x[i+2] = f(x[i], x[i+1]), once filled."""
    for n, w in [(3, 4), (4, 3), (5, 5)]:
        window = Window(n, [3, 8, 1, 4, 1, 5, 9, 2, 6][: w + n - 3])
        for _ in range(n - 2):
            _jacobi_step(window, pending=7)
        for pending in (7, 11, 13):
            grams = _jacobi_step(window, pending)
            assert len(grams) == w and all(len(g) == n for g in grams)
            assert grams[0][0] == pending
            for g in grams[1:]:
                assert all(g[i + 2] == _fib(g[i: i + 2]) for i in range(n - 2)), (n, w, g)
            assert [len(r) for r in window.rows] == [w - 1] + [w] * (n - 2)


def test_window_shift_after_fill():
    window = Window(4, [1, 2, 3, 4])  # W = 3
    window.rows = [[1, 2], [10, 11, 12], [20, 21, 22]]
    grams = window.step(pending=0, guesses=[0] * 8 + [30, 31, 32])
    assert grams == [(0, 10, 20, 30), (1, 11, 21, 31), (2, 12, 22, 32)]
    assert window.rows == [[11, 12], [20, 21, 22], [30, 31, 32]]


def test_pool_caps_each_key_lru():
    pool = NGramPool(2)
    pool.add(5, (1, 2))
    pool.add(5, (3, 4))
    pool.add(5, (1, 2))  # refreshed: now the newest
    pool.add(5, (7, 8))  # evicts (3, 4), the least recently used
    pool.add(6, (9, 9))
    assert pool.get(5) == [(7, 8), (1, 2)]
    assert pool.get(6) == [(9, 9)] and pool.get(4) == []


def test_trie_merges_prefixes_and_respects_depth_and_size():
    assert trie([(1, 2, 3), (1, 2, 4), (5, 6, 7)], 9, 99) == ([1, 2, 3, 4, 5, 6, 7], [-1, 0, 1, 1, -1, 4, 5])
    assert trie([(1, 2, 3), (1, 4, 5)], 2, 99) == ([1, 2, 4], [-1, 0, 0])
    assert trie([(1, 2, 3), (5, 6, 7)], 9, 4) == ([1, 2, 3, 5], [-1, 0, 1, -1])


def test_propose_offsets_window_parents_and_fits_the_context():
    proposer = Lookahead([1, 2, 3], ngram_size=3, window=2, pool_cap=4)
    proposer.pool.add(9, (4, 5))
    ctx = SimpleNamespace(ids=lambda: [1, 2, 3, 9], lm=SimpleNamespace(max_length=100))
    draft = proposer.propose(ctx, limit=1)
    assert draft.tokens == [4] and draft.depth() == 1  # clipped to limit by the proposer itself
    assert draft.aux_parents == [-1, 1]  # level 0 (columns 1, 2): a chain off the pending token
    ctx.lm.max_length = 6  # room for 2 nodes: the candidate fits, the window does not
    draft = proposer.propose(ctx, limit=2)
    assert draft.tokens == [4, 5] and draft.aux_tokens == []
    proposer.observe(ctx, draft, None, torch.zeros(3, 8))  # no window fed: it stays as it was
    assert len(proposer.window.rows) == 1


# ---- (3) sampling (its distribution: tests/methods/test_distribution.py, primed pool) -------------

def test_sampling_end_to_end_is_reproducible():
    lm = tiny_lm("qwen2", seed=1)
    kw = dict(method="lookahead", max_new_tokens=24, temperature=0.9, top_k=3, seed=5)
    a = decodelab.generate(lm, PROMPTS[1], **kw)
    b = decodelab.generate(lm, PROMPTS[1], **kw)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 24
