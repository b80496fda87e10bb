"""decodelab.load on local Hugging Face directories: what loads, and a one-line ModelError for what does not."""

import json
import shutil

import pytest
import torch

import decodelab
from decodelab import ModelError

from fakes import byte_tokenizer, tiny_lm

PROMPT = "def f(x):"


@pytest.fixture(scope="module")
def reference():
    return tiny_lm("llama", seed=6)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, reference):
    """A standard HF directory: config.json, model.safetensors, tokenizer files."""
    path = tmp_path_factory.mktemp("models") / "tiny"
    reference.model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def broken(tmp_path, model_dir):
    """A fresh copy of the good directory, for one test to damage."""
    path = tmp_path / "copy"
    shutil.copytree(model_dir, path)
    return path


def _model_error(name, **kw) -> str:
    with pytest.raises(ModelError) as info:
        decodelab.load(name, **kw)
    message = str(info.value)
    assert message.strip() and "\n" not in message, message
    assert "Traceback" not in message
    return message


def test_local_directory_loads_and_generates(model_dir, reference):
    assert (model_dir / "model.safetensors").exists() and (model_dir / "config.json").exists()
    lm = decodelab.load(str(model_dir))
    assert isinstance(lm, decodelab.LM)
    assert lm.vocab_size == reference.vocab_size == 258
    assert lm.name == str(model_dir)
    assert lm.tokenizer is not None and lm.encode("ab") == [97, 98]
    assert 256 in lm.eos_token_ids
    assert lm.dtype == torch.float32
    g = decodelab.generate(lm, PROMPT, max_new_tokens=8)
    assert g.token_ids == decodelab.generate(reference, PROMPT, max_new_tokens=8).token_ids
    assert len(g.token_ids) == 8 and g.finish_reason == "length"


def test_dtype_argument(model_dir):
    assert decodelab.load(str(model_dir), dtype="bfloat16").dtype == torch.bfloat16
    assert decodelab.load(str(model_dir), dtype=torch.float64).dtype == torch.float64
    assert decodelab.load(str(model_dir), dtype="fp16").dtype == torch.float16


def test_unknown_dtype(model_dir):
    msg = _model_error(str(model_dir), dtype="float99")
    assert "float99" in msg and "dtype" in msg
    assert "int8" in _model_error(str(model_dir), dtype="int8")


def test_missing_path(tmp_path):
    msg = _model_error(str(tmp_path / "does-not-exist"))
    assert "does-not-exist" in msg and "not exist" in msg


def test_file_instead_of_directory(tmp_path):
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"x")
    assert "not a directory" in _model_error(str(f))


def test_directory_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "config.json" in _model_error(str(tmp_path / "empty"))


def test_unknown_model_type(broken):
    config = json.loads((broken / "config.json").read_text())
    config["model_type"] = "no_such_architecture_xyz"
    (broken / "config.json").write_text(json.dumps(config))
    msg = _model_error(str(broken))
    assert "no_such_architecture_xyz" in msg or "config" in msg


def test_known_but_unsupported_model_type(broken):
    from transformers import ResNetConfig

    ResNetConfig().save_pretrained(broken)  # an image model: no causal-LM class
    msg = _model_error(str(broken))
    assert "resnet" in msg and "unsupported" in msg


def test_pickle_weights_refused_unless_allowed(broken, reference):
    (broken / "model.safetensors").unlink()
    torch.save(reference.model.state_dict(), broken / "pytorch_model.bin")
    msg = _model_error(str(broken))
    assert "pickle" in msg and "allow_pickle=True" in msg
    lm = decodelab.load(str(broken), allow_pickle=True)
    assert (decodelab.generate(lm, PROMPT, max_new_tokens=6).token_ids
            == decodelab.generate(reference, PROMPT, max_new_tokens=6).token_ids)


def test_safetensors_preferred_over_pickle(broken):
    torch.save({"garbage": torch.zeros(1)}, broken / "pytorch_model.bin")
    lm = decodelab.load(str(broken))  # the .bin beside safetensors is never unpickled
    assert lm.vocab_size == 258


def test_no_weights_at_all(broken):
    (broken / "model.safetensors").unlink()
    assert "weights" in _model_error(str(broken))


def test_missing_tokenizer(broken):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (broken / name).unlink()
    assert "tokenizer" in _model_error(str(broken))


def test_corrupt_safetensors(broken):
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json" + b"\x00" * 64)
    _model_error(str(broken))


def test_truncated_safetensors(broken):
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    _model_error(str(broken))


def test_corrupt_config_json(broken):
    (broken / "config.json").write_text("{ not json")
    assert "config" in _model_error(str(broken))


def test_remote_code_needs_consent(broken):
    config = json.loads((broken / "config.json").read_text())
    config.pop("model_type")
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomLM"}
    (broken / "config.json").write_text(json.dumps(config))
    assert "trust_remote_code" in _model_error(str(broken))


def test_unknown_builtin():
    with pytest.raises(ModelError, match="nope") as info:
        decodelab.builtin_path("nope")
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="nope"):
        decodelab.builtin_path("builtin:nope")
    _model_error("builtin:nope")


def test_model_error_is_a_decodelab_error():
    assert issubclass(ModelError, decodelab.DecodelabError)


def test_incomplete_safetensors_is_refused(broken):
    """A checkpoint lacking a tensor would otherwise load with that tensor randomly initialised."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(broken / "model.safetensors")
    del tensors["model.norm.weight"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    assert "model.norm.weight" in _model_error(str(broken))
