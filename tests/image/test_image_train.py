"""Warm-starting a variant from a raster checkpoint (image/train.py `--init`)."""

import torch
from transformers import LlamaForCausalLM

from decodelab.image.model import ImageSpec, llama_config
from decodelab.image.train import _initial_model


def test_nar_and_lpd_start_from_a_raster_checkpoint(tmp_path):
    torch.manual_seed(0)
    raster = LlamaForCausalLM(llama_config(ImageSpec(4, 4, 8, "raster"), hidden=32, layers=1, heads=2))
    raster.save_pretrained(tmp_path, safe_serialization=True)
    src = raster.state_dict()
    nar = _initial_model(ImageSpec(4, 4, 8, "nar"), tmp_path)
    spec = ImageSpec(4, 4, 8, "nar")
    state = nar.state_dict()
    assert nar.config.vocab_size == spec.vocab_size > raster.config.vocab_size
    assert torch.equal(state["model.layers.0.self_attn.q_proj.weight"], src["model.layers.0.self_attn.q_proj.weight"])
    head = state["lm_head.weight"]
    assert torch.equal(head[: raster.config.vocab_size], src["lm_head.weight"])
    assert torch.equal(head[spec.vertical_offset:], src["lm_head.weight"][: spec.levels])  # vertical = horizontal rows
    lpd = _initial_model(ImageSpec(4, 4, 8, "lpd"), tmp_path)
    assert lpd.config.image["variant"] == "lpd"
    assert torch.equal(lpd.state_dict()["lm_head.weight"], src["lm_head.weight"])
