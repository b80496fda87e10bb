"""The command line, in-process through decodelab.cli.main and once as a subprocess."""

import io
import json
import os
import subprocess
import sys

import pytest

import decodelab
from decodelab.cli import main

from fakes import byte_tokenizer, tiny_lm

STATS_FIELDS = {"new_tokens", "forward_passes", "draft_forward_passes", "steps", "mean_accepted",
                "wall_time_s", "tokens_per_s"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tiny"
    tiny_lm("llama", seed=8).model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return str(path)


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _last_json(out: str) -> dict:
    lines = out.strip().splitlines()
    assert lines, "no stdout"
    return json.loads(lines[-1])


def _assert_one_line_error(code, err, *words):
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]


def test_generate_json(capsys, model_dir):
    code, out, _ = _run(capsys, ["generate", "def f(x):", "--model", model_dir, "--max-new-tokens", "5", "--json"])
    assert code == 0
    result = _last_json(out)
    assert set(result) >= {"method", "params", "text", "token_ids", "finish_reason", "stats"}
    assert result["method"] == "greedy"
    assert result["params"]["temperature"] == 0
    assert STATS_FIELDS <= set(result["stats"])
    assert result["stats"]["new_tokens"] == len(result["token_ids"])
    assert result["finish_reason"] in ("length", "eos", "stop")
    lm = decodelab.load(model_dir)
    g = decodelab.generate(lm, "def f(x):", max_new_tokens=5)
    assert result["token_ids"] == g.token_ids and result["text"] == g.text


def test_generate_plain_text_streams_to_stdout(capsys, model_dir):
    code, out, err = _run(capsys, ["generate", "hello", "--model", model_dir, "--max-new-tokens", "4"])
    assert code == 0
    lm = decodelab.load(model_dir)
    assert out.startswith(decodelab.generate(lm, "hello", max_new_tokens=4).text)
    assert "4 tokens" in err or "eos" in err


def test_prompt_from_stdin(capsys, monkeypatch, model_dir):
    monkeypatch.setattr(sys, "stdin", io.StringIO("import os\n"))
    code, out, _ = _run(capsys, ["generate", "-", "--model", model_dir, "--max-new-tokens", "4", "--json"])
    assert code == 0
    from_stdin = _last_json(out)
    code, out, _ = _run(capsys, ["generate", "import os\n", "--model", model_dir, "--max-new-tokens", "4", "--json"])
    assert from_stdin["token_ids"] == _last_json(out)["token_ids"]


def test_params_are_typed(capsys, model_dir):
    argv = ["generate", "x", "--model", model_dir, "--method", "sample", "--max-new-tokens", "3", "--json",
            "-p", "temperature=0.5", "-p", "top_k=3", "--seed", "1"]
    code, out, _ = _run(capsys, argv)
    assert code == 0
    result = _last_json(out)
    assert result["method"] == "sample"
    assert result["params"]["temperature"] == 0.5 and isinstance(result["params"]["temperature"], float)
    assert result["params"]["top_k"] == 3 and isinstance(result["params"]["top_k"], int)
    # the seed makes the run reproducible, and matches the API with the same arguments
    code, out, _ = _run(capsys, argv)
    assert _last_json(out)["token_ids"] == result["token_ids"]
    lm = decodelab.load(model_dir)
    g = decodelab.generate(lm, "x", method="sample", max_new_tokens=3, seed=1, temperature=0.5, top_k=3)
    assert result["token_ids"] == g.token_ids


def test_stop_option(capsys, model_dir):
    code, out, _ = _run(capsys, ["generate", "x", "--model", model_dir, "--max-new-tokens", "12", "--json"])
    text = _last_json(out)["text"]
    stop = next(c for c in text[1:] if c != "\ufffd")
    code, out, _ = _run(capsys, ["generate", "x", "--model", model_dir, "--max-new-tokens", "12", "--json",
                                 "--stop", stop])
    result = _last_json(out)
    assert result["finish_reason"] == "stop" and result["text"] == text[: text.find(stop)]


@pytest.mark.parametrize("extra,words", [
    (["--method", "no-such-method"], ["no-such-method"]),
    (["-p", "temperature=hot"], ["temperature", "hot"]),
    (["-p", "top_k=1.5"], ["top_k"]),
    (["-p", "temperature=-1"], ["temperature"]),
    (["-p", "temperature"], ["temperature", "KEY=VALUE"]),
    (["-p", "bogus=1"], ["bogus"]),
    (["--max-new-tokens", "0"], ["max_new_tokens"]),
])
def test_user_errors_are_one_line(capsys, model_dir, extra, words):
    code, out, err = _run(capsys, ["generate", "x", "--model", model_dir, "--json", *extra])
    _assert_one_line_error(code, err, *words)
    assert out == ""


def test_missing_model_path(capsys, tmp_path):
    missing = str(tmp_path / "no-model-here")
    code, _, err = _run(capsys, ["generate", "x", "--model", missing])
    _assert_one_line_error(code, err, "no-model-here")


def test_empty_prompt(capsys, model_dir, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = _run(capsys, ["generate", "-", "--model", model_dir])
    _assert_one_line_error(code, err, "empty")


def test_methods_json(capsys):
    code, out, _ = _run(capsys, ["methods", "--json"])
    assert code == 0
    table = json.loads(out.strip().splitlines()[-1])
    assert {"greedy", "sample"} <= set(table)
    assert table["greedy"]["lossless"] is True
    assert "temperature" in table["sample"]["params"]
    assert set(table) == set(decodelab.methods())


def test_methods_table(capsys):
    code, out, _ = _run(capsys, ["methods"])
    assert code == 0 and "greedy" in out and "sample" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert decodelab.__version__ in capsys.readouterr().out


def test_subprocess_bad_parameter_has_no_traceback(model_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "decodelab.cli", "generate", "x", "--model", model_dir, "--json",
         "-p", "top_p=7"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "top_p" in lines[0], proc.stderr
    assert proc.stdout == ""


def test_usage_errors_are_one_line(capsys):
    """argparse's own errors (bad int, unknown flag, missing value): one line, not a usage block."""
    for argv in (["generate", "x", "--max-new-tokens", "x"], ["generate", "x", "--frobnicate"], ["generate", "-p"],
                 ["no-such-command"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        _assert_one_line_error(info.value.code, capsys.readouterr().err, "error", "--help")


def test_a_bug_is_one_line_internal_error(capsys, model_dir):
    """An exception that is not a user error still prints one line, labelled as decodelab's fault."""
    from decodelab.methods import registry

    def crash(ctx):
        raise RuntimeError("boom\nsecond line")
        yield

    registry.register("crash", description="test-only: raises", lossless=True)(crash)
    try:
        code, _, err = _run(capsys, ["generate", "x", "--model", model_dir, "--method", "crash"])
    finally:
        registry._REGISTRY.pop("crash")
    _assert_one_line_error(code, err, "internal error", "RuntimeError", "boom second line")
    assert code == 3


def test_demo_on_a_suite_prompt(capsys, model_dir, tmp_path):
    suite = tmp_path / "s.jsonl"
    suite.write_text(json.dumps({"prompt": "abcabcabc", "id": "p0"}) + "\n")
    code, out, err = _run(capsys, ["demo", "--model", model_dir, "--suite", str(suite), "--max-new-tokens", "6"])
    assert code == 0, err
    assert out.startswith("# prompt p0") and "pld vs greedy: same text as greedy" in err
    code, out, err = _run(capsys, ["demo", "--model", model_dir, "--suite", str(suite), "--max-new-tokens", "6",
                                   "--json"])
    result = _last_json(out)
    assert result["method"] == "pld" and result["compare"]["identical"] is True
    code, _, err = _run(capsys, ["demo", "--model", model_dir, "--suite", str(suite), "--index", "3"])
    _assert_one_line_error(code, err, "--index")


def test_sampling_backend_and_dtype_flags(capsys, model_dir):
    argv = ["generate", "x", "--model", model_dir, "--method", "sample", "--max-new-tokens", "3", "--json",
            "--seed", "2", "--temperature", "0.7", "--top-k", "5", "--top-p", "0.9", "--min-p", "0.01",
            "--repetition-penalty", "1.1", "--backend", "transformers", "--dtype", "float32"]
    code, out, err = _run(capsys, argv)
    assert code == 0, err
    result = _last_json(out)
    assert result["params"]["temperature"] == 0.7 and result["params"]["top_k"] == 5
    g = decodelab.generate(decodelab.load(model_dir), "x", method="sample", max_new_tokens=3, seed=2, temperature=0.7,
                           top_k=5, top_p=0.9, min_p=0.01, repetition_penalty=1.1)
    assert result["token_ids"] == g.token_ids
    code, _, err = _run(capsys, ["generate", "x", "--model", model_dir, "--temperature", "0.5", "-p", "temperature=1"])
    _assert_one_line_error(code, err, "--temperature", "disagree")
    code, _, err = _run(capsys, ["generate", "x", "--model", model_dir, "--dtype", "int3"])
    _assert_one_line_error(code, err, "int3")
