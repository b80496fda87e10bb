"""A newcomer's first hour (issue 17): every dead end found by trying decodelab as a new user, reproduced.

Each test names the dead end it reproduces; all run on tiny random models saved as ordinary Hugging
Face directories (no network: the one Hub test points the Hub at a closed local port).
"""

import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import decodelab
from decodelab import ModelError
from decodelab.cli import main

from fakes import byte_tokenizer, tiny_lm

README = Path(__file__).resolve().parent.parent / "README.md"


def _save(path: Path, lm, tokenizer=None) -> str:
    lm.model.save_pretrained(path)
    (tokenizer or byte_tokenizer()).save_pretrained(path)
    return str(path)


def _extra_token_tokenizer():
    """The byte tokenizer plus one special token, `<|extra|>`, at id 258: past the tiny models' 258 rows."""
    tok = copy.deepcopy(byte_tokenizer())
    tok.add_tokens(["<|extra|>"], special_tokens=True)
    assert tok.convert_tokens_to_ids("<|extra|>") == 258
    return tok


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("first-hour")
    out = {"target": _save(root / "target", tiny_lm("llama", seed=8)),
           "draft": _save(root / "draft", tiny_lm("llama", seed=9, num_hidden_layers=1)),
           "extra": _save(root / "extra", tiny_lm("llama", seed=8), _extra_token_tokenizer()),
           "small": _save(root / "small", tiny_lm("llama", seed=10, vocab_size=256, pad_token_id=None))}
    swapped = Path(_save(root / "swapped", tiny_lm("llama", seed=9)))
    spec = json.loads((swapped / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = next(k for k, v in vocab.items() if v == 97), next(k for k, v in vocab.items() if v == 98)
    vocab[a], vocab[b] = 98, 97  # 'a' and 'b' trade ids
    (swapped / "tokenizer.json").write_text(json.dumps(spec))
    out["swapped"] = str(swapped)
    return out


def _run(capfd, argv):
    code = main(argv)
    out, err = capfd.readouterr()
    return code, out, err


def _one_line(code, err, *words):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# ---- 1. the main job shows the speed-up -------------------------------------------------------------

def test_compare_greedy_reports_identity_and_speedup(capfd, dirs):
    """Dead end: the main job printed τ but no comparison with greedy, so no visible speed-up."""
    code, out, err = _run(capfd, ["generate", "abcabcabcabc", "--model", dirs["target"], "--method", "pld",
                                  "--max-new-tokens", "12", "--compare", "greedy"])
    assert code == 0, err
    assert re.search(r"pld vs greedy: same text as greedy \(\d+ tokens identical\); [\d.]+× greedy's speed", err), err
    assert "per token" in err and "greedy: " in err
    code, out, err = _run(capfd, ["generate", "abcabcabcabc", "--model", dirs["target"], "--method", "pld",
                                  "--max-new-tokens", "12", "--compare", "greedy", "--json"])
    result = json.loads(out.strip().splitlines()[-1])
    compare = result["compare"]
    greedy = decodelab.generate(decodelab.load(dirs["target"]), "abcabcabcabc", max_new_tokens=12)
    assert compare["method"] == "greedy" and compare["token_ids"] == greedy.token_ids
    assert compare["identical"] is (result["token_ids"] == greedy.token_ids) is True
    assert compare["speedup"] > 0 and compare["first_difference"] is None
    assert compare["stats"]["forward_passes_per_token"] == pytest.approx(1.0)


def test_compare_names_a_difference(capfd, dirs):
    """Sampling (same parameters for both, as --compare runs them): the texts part, and the line says why."""
    argv = ["generate", "abcabcabcabc", "--model", dirs["target"], "--method", "pld", "--seed", "0",
            "-p", "temperature=5", "--max-new-tokens", "12", "--compare", "greedy"]
    code, out, err = _run(capfd, [*argv, "--json"])
    compare = json.loads(out.strip().splitlines()[-1])["compare"]
    assert code == 0 and compare["identical"] is False and compare["first_difference"] is not None
    code, _, err = _run(capfd, argv)
    assert re.search(rf"text differs from greedy at token {compare['first_difference']} \(expected when sampling",
                     err), err


def test_readme_first_command_shows_the_fast_method_against_greedy():
    """Dead end: the README's first command ran speculative (slower than greedy on a CPU) with no baseline."""
    text = README.read_text()
    first = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    assert "--compare greedy" in first and "--method pld" in first
    intro = text[: text.index("```bash")]
    assert "pld" in intro and "BENCHMARKS.md" in intro and "GPU" in intro


# ---- 2. own models all the way ----------------------------------------------------------------------

def test_generate_takes_draft_flag(capfd, dirs):
    """Dead end: generate had no --draft flag (only -p draft=DIR)."""
    code, out, err = _run(capfd, ["generate", "def f(x):", "--model", dirs["target"], "--method", "speculative",
                                  "--draft", dirs["draft"], "--max-new-tokens", "10", "--json"])
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["params"]["draft"] == dirs["draft"]
    assert result["stats"]["draft_forward_passes"] > 0 and result["stats"]["acceptance_rate"] is not None
    greedy = decodelab.generate(decodelab.load(dirs["target"]), "def f(x):", max_new_tokens=10)
    assert result["token_ids"] == greedy.token_ids
    code, _, err = _run(capfd, ["generate", "x", "--model", dirs["target"], "--method", "pld", "--draft", dirs["draft"]])
    _one_line(code, err, "--draft", "pld", "speculative")


def test_bench_own_model_without_draft_skips_draft_methods(capfd, dirs, tmp_path):
    """Dead end: README's `bench --suite my_prompts.jsonl --model ./my-hf-model --all` died on 'no default draft'."""
    suite = tmp_path / "my_prompts.jsonl"
    suite.write_text(json.dumps({"prompt": "def f(x):\n    return x"}) + "\n")
    code, out, err = _run(capfd, ["bench", "--suite", str(suite), "--model", dirs["target"], "--all", "--limit", "1",
                                  "--repeats", "1", "--max-new-tokens", "6", "--no-peers", "--out", str(tmp_path / "o"),
                                  "--json"])
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    ran = {a["method"] for a in summary["aggregates"]}
    assert {"greedy", "pld"} <= ran and not {"speculative", "tree"} & ran
    assert set(summary["skipped"]) == {"speculative", "tree"}
    assert all("--draft" in why for why in summary["skipped"].values())
    assert "bench: skipped speculative" in err and "--draft" in err
    assert "Skipped tree: needs a draft model" in (tmp_path / "o" / "report.md").read_text()
    # and with --draft the draft methods run, on the user's draft
    code, out, err = _run(capfd, ["bench", "--suite", str(suite), "--model", dirs["target"], "--methods", "speculative",
                                  "--draft", dirs["draft"], "--limit", "1", "--repeats", "1", "--max-new-tokens", "6",
                                  "--no-peers", "--out", str(tmp_path / "o2"), "--json"])
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    spec = next(a for a in summary["aggregates"] if a["method"] == "speculative")
    assert spec["params"]["draft"] == dirs["draft"] and spec["exact"] is True and summary["skipped"] == {}


def test_allow_pickle_flag(capfd, dirs, tmp_path):
    """Dead end: no CLI flag for allow_pickle."""
    import shutil

    path = tmp_path / "pickled"
    shutil.copytree(dirs["target"], path)
    from safetensors.torch import load_file

    torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    code, _, err = _run(capfd, ["generate", "x", "--model", str(path), "--max-new-tokens", "2"])
    _one_line(code, err, "pickle", "--allow-pickle")
    code, out, err = _run(capfd, ["generate", "x", "--model", str(path), "--max-new-tokens", "2", "--allow-pickle",
                                  "--json"])
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["token_ids"] == decodelab.generate(
        decodelab.load(dirs["target"]), "x", max_new_tokens=2).token_ids


def test_remote_code_model_names_the_flag(capfd, dirs, tmp_path):
    import shutil

    path = tmp_path / "remote"
    shutil.copytree(dirs["target"], path)
    config = json.loads((path / "config.json").read_text())
    config.pop("model_type")
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomLM"}
    (path / "config.json").write_text(json.dumps(config))
    code, _, err = _run(capfd, ["generate", "x", "--model", str(path)])
    _one_line(code, err, "remote code", "--trust-remote-code")


def test_risky_flags_say_what_they_risk(capfd):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capfd.readouterr().out.split())
    assert "--allow-pickle" in text and "--trust-remote-code" in text
    assert "unpickling runs arbitrary code" in text and "runs with your permissions" in text


def test_draft_with_extra_special_token_is_accepted(dirs):
    """Dead end: a draft sharing the target's tokenizer was refused when a special token sat past the vocabulary."""
    from decodelab.proposers.draft_model import resolve_draft

    target = decodelab.load(dirs["target"])
    assert len(decodelab.load(dirs["extra"]).tokenizer) == 259  # one token past the model's 258 rows
    resolve_draft(target, dirs["extra"])  # same strings → same ids below 258: accepted
    resolve_draft(target, dirs["small"])  # a 256-row draft: compared on ids < 256 only
    for draft in ("extra", "small"):
        g = decodelab.generate(target, "abc", method="speculative", draft=dirs[draft], max_new_tokens=12)
        assert g.token_ids == decodelab.generate(target, "abc", max_new_tokens=12).token_ids


def test_draft_with_different_vocabulary_is_refused_at_first_differing_id(dirs):
    from decodelab.proposers.draft_model import resolve_draft

    with pytest.raises(ModelError) as info:
        resolve_draft(decodelab.load(dirs["target"]), dirs["swapped"])
    msg = str(info.value)
    assert "token id 97" in msg and "'a'" in msg and "'b'" in msg and "\n" not in msg


# ---- 3. offline-safe loading ------------------------------------------------------------------------

def test_typo_for_local_directory_fails_at_once_offline(tmp_path, dirs):
    """Dead end: `--model my-model` (a typo for a local directory) spent 25 s and 11 retry lines offline.

    The Hub is pointed at a closed port on this machine (HF_ENDPOINT), so no request leaves it."""
    import shutil

    shutil.copytree(dirs["target"], tmp_path / "my-model")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=str(tmp_path / "empty-cache"))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "decodelab.cli", "generate", "x", "--model", "my-modle"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    elapsed = time.monotonic() - t0
    _one_line(proc.returncode, proc.stderr, "my-modle", "unreachable", "./my-model")
    assert "Retry" not in proc.stderr and elapsed < 30  # import + one refused connection, no backoff


def test_offline_mode_fails_without_a_request(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyco-finetune").mkdir()
    with pytest.raises(ModelError) as info:
        decodelab.load("pyco-fintune")
    msg = str(info.value)
    assert "HF_HUB_OFFLINE" in msg and "./pyco-finetune" in msg and "\n" not in msg
    with pytest.raises(ModelError, match="builtin:pyco"):
        decodelab.load("pyco")


def test_hub_id_found_in_local_cache_loads_offline(monkeypatch, tmp_path, dirs):
    """A Hub id already in the local Hugging Face cache loads with no network (snapshot lookup only)."""
    import shutil

    from huggingface_hub import constants

    repo = tmp_path / "models--someone--tiny-llama"
    snap = repo / "snapshots" / ("0" * 40)
    shutil.copytree(dirs["target"], snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    lm = decodelab.load("someone/tiny-llama")
    assert lm.name == "someone/tiny-llama"
    assert decodelab.generate(lm, "x", max_new_tokens=4).token_ids == decodelab.generate(
        decodelab.load(dirs["target"]), "x", max_new_tokens=4).token_ids


def test_partly_cached_hub_id_is_not_taken_as_local(monkeypatch, tmp_path, dirs):
    """A snapshot holding only config.json (an earlier AutoConfig call) is not a model: offline, say so."""
    from huggingface_hub import constants

    repo = tmp_path / "models--someone--half"
    (repo / "snapshots" / ("1" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("1" * 40) / "config.json").write_text((Path(dirs["target"]) / "config.json").read_text())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match="only partly in the local Hugging Face cache .*HF_HUB_OFFLINE"):
        decodelab.load("someone/half")


def test_invalid_hub_id_is_one_line():
    with pytest.raises(ModelError, match="valid Hugging Face Hub id"):
        decodelab.load("not a model!")


# ---- 4. no traceback for user input -----------------------------------------------------------------

def test_special_token_past_vocabulary_is_one_line(capfd, dirs):
    """Dead end: a special-token string mapping past the model's vocabulary gave a 68-line IndexError."""
    code, out, err = _run(capfd, ["generate", "x = <|extra|>", "--model", dirs["extra"]])
    _one_line(code, err, "'<|extra|>'", "258", "vocabulary")
    lm = decodelab.load(dirs["extra"])
    with pytest.raises(ValueError, match="<|extra|>"):
        decodelab.generate(lm, "<|extra|>")
    with pytest.raises(ValueError, match="<|extra|>"):
        decodelab.generate(lm, [1, 258])


def test_unavailable_device_is_one_line(capfd, dirs):
    """Dead end: `--device cuda` on a CPU-only torch gave a 31-line AssertionError."""
    device = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    code, _, err = _run(capfd, ["generate", "x", "--model", dirs["target"], "--device", device])
    _one_line(code, err, device, "available", "cpu")
    code, _, err = _run(capfd, ["generate", "x", "--model", dirs["target"], "--device", "tpu7"])
    _one_line(code, err, "tpu7", "cpu")


def test_overlong_prompt_has_only_decodelab_line(capfd):
    """Dead end: transformers' 'will result in indexing errors' warning came before decodelab's own error."""
    code, _, err = _run(capfd, ["generate", "x = 1\n" * 400, "--model", "builtin:pyco"])
    line = _one_line(code, err, "maximum context is 512")
    assert "indexing errors" not in err, line
    lm = decodelab.load()
    assert len(lm.encode("x = 1\n" * 400)) > 512
    assert "indexing errors" not in capfd.readouterr().err


# ---- 5. the figures users compare -------------------------------------------------------------------

def test_stats_carry_forward_passes_per_token_and_acceptance(capfd, dirs):
    code, out, err = _run(capfd, ["generate", "abababababab", "--model", dirs["target"], "--method", "pld",
                                  "--max-new-tokens", "10", "--json"])
    stats = json.loads(out.strip().splitlines()[-1])["stats"]
    assert stats["forward_passes_per_token"] == pytest.approx(stats["forward_passes"] / stats["new_tokens"], abs=1e-4)
    lm = decodelab.load(dirs["target"])
    g = decodelab.generate(lm, "abababababab", method="pld", max_new_tokens=10)
    assert stats["acceptance_rate"] == pytest.approx(sum(g.stats.accepted) / sum(g.stats.drafted), abs=1e-4)
    assert 0 <= stats["acceptance_rate"] <= 1
    greedy = decodelab.generate(lm, "abababababab", max_new_tokens=10).stats
    assert greedy.acceptance_rate is None and greedy.forward_passes_per_token == 1.0
    code, _, err = _run(capfd, ["generate", "abababababab", "--model", dirs["target"], "--method", "pld",
                                "--max-new-tokens", "10"])
    assert "per token" in err and "acceptance rate" in err
