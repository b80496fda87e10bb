"""Agreement with transformers where it implements the same method (greedy outputs)."""

import torch

import decodelab

from fakes import PAD, tiny_lm

PROMPTS = ["def f(x):\n    return x\n\ndef f(", "abcabcabcabc", "hello world hello", "import os\nimport"]


def _hf(lm, prompt, n, **kw):
    ids = torch.tensor([lm.encode(prompt)])
    out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                            pad_token_id=PAD, **kw)
    row = out[0, ids.shape[1]:].tolist()
    return row[: next((i + 1 for i, t in enumerate(row) if t in lm.eos_token_ids), len(row))]


def test_speculative_equals_transformers_assisted_generation():
    lm, draft = tiny_lm("llama", seed=0), tiny_lm("llama", seed=1)
    lm.state["drafts"] = {"d": draft}
    for p in PROMPTS:
        ours = decodelab.generate(lm, p, method="speculative", draft="d", max_new_tokens=30).token_ids
        assert ours == _hf(lm, p, 30, assistant_model=draft.model)


def test_pld_equals_transformers_prompt_lookup():
    lm = tiny_lm("qwen2", seed=0)
    for p in PROMPTS:
        ours = decodelab.generate(lm, p, method="pld", max_new_tokens=30, max_ngram_size=2, num_draft_tokens=10)
        assert ours.token_ids == _hf(lm, p, 30, prompt_lookup_num_tokens=10, max_matching_ngram_size=2)
