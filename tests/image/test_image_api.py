"""generate_image / generate_images: validation with one-line errors, seeds, rows, the CLI."""

import numpy as np
import pytest
import torch
from conftest import tiny_image_lm
from transformers import LlamaConfig, LlamaForCausalLM

import decodelab
from decodelab import ModelError, generate_image, generate_images
from decodelab.model.lm import LM


@pytest.mark.parametrize("label", [10, -1, True, "3", 2.0])
def test_bad_labels(tiny8, label):
    with pytest.raises(ValueError, match="label must be an integer class 0–9"):
        generate_image(tiny8, label)


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "nope"}, "unknown image method 'nope'; available: lpd, mulo, nar, raster, sjd, zipar"),
    ({"temperature": -1}, "temperature must be in"),
    ({"top_k": 1.5}, "top_k must be an integer"),
    ({"cfg_scale": "2"}, "cfg_scale must be a number"),
    ({"window": 4}, "unknown parameter 'window' for image method 'raster'"),
    ({"method": "sjd", "init": "zeros"}, "init must be one of"),
    ({"method": "zipar", "window": 0}, "window must be in"),
    ({"seed": "x"}, "seeds must be an int"),
])
def test_bad_parameters(tiny8, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_image(tiny8, 3, **kwargs)


def test_text_models_are_refused():
    config = LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    lm = LM(LlamaForCausalLM(config).eval(), None, name="text")
    assert lm.kind == "causal"
    with pytest.raises(ModelError, match="not an image-token model"):
        generate_image(lm, 3)


def test_missing_variant_is_a_clear_error(tiny8):
    with pytest.raises(ModelError, match="no 'lpd' model beside it"):
        generate_image(tiny8, 3, method="lpd")


def test_seeds_and_rows(tiny8):
    a = generate_image(tiny8, 3, seed=11)
    b = generate_image(tiny8, 3, seed=11)
    assert a.token_ids == b.token_ids and a.pixels.shape == (8, 8) and a.stats["forward_passes"] == 64
    assert a.pixels.min() >= 0 and a.pixels.max() <= 16 and np.array_equal(a.tokens.flatten(), a.token_ids)
    rows = generate_images(tiny8, [5, 3], method="zipar", seeds=[4, 11], window=8)
    assert rows[1].token_ids == a.token_ids  # a row does not depend on the others
    greedy = {generate_image(tiny8, 3, seed=s, temperature=0).token_ids == generate_image(tiny8, 3, temperature=0).token_ids
              for s in (1, 2)}
    assert greedy == {True}


def test_contract_names():
    assert callable(decodelab.generate_image) and decodelab.ImageGeneration
    info = decodelab.image_methods()
    assert {name for name, m in info.items() if m.exact} == {"raster", "sjd"}
    assert all(m.paper for name, m in info.items() if name != "raster")


def test_tiny_model_round_trips_through_a_directory(tmp_path):
    from decodelab.image.model import ImageSpec, save

    lm = tiny_image_lm(4, 4)
    save(lm.model, ImageSpec(4, 4), tmp_path / "m", {"note": "test"})
    loaded = decodelab.load(str(tmp_path / "m"))
    assert loaded.kind == "image" and loaded.backend == "transformers"
    assert generate_image(loaded, 2, seed=0).token_ids == generate_image(lm, 2, seed=0).token_ids
    torch.testing.assert_close(loaded.model.lm_head.weight, lm.model.lm_head.weight)


def test_image_methods_are_in_the_main_registry_with_their_kind():
    table = decodelab.methods()
    image = {n: m for n, m in table.items() if m.kind == "image"}
    assert set(image) == set(decodelab.image_methods()) == {"raster", "sjd", "zipar", "nar", "lpd", "mulo"}
    assert {n for n, m in image.items() if m.lossless} == {"raster", "sjd"}  # exact vs raster: tested here
    assert all(set(decodelab.image_methods()[n].specs) | {"cfg_scale", "temperature", "top_k"} == set(m.params)
               for n, m in image.items())
    assert table["sjd"].check_params({"window": 4})["window"] == 4
    with pytest.raises(ValueError, match="top_p"):
        table["sjd"].check_params({"top_p": 0.5})
    assert table["greedy"].kind == "causal" and "top_p" in table["greedy"].params  # text methods unchanged


def test_api_checks_the_model_kind(digits):
    with pytest.raises(ValueError, match="decodes causal models"):
        decodelab.generate(digits, [1, 2], method="greedy")
    with pytest.raises(ValueError, match="generate_image"):
        decodelab.generate(digits, [1, 2], method="sjd")
    with pytest.raises(ValueError, match="decodes image models"):
        decodelab.generate(decodelab.load("builtin:pyco"), "x", method="zipar")


def test_image_models_refuse_the_native_backend():
    lm = decodelab.load("builtin:digits", backend="native")
    with pytest.raises(ModelError, match="transformers backend"):
        decodelab.generate_image(lm, 3)
