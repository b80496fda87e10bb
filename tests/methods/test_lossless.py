"""The losslessness invariant for every registered lossless method (CONTRACT.md).

- temperature 0: token ids equal greedy's, float32 CPU, over many prompts and settings;
- temperature > 0: tests/methods/test_distribution.py (the joint distribution of the first generated
  tokens equals the exact target distribution, with stated power).
"""

import itertools

import pytest

import decodelab

from fakes import EOS, tiny_lm

LOSSLESS = sorted(n for n, m in decodelab.methods().items() if m.lossless and m.kind == "causal" and n not in ("greedy", "sample"))
PROMPTS = [
    "def f(x):\n    return x + 1\n\ndef g(x):\n    return",
    "abcabcabcabcabcab",
    "the cat sat on the mat. the cat sat on the",
    "import os\nimport sys\nimport os\nimport",
    "x",
    "for i in range(10):\n    print(i)\nfor j in range(10):\n    print(",
    "1, 2, 3, 4, 5, 6, 7, ",
    "hello hello hello hello hello",
    "class A:\n    pass\nclass B:\n    pass\nclass C",
    "zzzzzzzzzzzzzzzzzz",
]


def _models():
    target = tiny_lm("llama", seed=0)
    target.state["drafts"] = {"tiny-draft": tiny_lm("llama", seed=1), "self": target}
    qwen = tiny_lm("qwen2", seed=2)
    qwen.state["drafts"] = {"tiny-draft": tiny_lm("qwen2", seed=3), "self": qwen}
    return {"llama": target, "qwen2": qwen}


MODELS = _models()


def _needs(method: str) -> dict:
    return {"draft": "tiny-draft"} if "draft" in decodelab.methods()[method].params else {}


@pytest.mark.parametrize("method", LOSSLESS)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_exactness_many_prompts(method, arch):
    lm = MODELS[arch]
    for prompt, n in itertools.product(PROMPTS, (1, 2, 3, 37)):
        want = decodelab.generate(lm, prompt, max_new_tokens=n).token_ids
        got = decodelab.generate(lm, prompt, method=method, max_new_tokens=n, **_needs(method))
        assert got.token_ids == want, (method, prompt, n)
        assert got.stats.new_tokens == len(want)


@pytest.mark.parametrize("method", LOSSLESS)
def test_greedy_exactness_with_penalties(method):
    lm = MODELS["llama"]
    params = dict(repetition_penalty=1.2, no_repeat_ngram_size=3, presence_penalty=0.5)
    for prompt in PROMPTS[:5]:
        want = decodelab.generate(lm, prompt, max_new_tokens=30, **params).token_ids
        got = decodelab.generate(lm, prompt, method=method, max_new_tokens=30, **params, **_needs(method))
        assert got.token_ids == want, (method, prompt)


def test_speculative_with_perfect_draft_accepts_everything():
    """Draft = target: every draft is accepted, τ = num_draft_tokens + 1 (up to the last step)."""
    lm = MODELS["llama"]
    g = decodelab.generate(lm, PROMPTS[0], method="speculative", draft="self", num_draft_tokens=4,
                           stop_threshold=1.0, max_new_tokens=41)
    assert g.token_ids == decodelab.generate(lm, PROMPTS[0], max_new_tokens=41).token_ids
    assert g.stats.mean_accepted == pytest.approx(5.0)
    assert g.stats.acceptance_by_position == [1.0] * 4


def test_eos_inside_accepted_drafts_stops_there():
    """A model whose greedy path hits EOS: lossless methods stop at the same EOS."""
    lm = tiny_lm("llama", seed=7)
    with __import__("torch").no_grad():
        lm.model.get_output_embeddings().weight[EOS] += lm.model.get_output_embeddings().weight[ord("c")] * 0.9
    lm.state["drafts"] = {"tiny-draft": lm}
    for prompt in PROMPTS:
        want = decodelab.generate(lm, prompt, max_new_tokens=40)
        for method in LOSSLESS:
            got = decodelab.generate(lm, prompt, method=method, max_new_tokens=40, **_needs(method))
            assert (got.token_ids, got.finish_reason) == (want.token_ids, want.finish_reason), (method, prompt)
