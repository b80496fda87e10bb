"""The diffusion model kind: HF directory round trip, load() recognises it, bidirectional attention."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForMaskedLM

import decodelab
from decodelab.diffusion.objective import diffusion_loss, mask_tokens


def test_load_recognises_a_diffusion_directory(tiny, tiny_dir):
    assert tiny.kind == "diffusion"
    assert tiny.mask_token_id == tiny.tokenizer.mask_token_id
    again = AutoModelForMaskedLM.from_pretrained(tiny_dir)  # a standard HF directory
    ids = torch.tensor([[5, 6, 7, 3, 3]])
    assert torch.allclose(again(ids).logits, tiny.model(ids).logits, atol=1e-5)


def test_attention_is_bidirectional_and_ignores_left_padding(tiny):
    ids = torch.tensor([[5, 6, 7, 3, 3]])
    later = ids.clone()
    later[0, 4] = 20
    a, b = tiny.model(ids).logits, tiny.model(later).logits
    assert not torch.allclose(a[0, 0], b[0, 0])  # a later token changes an earlier position's logits
    padded = torch.tensor([[2, 2, 5, 6, 7, 3, 3]])
    out = tiny.model(padded, attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1, 1]])).logits[:, 2:]
    assert torch.allclose(out, a, atol=1e-5)


def test_causal_methods_refuse_a_diffusion_model(tiny):
    with pytest.raises(ValueError, match="diffusion model; use one of: .*llada"):
        decodelab.generate(tiny, "copy : 1 2 =", method="greedy")
    with pytest.raises(ValueError, match="not supported by diffusion samplers"):
        decodelab.generate(tiny, "copy : 1 2 =", method="llada", top_p=0.5)


def test_objective_masks_only_the_response_and_weights_by_one_over_p():
    ids = torch.arange(8).repeat(4, 1)
    maskable = torch.tensor([[False] * 3 + [True] * 5] * 4)
    gen = torch.Generator().manual_seed(0)
    noisy, masked, p_mask = mask_tokens(ids, maskable, mask_id=99, gen=gen)
    assert not masked[:, :3].any() and (noisy[masked] == 99).all() and (noisy[~masked] == ids[~masked]).all()
    logits = torch.zeros(4, 8, 10)  # uniform: CE = log 10 at every position
    expected = (masked.sum(-1) * torch.log(torch.tensor(10.0)) / p_mask[:, 0] / 5).mean()
    assert torch.allclose(diffusion_loss(logits, ids % 10, masked, p_mask, maskable), expected)
