"""A tiny random-init diffusion model on the tasks tokenizer, saved as a Hugging Face directory."""

from __future__ import annotations

import pytest

import decodelab
from decodelab.diffusion import DiffusionConfig, DiffusionForMaskedLM
from decodelab.tasks import tokenizer as task_tokenizer


def tiny_model_dir(tmp_path_factory, name: str, seed: int = 0, **config):
    """A random 2-layer diffusion model (config overrides allowed) saved with the tasks tokenizer."""
    import torch

    tok = task_tokenizer.build()
    torch.manual_seed(seed)
    conf = DiffusionConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=128, mask_token_id=tok.mask_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **config)
    model = DiffusionForMaskedLM(conf)
    with torch.no_grad():  # sharper logits than the 0.02 init, so confidences spread over (0, 1)
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(40)
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory, "tiny-diffusion")


@pytest.fixture(scope="session")
def shifted(tmp_path_factory):
    """A tiny model with Dream's shifted logits and grouped-query attention (as the AR-adapted builtins)."""
    return decodelab.load(str(tiny_model_dir(tmp_path_factory, "tiny-shifted", seed=3, num_key_value_heads=2,
                                             logit_shift=True)))


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    return decodelab.load(str(tiny_dir))


@pytest.fixture(scope="session")
def tiny_ar_dir(tmp_path_factory):
    """A tiny random causal Llama on the same tokenizer (APD's helper model)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = task_tokenizer.build()
    torch.manual_seed(1)
    conf = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    model = LlamaForCausalLM(conf)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(40)
    path = tmp_path_factory.mktemp("tiny-ar")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
