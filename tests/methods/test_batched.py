"""Batch > 1 for every lossless method: one batched target forward per step, ragged per-row acceptance.

- temperature 0: each row of a ragged (left-padded) batch equals greedy on that prompt alone;
- temperature > 0: row b of `generate_batch(seed=s)` draws exactly the tokens of `generate(prompt_b,
  seed=s + b)` — the batch changes nothing about a row's randomness or its distribution, so the
  single-row distribution tests (test_lossless.py, with stated power) cover batches too;
- the Session's ragged accept (holes) and `defragment` keep every row's cache exact.
Both backends: the transformers adapter (tiny random models) and the native backend.
"""

import pytest
import torch

import decodelab
from decodelab.model import LM
from decodelab.model.native import from_transformers

from fakes import EOS, tiny_lm

LOSSLESS = sorted(n for n, m in decodelab.methods().items() if m.lossless and m.kind == "causal")
PROMPTS = ["def f(x):\n    return x + 1\n\ndef g(x):\n    return", "abcabcabcab", "x",
           "the cat sat on the mat. the cat sat on the", "1, 2, 3, 4, 5, 6, 7, "]


def _with_draft(lm: LM, draft: LM) -> LM:
    lm.state["drafts"] = {"tiny-draft": draft}
    return lm


def _models(head_scale: float = 1.0, noise: float = 0.0) -> dict[str, LM]:
    hf, draft = tiny_lm("llama", seed=3), tiny_lm("llama", seed=3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        hf.model.get_output_embeddings().weight.mul_(head_scale)
        draft.model.load_state_dict(hf.model.state_dict())
        for p in draft.model.parameters():
            p.add_(noise * p.std() * torch.randn(p.shape, generator=gen))
    native = LM(from_transformers(hf.model), hf.tokenizer, name="tiny-native", backend="native")
    native_draft = LM(from_transformers(draft.model), hf.tokenizer, name="tiny-draft-native", backend="native")
    return {"transformers": _with_draft(hf, draft), "native": _with_draft(native, native_draft)}


SHARP, SOFT = _models(), _models(head_scale=0.1, noise=0.5)


def _needs(method: str) -> dict:
    return {"draft": "tiny-draft"} if "draft" in decodelab.methods()[method].params else {}


@pytest.mark.parametrize("backend", ["transformers", "native"])
@pytest.mark.parametrize("method", LOSSLESS)
def test_batch_rows_equal_greedy_alone(method, backend):
    lm = SHARP[backend]
    batch = decodelab.generate_batch(lm, PROMPTS, method=method, max_new_tokens=30, temperature=0, **_needs(method))
    for prompt, got in zip(PROMPTS, batch):
        want = decodelab.generate(lm, prompt, max_new_tokens=30).token_ids
        assert got.token_ids == want, (method, prompt)


@pytest.mark.parametrize("backend", ["transformers", "native"])
def test_pld_with_a_minimum_ngram_size_keeps_every_row_greedy(backend):
    """min_ngram_size=2 (drafts only after a 2-gram match) changes which drafts are verified, not the tokens."""
    lm = SHARP[backend]
    batch = decodelab.generate_batch(lm, PROMPTS, method="pld", min_ngram_size=2, max_new_tokens=30)
    for prompt, got in zip(PROMPTS, batch):
        assert got.token_ids == decodelab.generate(lm, prompt, max_new_tokens=30).token_ids


# recycling's adjacency matrix is model state shared by every row and call (by design, arXiv:2408.08696),
# so its drafts — not its distribution — depend on what else was generated: no seed-for-seed identity.
@pytest.mark.parametrize("backend", ["transformers", "native"])
@pytest.mark.parametrize("method", [m for m in LOSSLESS if m not in ("recycling", "greedy")])  # greedy: no sampling
def test_batch_row_samples_equal_row_alone_with_its_seed(method, backend):
    """Spread-out model, rejected-often draft: row b with seed s + b is the row alone, token for token."""
    lm = SOFT[backend]
    params = dict(temperature=1.0, top_k=40, **_needs(method))
    distinct = set()
    for seed in (0, 100, 200):
        batch = decodelab.generate_batch(lm, PROMPTS, method=method, max_new_tokens=12, seed=seed, **params)
        for b, (prompt, got) in enumerate(zip(PROMPTS, batch)):
            alone = decodelab.generate(lm, prompt, method=method, max_new_tokens=12, seed=seed + b, **params)
            assert got.token_ids == alone.token_ids, (method, seed, b)
            distinct.add(tuple(got.token_ids[:2]))
    assert len(distinct) >= 6  # spread out: 15 rows × seeds give many different beginnings


def test_rows_finishing_early_leave_the_others_exact():
    """A row that hits EOS at once is fed pads from then on; the other rows still equal greedy."""
    lm = tiny_lm("llama", seed=7)
    with torch.no_grad():
        head = lm.model.get_output_embeddings().weight
        head[EOS] += head[ord("c")] * 0.9  # greedy emits EOS after a 'c'
    lm.state["drafts"] = {"tiny-draft": lm}
    prompts = ["abc", "xyz xyz xyz", "hello hello"]
    for method in ("speculative", "pld", "lookahead"):
        batch = decodelab.generate_batch(lm, prompts, method=method, max_new_tokens=25, **_needs(method))
        for prompt, got in zip(prompts, batch):
            want = decodelab.generate(lm, prompt, max_new_tokens=25)
            assert (got.token_ids, got.finish_reason) == (want.token_ids, want.finish_reason), (method, prompt)


@pytest.mark.parametrize("backend", ["transformers", "native"])
def test_ragged_accept_and_defragment_keep_rows_exact(backend):
    lm = SHARP[backend]
    s = lm.session(batch_size=2)
    s.forward(torch.tensor([[0, 0, 11, 12], [21, 22, 23, 24]]), pad_mask=torch.tensor([[0, 0, 1, 1], [1] * 4]))
    s.forward(torch.tensor([[30, 31, 32], [40, 41, 42]]), parents=[[-1, 0, 1], [-1, -1, 1]])
    s.accept_rows([[0, 1], [1, 2]])  # row 0 keeps the chain 30 31; row 1 keeps the tree path 41 → 42
    rows = [[11, 12, 30, 31], [21, 22, 23, 24, 41, 42]]
    for step in range(2):
        out = s.forward(torch.tensor([[50 + step], [60 + step]]))[:, -1]
        rows[0].append(50 + step)
        rows[1].append(60 + step)
        for b in range(2):
            torch.testing.assert_close(out[b], lm.session().forward(rows[b])[0, -1], atol=1e-4, rtol=0)
        s.defragment()
        assert s.length == len(rows[1])


def test_n_samples_per_prompt_are_prompt_major_with_row_seeds():
    lm = SOFT["native"]
    out = decodelab.generate_batch(lm, ["ab", "xy"], method="sample", n=3, seed=10, max_new_tokens=5)
    assert len(out) == 6
    for i, g in enumerate(out):
        prompt = ["ab", "xy"][i // 3]
        assert g.token_ids == decodelab.generate(lm, prompt, method="sample", seed=10 + i, max_new_tokens=5).token_ids
    with pytest.raises(ValueError, match="seeds for"):
        decodelab.generate_batch(lm, ["ab", "xy"], seed=[1], max_new_tokens=2)


@pytest.mark.parametrize("method", ["speculative", "pld", "tree"])
def test_builtin_batch_rows_equal_greedy_alone(method):
    """On the embedded model (spread-out, real code) — where a wrong batch cache shows in the argmax."""
    lm = decodelab.load()
    prompts = ["def fibonacci(n):", "import os\nimport sys\n\n\ndef main():", "class Stack:\n    def push(self, x):",
               "for i in range(10):\n    print(i)\nfor j in"]
    batch = decodelab.generate_batch(lm, prompts, method=method, max_new_tokens=40)
    for prompt, got in zip(prompts, batch):
        assert got.token_ids == decodelab.generate(lm, prompt, max_new_tokens=40).token_ids, (method, prompt)


@pytest.mark.parametrize("backend", ["transformers", "native"])
def test_speculative_drafts_every_row_in_one_forward_per_draft_step(backend):
    """BASS's batched drafting: one draft forward serves all rows (not one per row), rows still exact."""
    lm = SHARP[backend]
    batch = decodelab.generate_batch(lm, PROMPTS, method="speculative", max_new_tokens=24, draft="tiny-draft")
    alone = [decodelab.generate(lm, p, method="speculative", max_new_tokens=24, draft="tiny-draft") for p in PROMPTS]
    assert [g.token_ids for g in batch] == [a.token_ids for a in alone]
    per_row = [a.stats.draft_forward_passes for a in alone]
    assert max(per_row) <= batch[0].stats.draft_forward_passes < 0.5 * sum(per_row)


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
@pytest.mark.parametrize("size", [3, 8])
def test_batches_of_3_and_8_on_other_architectures_equal_greedy_alone(arch, size):
    """Ragged batches of 3 and 8 rows on Qwen2 (QKV bias) and GPT-2 (learned positions, transformers
    adapter): every lossless method's rows equal greedy on each prompt alone."""
    from fakes import MANY_PROMPTS, noisy_copy

    lm = tiny_lm(arch, seed=6)
    lm.state["drafts"] = {"tiny-draft": noisy_copy(lm, 0.1, seed=2)}
    prompts = MANY_PROMPTS[:size]
    alone = [decodelab.generate(lm, p, max_new_tokens=16).token_ids for p in prompts]
    for method in [m for m in LOSSLESS if not (arch == "gpt2" and m == "selfspec")]:  # early exit: Llama layout
        params = {**_needs(method), **({"exit_layer": 1} if method == "selfspec" else {})}
        batch = decodelab.generate_batch(lm, prompts, method=method, max_new_tokens=16, temperature=0, **params)
        assert [g.token_ids for g in batch] == alone, (arch, size, method)


def test_greedy_rows_of_a_batch_draft_as_deep_as_they_accept():
    """BASS's dynamic draft length (methods/loop.py): in a batch, a greedy row's draft depth follows its own
    acceptance (+2 after a fully accepted draft, −1 otherwise, from 4), so rows that reject drafts stop
    paying verify columns for long ones; alone, a row drafts what its proposer offers. Tokens are
    unchanged either way."""
    from decodelab.methods.loop import FIRST_CAP, _next_cap

    assert [_next_cap(4, 4, 4), _next_cap(4, 4, 2), _next_cap(1, 3, 0), _next_cap(63, 5, 5)] == [6, 3, 1, 64]
    lm = SOFT["native"]
    batch = decodelab.generate_batch(lm, PROMPTS, method="pld", num_draft_tokens=12, max_new_tokens=30)
    alone = [decodelab.generate(lm, p, method="pld", num_draft_tokens=12, max_new_tokens=30) for p in PROMPTS]
    assert [g.token_ids for g in batch] == [g.token_ids for g in alone]
    depth_alone = max(len([n for n in g.stats.drafted if n]) for g in alone)
    depth_batch = len([n for n in batch[0].stats.drafted if n])
    assert depth_alone > FIRST_CAP and depth_batch < depth_alone


@pytest.mark.parametrize("method", ["greedy", "pld", "speculative", "tree"])
def test_max_batch_window_rows_equal_greedy_alone(method):
    """generate_batch(max_batch=3) over 5 ragged prompts: at most 3 rows run at once, a finished row's
    place going to the next prompt (Engine); every row still equals greedy alone, in prompt order."""
    lm = SHARP["native"]
    batch = decodelab.generate_batch(lm, PROMPTS, method=method, max_new_tokens=30, max_batch=3, **_needs(method))
    assert [g.stats.batch_size <= 3 for g in batch] == [True] * len(PROMPTS)
    for prompt, got in zip(PROMPTS, batch):
        assert got.token_ids == decodelab.generate(lm, prompt, max_new_tokens=30).token_ids, (method, prompt)


def test_max_batch_keeps_row_seeds_and_groups_other_methods():
    """Sampled rows keep seed s + i under a window; a method that cannot take rows into a running batch
    (beam search) runs consecutive groups with the same outputs as one batch."""
    lm = SOFT["native"]
    whole = decodelab.generate_batch(lm, PROMPTS, method="sample", seed=5, max_new_tokens=8)
    window = decodelab.generate_batch(lm, PROMPTS, method="sample", seed=5, max_new_tokens=8, max_batch=2)
    assert [g.token_ids for g in window] == [g.token_ids for g in whole]
    beams = decodelab.generate_batch(lm, PROMPTS[:3], method="beam", max_new_tokens=6, num_beams=2)
    grouped = decodelab.generate_batch(lm, PROMPTS[:3], method="beam", max_new_tokens=6, num_beams=2, max_batch=2)
    assert [g.token_ids for g in grouped] == [g.token_ids for g in beams]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_batch"):
            decodelab.generate_batch(lm, PROMPTS, max_batch=bad)
