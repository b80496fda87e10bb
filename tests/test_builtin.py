"""The embedded models: offline load, tokenizer round trip on every test-split file, default model."""

import json
import os
import subprocess
import sys

import pytest

import decodelab
from decodelab.training.corpus import load_split


@pytest.mark.parametrize("name", ["builtin:pyco", "builtin:pyco-draft"])
def test_offline_load_with_plain_transformers(name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = decodelab.builtin_path(name)
    assert (path / "model.safetensors").exists() and not list(path.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(path)  # a standard HF directory
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "llama" and len(tok) == model.config.vocab_size
    lm = decodelab.load(name)
    assert lm.dtype == decodelab.load(name).dtype and str(lm.dtype) == "torch.float32"


def test_draft_shares_the_tokenizer_and_is_much_smaller():
    t, d = decodelab.load("builtin:pyco"), decodelab.load("builtin:pyco-draft")
    assert t.tokenizer.get_vocab() == d.tokenizer.get_vocab()
    assert d.n_params * 8 <= t.n_params
    assert t.n_params == sum(p.numel() for p in decodelab.load("builtin:pyco", backend="transformers").model.parameters())
    for tok in ("<|mask|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<|bos|>", "<|eos|>", "<|pad|>"):
        assert tok in t.tokenizer.get_vocab()


def test_tokenizer_round_trip_every_test_split_file():
    tok = decodelab.load("builtin:pyco-draft").tokenizer
    files = load_split("test")
    assert len(files) > 50
    for f in files:
        ids = tok.encode(f.text, add_special_tokens=False)
        assert tok.decode(ids, clean_up_tokenization_spaces=False) == f.text, f.relpath


def test_cli_generate_defaults_to_pyco():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "decodelab.cli", "generate", "def add(a, b):", "--json",
                          "--max-new-tokens", "8"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    lm = decodelab.load()
    assert lm.name == "builtin:pyco"
    assert result["token_ids"] == decodelab.generate(lm, "def add(a, b):", max_new_tokens=8).token_ids


LOSSLESS = sorted(n for n, m in decodelab.methods().items() if m.lossless and m.kind == "causal" and n not in ("greedy", "sample"))


@pytest.fixture(scope="module")
def pyco_greedy():
    lm = decodelab.load()
    prompts = [f.text[:400] for f in load_split("test")[:5]]
    return lm, [(p, decodelab.generate(lm, p, max_new_tokens=32).token_ids) for p in prompts]


@pytest.mark.parametrize("method", LOSSLESS)
def test_every_lossless_method_is_exact_on_pyco(method, pyco_greedy):
    """Defaults (speculative / tree use builtin:pyco-draft automatically) on test-split prompts."""
    lm, cases = pyco_greedy
    for prompt, want in cases:
        assert decodelab.generate(lm, prompt, method=method, max_new_tokens=32).token_ids == want, prompt[:40]
