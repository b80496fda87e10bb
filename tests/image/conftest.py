import pytest
import torch
from transformers import LlamaForCausalLM

from decodelab.image.model import ImageSpec, llama_config
from decodelab.model.lm import LM


def tiny_image_lm(height: int = 8, width: int = 8, levels: int = 8, variant: str = "raster",
                  sharpen: float = 1.0, seed: int = 0, layers: int = 1) -> LM:
    """A random-init image LM built from a config; `sharpen` scales the output head so that the
    distributions are peaked and depend on the context (a sterner test for exactness)."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(ImageSpec(height, width, levels, variant), hidden=32, layers=layers, heads=2))
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    return LM(model.eval(), None, name="tiny-image")


@pytest.fixture(scope="session")
def tiny8():
    return tiny_image_lm()


@pytest.fixture(scope="session")
def digits():
    import decodelab

    return decodelab.load("builtin:digits")
