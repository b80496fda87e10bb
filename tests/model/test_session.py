"""The adapter: tree masks, positions, truncate / compact must reproduce plain causal decoding."""

import pytest
import torch

from decodelab.treeshape import ancestor_matrix, tree_depths

from fakes import ARCHS, tiny_lm

ATOL = 1e-4


def _sequential_logits(lm, ids):
    """Logits of a fresh causal forward over ids: [n, V]."""
    return lm.session().forward(ids)[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_incremental_forward_matches_full_forward(arch):
    lm = tiny_lm(arch)
    ids = list(range(30, 60))
    s = lm.session()
    parts = [s.forward(ids[:10]), s.forward(ids[10:11]), s.forward(ids[11:])]
    torch.testing.assert_close(torch.cat(parts, dim=1)[0], _sequential_logits(lm, ids), atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_tree_forward_matches_each_path(arch):
    """Every node of a tree sees exactly its ancestors: its logits equal the chain's."""
    lm = tiny_lm(arch)
    prefix = [5, 9, 80, 81, 82]
    tokens = [40, 41, 42, 43, 44, 45, 46]
    parents = [-1, 0, 0, 1, 1, 2, 5]
    s = lm.session()
    s.forward(prefix)
    tree = s.forward(tokens, parents=parents)[0]
    for i in range(len(tokens)):
        path, j = [], i
        while j >= 0:
            path.append(tokens[j])
            j = parents[j]
        chain = _sequential_logits(lm, prefix + path[::-1])[-1]
        torch.testing.assert_close(tree[i], chain, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_compact_keeps_accepted_path_and_continues_exactly(arch):
    lm = tiny_lm(arch)
    prefix, tokens, parents = [3, 4, 5], [10, 11, 12, 13], [-1, 0, 0, 2]
    s = lm.session()
    s.forward(prefix)
    s.forward(tokens, parents=parents)
    s.compact([0, 1, 2, 3 + 0, 3 + 2, 3 + 3])  # path 10 -> 12 -> 13
    assert s.tokens[0] == [3, 4, 5, 10, 12, 13]
    nxt = s.forward([77])[0, -1]
    torch.testing.assert_close(nxt, _sequential_logits(lm, [3, 4, 5, 10, 12, 13, 77])[-1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_truncate_rolls_back(arch):
    lm = tiny_lm(arch)
    s = lm.session()
    s.forward([1, 2, 3, 4, 5, 6])
    s.truncate(3)
    assert s.length == 3
    torch.testing.assert_close(s.forward([9])[0, -1], _sequential_logits(lm, [1, 2, 3, 9])[-1], atol=ATOL, rtol=0)


def test_sync_returns_missing_suffix():
    lm = tiny_lm("llama")
    s = lm.session()
    s.forward([1, 2, 3, 4])
    assert s.sync([1, 2, 7, 8]) == [7, 8]
    assert s.length == 2


def test_tree_helpers():
    parents = [-1, 0, 0, 1, -1]
    assert tree_depths(parents) == [0, 1, 1, 2, 0]
    anc = ancestor_matrix(parents)
    assert anc[3].tolist() == [True, True, False, True, False]
    assert anc[4].tolist() == [False, False, False, False, True]


def test_forward_counting_and_overflow():
    from decodelab.errors import ModelError

    lm = tiny_lm("llama")
    s = lm.session()
    s.forward([1] * 250)
    assert s.forward_passes == 1
    with pytest.raises(ModelError, match="context too long"):
        s.forward([1] * 10)
