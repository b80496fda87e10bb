"""Shared bench fixtures: a tiny random Llama saved as a Hugging Face directory."""

import pytest

from fakes import tiny_lm


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    lm = tiny_lm("llama", seed=0)
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d
