"""greedy / sample against transformers' own generate, batch 1 and left-padded batches."""

import pytest
import torch

import decodelab

from fakes import ARCHS, PAD, tiny_lm

PROMPTS = ["def f(x):", "hello world", "a", "import os\nimport sys\n", "class Foo(object):\n    pass"]


def _hf_greedy(lm, prompts, n, **kw):
    tok = lm.tokenizer
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = lm.model.generate(**enc, do_sample=False, max_new_tokens=n, pad_token_id=PAD, **kw)
    rows = out[:, enc["input_ids"].shape[1]:].tolist()
    return [_until_eos(r, lm) for r in rows]


def _until_eos(row, lm):
    for i, t in enumerate(row):
        if t in lm.eos_token_ids:
            return row[: i + 1]
    return row


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_equals_transformers_batch1(arch):
    lm = tiny_lm(arch, seed=1)
    for p in PROMPTS:
        ours = decodelab.generate(lm, p, max_new_tokens=24).token_ids
        assert ours == _hf_greedy(lm, [p], 24)[0], p


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_equals_transformers_left_padded_batch(arch):
    lm = tiny_lm(arch, seed=2)
    ours = [g.token_ids for g in decodelab.generate_batch(lm, PROMPTS, max_new_tokens=16)]
    assert ours == _hf_greedy(lm, PROMPTS, 16)


def test_greedy_with_repetition_penalty_equals_transformers():
    lm = tiny_lm("llama", seed=3)
    for p in PROMPTS[:3]:
        ours = decodelab.generate(lm, p, max_new_tokens=20, repetition_penalty=1.3, no_repeat_ngram_size=2)
        theirs = _hf_greedy(lm, [p], 20, repetition_penalty=1.3, no_repeat_ngram_size=2)[0]
        assert ours.token_ids == theirs


def test_sample_equals_transformers_sampling_rng_stream():
    """Same processed distribution at each step: with the same greedy prefix, step probs agree."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper

    lm = tiny_lm("qwen2", seed=4)
    ids = lm.encode("x = 1\n")
    ours = decodelab.next_token_probs(lm, ids, temperature=0.7, top_k=5)
    logits = lm.model(torch.tensor([ids])).logits[:, -1]
    procs = LogitsProcessorList([TemperatureLogitsWarper(0.7), TopKLogitsWarper(5)])
    theirs = torch.softmax(procs(torch.tensor([ids]), logits), dim=-1)[0]
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_batched_sampling_rows_are_independent_of_padding():
    """A left-padded batch gives each row the distribution it has alone (temperature 0 shortcut)."""
    lm = tiny_lm("llama", seed=5)
    batch = decodelab.generate_batch(lm, PROMPTS, method="sample", temperature=0, max_new_tokens=12)
    for p, g in zip(PROMPTS, batch):
        assert g.token_ids == decodelab.generate(lm, p, max_new_tokens=12).token_ids
