"""Every lossless method on the native backend: greedy-exact, and sample-for-sample identical to the
transformers adapter.

The native forward reproduces the transformers model's logits (test_native.py); here the whole
method stack runs on it. Temperature 0: each lossless method's tokens equal greedy's on the native
backend and equal the adapter's greedy. Temperature > 0: with the same seed, every method draws the
same tokens on both backends, over many seeds on spread-out models with a draft that is often rejected
— so the distribution tests with stated power in tests/methods/ (run on the adapter) carry over to
the native backend unchanged; a native-only bias would break the seed-for-seed identity at once.
"""

import itertools

import pytest
import torch

import decodelab
from decodelab.model import LM
from decodelab.model.native import from_transformers

from fakes import tiny_lm

LOSSLESS = sorted(n for n, m in decodelab.methods().items() if m.lossless and m.kind == "causal" and n != "greedy")
PROMPTS = ["def f(x):\n    return x + 1\n\ndef g(x):\n    return", "abcabcabcabcabcab", "x",
           "the cat sat on the mat. the cat sat on the", "1, 2, 3, 4, 5, 6, 7, "]


def _native(hf: LM) -> LM:
    return LM(from_transformers(hf.model), hf.tokenizer, name=hf.name + "-native", backend="native")


def _pair(arch: str, seed: int, head_scale: float = 1.0, noise: float = 0.0):
    """(adapter LM, native LM) over the same weights, each with a draft over the same (noisy) weights."""
    hf, draft = tiny_lm(arch, seed=seed), tiny_lm(arch, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        hf.model.get_output_embeddings().weight.mul_(head_scale)
        draft.model.load_state_dict(hf.model.state_dict())
        for p in draft.model.parameters():
            p.add_(noise * p.std() * torch.randn(p.shape, generator=gen))
    nat, nat_draft = _native(hf), _native(draft)
    hf.state["drafts"] = {"tiny-draft": draft}
    nat.state["drafts"] = {"tiny-draft": nat_draft}
    return hf, nat


SHARP = {arch: _pair(arch, seed) for arch, seed in (("llama", 0), ("qwen2", 2))}


def _needs(method: str) -> dict:
    return {"draft": "tiny-draft"} if "draft" in decodelab.methods()[method].params else {}


@pytest.mark.parametrize("method", [m for m in LOSSLESS if m != "sample"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_native_greedy_exactness(method, arch):
    hf, nat = SHARP[arch]
    for prompt, n in itertools.product(PROMPTS, (3, 37)):
        want = decodelab.generate(nat, prompt, max_new_tokens=n).token_ids
        assert want == decodelab.generate(hf, prompt, max_new_tokens=n).token_ids, (prompt, n)
        got = decodelab.generate(nat, prompt, method=method, max_new_tokens=n, **_needs(method))
        assert got.token_ids == want, (method, prompt, n)


SOFT = _pair("llama", 5, head_scale=0.08, noise=0.5)
N_SEEDS = 150


@pytest.mark.parametrize("method", LOSSLESS)
def test_native_samples_identical_to_adapter(method):
    """Same seed → same tokens on both backends, on a spread-out model with a rejected-often draft."""
    hf, nat = SOFT
    params = dict(temperature=1.0, top_k=40, **_needs(method))
    outcomes, drafted, accepted = set(), 0, 0
    for seed in range(N_SEEDS):
        a = decodelab.generate(hf, PROMPTS[1], method=method, max_new_tokens=6, seed=seed, **params)
        b = decodelab.generate(nat, PROMPTS[1], method=method, max_new_tokens=6, seed=seed, **params)
        assert a.token_ids == b.token_ids, (method, seed)
        outcomes.add(tuple(b.token_ids[:2]))
        drafted += sum(b.stats.drafted)
        accepted += sum(b.stats.accepted)
    assert len(outcomes) >= 20  # spread out: many distinct 2-token beginnings
    if method in ("speculative", "tree", "selfspec"):  # model drafts: both paths of the verifier ran
        assert accepted >= 50 and drafted - accepted >= 50, (drafted, accepted)


def test_selfspec_on_native_uses_shared_weights():
    hf, nat = SHARP["llama"]
    from decodelab.model.early_exit import early_exit_lm

    exit_lm = early_exit_lm(nat, 1)
    assert exit_lm.backend == "native" and len(exit_lm.model.layers) == 1
    assert exit_lm.model.layers[0] is nat.model.layers[0] and exit_lm.model.embed is nat.model.embed


def test_selfspec_shares_the_target_cache_on_native():
    """LayerSkip's shared cache: layer 0 sees each position once — drafted tokens are not re-run by the
    verify pass — so it processes exactly as many tokens as the last layer (without sharing: ~2×)."""
    lm = decodelab.load(backend="native")
    seen = {"first": 0, "last": 0}
    hooks = [lm.model.layers[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("first", seen["first"] + a[0].shape[1])),
             lm.model.layers[-1].register_forward_pre_hook(lambda m, a: seen.__setitem__("last", seen["last"] + a[0].shape[1]))]
    try:
        g = decodelab.generate(lm, "import os\nimport sys\n", method="selfspec", exit_layer=3, max_new_tokens=40)
    finally:
        for h in hooks:
            h.remove()
    assert g.token_ids == decodelab.generate(lm, "import os\nimport sys\n", max_new_tokens=40).token_ids
    assert g.stats.draft_forward_passes > 0 and seen["first"] == seen["last"], seen
