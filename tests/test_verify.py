"""The verifier alone on synthetic p and q: emitted tokens follow p exactly (chi-square, α = 1e-3)."""

import pytest
import torch

import decodelab.verify as V
from decodelab.verify import Draft, verify

from stat_utils import ALPHA, chi2_pvalue

VOCAB = 6
N = 6000


def _dist(*w):
    t = torch.tensor(w, dtype=torch.float32)
    return t / t.sum()


P_ROOT = _dist(4, 3, 2, 1, 0, 0)  # target at the pending token
P_CHILD = {0: _dist(1, 1, 5, 0, 0, 1), 1: _dist(0, 2, 2, 2, 2, 0), 2: _dist(1, 0, 0, 0, 0, 1)}
Q = _dist(6, 0, 1, 0, 1, 2)  # draft: q > p at token 0,: zeros where p is not, mass where p is zero


def _p_at_factory(draft):
    def p_at(node):
        if node < 0:
            return P_ROOT
        return P_CHILD.get(draft.tokens[node], _dist(1, 1, 1, 1, 1, 1))
    return p_at


def _first_two(draft_fn, seed=0):
    """Sample (first, second) emitted tokens with fresh drafts each time."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(N):
        draft = draft_fn(gen)
        toks = verify(draft, _p_at_factory(draft), gen, greedy=False).tokens
        if len(toks) < 2:  # rejected at the root: the next token would come from p at that token
            nxt = torch.multinomial(_p_at_factory(Draft.chain([toks[0]]))(0), 1, generator=gen).item()
            toks = toks + [nxt]
        out.append(tuple(toks[:2]))
    return out


def _exact_pairs():
    return {(a, b): float(P_ROOT[a] * P_CHILD.get(a, _dist(1, 1, 1, 1, 1, 1))[b])
            for a in range(VOCAB) for b in range(VOCAB)}


def _stochastic_chain(gen):
    x0 = torch.multinomial(Q, 1, generator=gen).item()
    x1 = torch.multinomial(Q, 1, generator=gen).item()
    return Draft.chain([x0, x1], torch.stack([Q, Q]))


def _deterministic_tree(gen):
    # two root children (tokens 0 and 4), each with a child; one-hot q
    return Draft([0, 4, 2, 5], [-1, -1, 0, 1])


def _stochastic_tree(gen):
    xs = [torch.multinomial(Q, 1, generator=gen).item() for _ in range(3)]
    y = torch.multinomial(Q, 1, generator=gen).item()
    return Draft(xs + [y], [-1, -1, -1, 0], torch.stack([Q, Q, Q, Q]))


@pytest.mark.parametrize("draft_fn", [_stochastic_chain, _deterministic_tree, _stochastic_tree])
def test_verifier_preserves_target_distribution(draft_fn):
    assert chi2_pvalue(_first_two(draft_fn), _exact_pairs()) > ALPHA


def test_greedy_accepts_exactly_the_argmax_path():
    draft = Draft([0, 1, 2], [-1, 0, 1])
    verdict = verify(draft, _p_at_factory(draft), None, greedy=True)
    # argmax at root is 0 (accepted); after 0 the argmax is 2, draft says 1 → recovered token 2
    assert verdict.path == [0] and verdict.tokens == [0, 2]


@pytest.mark.parametrize("broken", ["uncapped_no_residual", "raw_q"])
def test_a_wrong_verifier_fails_the_distribution_test(monkeypatch, broken):
    """Proof that the test above can fail: two classic bugs are caught."""
    if broken == "uncapped_no_residual":  # resample from p instead of the residual after rejection
        monkeypatch.setattr(V, "_residual", lambda p, q_row, x: p)
    else:  # q taken as the uniform 'raw logits' distribution rather than the one sampled from
        real = V._accept
        monkeypatch.setattr(V, "_accept", lambda p, q_row, x, g: real(p, None if q_row is None else
                                                                      torch.full_like(q_row, 1 / VOCAB), x, g))
    assert chi2_pvalue(_first_two(_stochastic_chain), _exact_pairs()) < ALPHA
