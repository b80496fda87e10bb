"""`contrastive` equals a straightforward reference loop (full forward per candidate, no cache), its
rule holds on hand-made vectors, α = 0 is greedy, and batched rows equal the rows alone.

transformers 5.24 no longer has contrastive search in core (it maps `penalty_alpha` to the Hub repo
transformers-community/contrastive-search, remote code), so the reference is written here."""

import pytest
import torch

import decodelab
from decodelab.search.contrastive import contrastive_choice, degeneration_penalty

from fakes import ARCHS, tiny_lm

PROMPTS = ["def f(x):", "hello world hello", "a"]


def _reference(lm, prompt, n, alpha, k):
    """Su et al.'s rule, recomputing everything from scratch every step."""
    ids = lm.encode(prompt)
    model = lm.model
    for _ in range(n):
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_hidden_states=True)
        context = out.hidden_states[-1][0]  # [L, d]
        p = out.logits[0, -1].float().softmax(-1)
        top_p, top_ids = p.topk(k)
        scores = []
        for prob, v in zip(top_p.tolist(), top_ids.tolist()):
            with torch.no_grad():
                h = model(torch.tensor([ids + [v]]), output_hidden_states=True).hidden_states[-1][0, -1]
            penalty = torch.cosine_similarity(h[None], context, dim=-1).max().item()
            scores.append((1 - alpha) * prob - alpha * penalty)
        ids.append(top_ids[max(range(k), key=scores.__getitem__)].item())
    return ids[len(lm.encode(prompt)):]


@pytest.mark.parametrize("arch", ARCHS)
def test_contrastive_equals_reference_loop(arch):
    lm = tiny_lm(arch, seed=4)
    for prompt, alpha, k in zip(PROMPTS, (0.6, 0.5, 0.9), (4, 5, 3)):
        ours = decodelab.generate(lm, prompt, method="contrastive", max_new_tokens=12, penalty_alpha=alpha,
                                  top_k=k)
        assert ours.token_ids == _reference(lm, prompt, 12, alpha, k)


def test_batched_rows_equal_rows_alone_and_alpha_zero_is_greedy():
    lm = tiny_lm("llama", seed=2)
    together = decodelab.generate_batch(lm, PROMPTS, method="contrastive", max_new_tokens=40)  # > DEFRAG_EVERY
    for p, g in zip(PROMPTS, together):
        assert g.token_ids == decodelab.generate(lm, p, method="contrastive", max_new_tokens=40).token_ids
        assert (decodelab.generate(lm, p, method="contrastive", max_new_tokens=20, penalty_alpha=0.0).token_ids
                == decodelab.generate(lm, p, method="greedy", max_new_tokens=20).token_ids)


def test_rule_on_hand_made_vectors():
    context = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [1, 2, 2]
    h = torch.tensor([[[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]])  # cos maxima: 1, 1/√2, 0
    penalty = degeneration_penalty(h, context, torch.ones(1, 2, dtype=torch.bool))
    assert penalty[0].tolist() == pytest.approx([1.0, 2 ** -0.5, 0.0])
    p = torch.tensor([[0.5, 0.3, 0.2]])
    assert contrastive_choice(p, penalty, 0.0).item() == 0  # pure likelihood
    assert contrastive_choice(p, penalty, 0.6).item() == 2  # scores 0.2 − 0.6, 0.12 − 0.42, 0.08
    # a padded context column never counts
    masked = degeneration_penalty(h, context, torch.tensor([[False, True]]))
    assert masked[0].tolist() == pytest.approx([0.0, 2 ** -0.5, 0.0])


def test_native_backend_equals_transformers_backend_on_pyco():
    """The native Session (static cache, defragment after 16 steps) gives the same tokens."""
    native, hf = decodelab.load("builtin:pyco"), decodelab.load("builtin:pyco", backend="transformers")
    prompts = ["def add(a, b):\n", "for i in range("]
    kw = dict(method="contrastive", max_new_tokens=20, top_k=4)
    assert ([g.token_ids for g in decodelab.generate_batch(native, prompts, **kw)]
            == [g.token_ids for g in decodelab.generate_batch(hf, prompts, **kw)])


def test_removed_candidates_are_never_chosen_and_grammars_hold():
    p = torch.tensor([[0.0, 0.7, 0.3]])  # candidate 0 was masked out, and it has the lowest penalty
    penalty = torch.tensor([[-1.0, 0.9, 0.9]])
    assert contrastive_choice(p, penalty, 0.9).item() == 0  # the paper's rule alone (p may underflow to 0)
    assert contrastive_choice(p, penalty, 0.9, removed=torch.tensor([[True, False, False]])).item() == 1
    import re

    lm = tiny_lm("llama", seed=2)
    for prompt in ("x = ", "def f(x):", "hello"):  # without `removed`, α = 0.9 picks masked tokens here
        for method, extra in (("contrastive", {"penalty_alpha": 0.9}), ("dola", {})):
            g = decodelab.generate(lm, prompt, method=method, max_new_tokens=10, constraint={"regex": "[01]{1,6}"},
                                   **extra)
            assert re.fullmatch("[01]{1,6}", g.text) and g.incomplete is False, (method, g.text)
