"""selfspec: early-exit LMs share the target's weights and match a manual exit; DEL's (ℓ, d) choice;
greedy output identical to greedy; sampled tokens follow the target distribution."""

import itertools
from types import SimpleNamespace

import pytest
import torch

import decodelab
from decodelab.model.early_exit import early_exit_lm, exit_tokens, num_layers
from decodelab.proposers.self_draft import SMOOTHING, SelfDraft, best_plan, tokens_per_layer
from decodelab.verify import Draft, Verdict

from fakes import tiny_lm
from stat_utils import ALPHA, chi2_pvalue, exact_joint

PROMPTS = [
    "def f(x):\n    return x + 1\n\ndef g(x):\n    return", "abcabcabcabcabcab", "x", "hello hello hello",
    "the cat sat on the mat. the cat sat on the", "import os\nimport sys\nimport", "1, 2, 3, 4, 5, ",
    "class A:\n    pass\nclass B", "zzzzzzzzzz", "for i in range(10):\n    print(", "{\"a\": 1, \"b\": ",
    "SELECT * FROM t WHERE", "<html><body>", "# TODO: fix", "while True:\n    ", "aaaa bbbb aaaa",
    "Once upon a time", "0x1f, 0x2e, 0x3d", "return self.", "ok",
]
IDS = [5, 17, 99, 3, 250, 42, 42, 7]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def lm(request):
    return tiny_lm(request.param, seed=11, num_hidden_layers=4)


def test_full_depth_exit_equals_target(lm):
    full = early_exit_lm(lm, 4)
    assert full is not lm and full.model is not lm.model
    with torch.no_grad():
        assert torch.equal(full.model(torch.tensor([IDS])).logits, lm.model(torch.tensor([IDS])).logits)


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_exit_logits_equal_norm_and_head_of_hidden_state(lm, layer):
    ids = torch.tensor([IDS])
    with torch.no_grad():
        hidden = lm.model(ids, output_hidden_states=True).hidden_states
        manual = lm.model.lm_head(lm.model.model.norm(hidden[layer]))
        torch.testing.assert_close(early_exit_lm(lm, layer).model(ids).logits, manual, atol=1e-6, rtol=0)


def test_weights_are_shared_not_copied(lm):
    ptrs = {p.data_ptr() for p in lm.model.parameters()}
    for layer in (1, 3):
        exit_lm = early_exit_lm(lm, layer)
        assert early_exit_lm(lm, layer) is exit_lm  # cached in lm.state
        assert all(p.data_ptr() in ptrs for p in exit_lm.model.parameters())
        assert exit_lm.model.model.layers[layer - 1] is lm.model.model.layers[layer - 1]
        assert len(exit_lm.model.model.layers) == layer and exit_lm.tokenizer is lm.tokenizer


def test_hidden_states_of_target_and_exit_are_not_doubled(lm):
    """Hidden-state capture hooks live on the shared layers once (see early_exit._share_output_hooks)."""
    exit_lm = early_exit_lm(lm, 2)
    _, exit_hidden = exit_lm.session().forward(IDS, hidden=True)
    _, hidden = lm.session().forward(IDS, hidden=True)
    assert len(exit_hidden) == 3 and len(hidden) == 5
    torch.testing.assert_close(exit_hidden[1], hidden[1], atol=0, rtol=0)


def test_gpt2_is_refused_in_one_line():
    gpt2 = tiny_lm("gpt2")
    with pytest.raises(decodelab.ModelError, match="model.model.layers") as err:
        num_layers(gpt2)
    assert "\n" not in str(err.value)
    with pytest.raises(decodelab.ModelError, match="Llama-family"):
        decodelab.generate(gpt2, "x", method="selfspec", max_new_tokens=4)


def test_tpl_choice_is_the_argmax():
    L = 8
    cases = [{1: 0.1, 2: 0.2, 3: 0.9, 4: 0.95, 5: 0.96, 6: 0.97, 7: 0.99},
             {ell: 0.5 * ell / L for ell in range(1, L)},
             {1: 0.99, 2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0, 6: 1.0, 7: 1.0},
             {1: 0.0, 2: 0.0, 3: 0.3, 4: 0.6, 5: 0.8, 6: 0.9, 7: 0.95}]
    for alphas in cases:
        scores = {(ell, d): tokens_per_layer(a, ell, d, L) for ell, a in alphas.items() for d in range(1, 7)}
        assert scores[best_plan(alphas, L, 6)] == max(scores.values())
    assert tokens_per_layer(1.0, 2, 3, L) == pytest.approx(4 / (3 * 2 + L))
    assert tokens_per_layer(0.5, 2, 1, L) == pytest.approx(1.5 / (2 + L))
    assert best_plan(cases[0], L, 6) == (3, 4)  # an early exit that agrees 90% drafts long
    assert best_plan(cases[1], L, 6) == (1, 1)  # the pessimistic prior drafts one token from layer 1


SETTINGS = {"l1": dict(exit_layer=1, num_draft_tokens=2), "l2": dict(exit_layer=2, num_draft_tokens=3),
            "l3": dict(exit_layer=3, num_draft_tokens=4), "del": dict(exit_layer=0, num_draft_tokens=6)}
_GREEDY: dict = {}


def _greedy(lm, prompt):
    """Plain greedy, 40 tokens; a shorter budget's output is its prefix."""
    key = (lm.name, prompt)
    if key not in _GREEDY:
        _GREEDY[key] = decodelab.generate(lm, prompt, max_new_tokens=40).token_ids
    return _GREEDY[key]


@pytest.mark.parametrize("arch,setting", [("llama", "l1"), ("llama", "l2"), ("llama", "l3"), ("llama", "del"),
                                          ("qwen2", "del")])
def test_greedy_exactness(arch, setting):
    lm = tiny_lm(arch, seed=11, num_hidden_layers=4)
    for prompt, n in itertools.product(PROMPTS, (1, 2, 3, 40)):
        got = decodelab.generate(lm, prompt, method="selfspec", max_new_tokens=n, **SETTINGS[setting])
        assert got.token_ids == _greedy(lm, prompt)[:n], (setting, prompt, n)


def test_del_alpha_is_a_moving_average_of_shadow_token_agreement(lm):
    """Emitted tokens = layer 3's shadow tokens: α_3 moves to 1 − (1 − β)^n (1 − α_3); others lag."""
    ctx = SimpleNamespace(lm=lm)
    proposer = SelfDraft(ctx, 0, 6)
    prior = proposer.alpha.clone()
    _, hidden = lm.session().forward(IDS, hidden=True)
    n = len(IDS)
    tokens = exit_tokens(lm, hidden, [3], list(range(n)))[0].tolist()
    proposer.observe(ctx, Draft.chain(tokens[1:]), Verdict(list(range(n - 1)), tokens), None,
                     hidden=hidden)
    assert float(proposer.alpha[2]) == pytest.approx(1 - (1 - SMOOTHING) ** n * (1 - float(prior[2])))
    assert (proposer.alpha[:2] <= proposer.alpha[2]).all()
    assert SelfDraft(ctx, 2, 6).wants_hidden is False  # a fixed exit needs no shadow tokens


def test_sampled_distribution_matches_target():
    """DEL, first 3 of 4 tokens: the third may be an accepted draft, a recovered or a bonus token."""
    lm = tiny_lm("llama", seed=12, num_hidden_layers=4)
    params = dict(temperature=0.9, top_k=3)
    prompt = "abcabcab"
    exact = exact_joint(lm, lm.encode(prompt), 3, **params)
    samples = [tuple(decodelab.generate(lm, prompt, method="selfspec", max_new_tokens=4, seed=s, **params,
                                        **SETTINGS["del"]).token_ids[:3]) for s in range(800)]
    assert chi2_pvalue(samples, exact) > ALPHA
