"""`decodelab generate --prompts-file`: a JSON-lines dataset through generate_batch, one JSON row per line.

Every row equals the same prompt generated alone (greedy; sampled with seed `--seed + row`), a line's own
constraint wins over the flag's, rows come out in input order across blocks, and every bad file or flag
combination is one line on stderr before anything runs."""

import json
import re

import pytest
from test_cli import _assert_one_line_error, _run

import decodelab
from decodelab import batch_cli

from fakes import byte_tokenizer, tiny_lm

PROMPTS = ["def f(x):\n    return", "import os\n", "x = ", "hello world", "for i in range(3):"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("batch") / "tiny"
    tiny_lm("llama", seed=8).model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return str(path), decodelab.load(str(path))


def _file(tmp_path, lines) -> str:
    """A prompts file: each item JSON-encoded on its line (a str `lines` is the file's raw text)."""
    path = tmp_path / "prompts.jsonl"
    path.write_text(lines if isinstance(lines, str) else "".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def _rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_rows_equal_each_prompt_alone_with_its_seed_in_input_order(capsys, tmp_path, model, monkeypatch):
    path, lm = model
    monkeypatch.setattr(batch_cli, "BLOCK_BATCHES", 1)  # blocks of --max-batch rows: the order holds across them
    code, out, err = _run(capsys, ["generate", "--prompts-file", _file(tmp_path, PROMPTS), "--model", path,
                                   "--method", "pld", "--temperature", "1.0", "--top-k", "20", "--seed", "40",
                                   "--n", "2", "--max-batch", "3", "--max-new-tokens", "8"])
    assert code == 0
    rows = _rows(out)
    assert [(r["index"], r["sample"]) for r in rows] == [(i, j) for i in range(len(PROMPTS)) for j in range(2)]
    for r, row in enumerate(rows):
        alone = decodelab.generate(lm, PROMPTS[row["index"]], method="pld", temperature=1.0, top_k=20,
                                   seed=40 + r, max_new_tokens=8)
        assert row["token_ids"] == alone.token_ids and row["text"] == alone.text
    assert len({tuple(r["token_ids"]) for r in rows}) > len(PROMPTS)  # n = 2 samples differ
    assert "10 rows (5 prompts × n=2)" in err and "at most 3 rows at once" in err


def test_a_lines_own_constraint_wins_over_the_flag(capsys, tmp_path, model):
    path, lm = model
    lines = [PROMPTS[0], {"prompt": PROMPTS[1], "constraint": {"regex": "[0-9]{3}"}}, {"prompt": PROMPTS[2]}]
    code, out, _ = _run(capsys, ["generate", "--prompts-file", _file(tmp_path, lines), "--model", path,
                                 "--regex", "(yes|no)!", "--max-new-tokens", "8"])
    assert code == 0
    rows = _rows(out)
    for row, pattern, prompt in zip(rows, ["(yes|no)!", "[0-9]{3}", "(yes|no)!"], [PROMPTS[0], PROMPTS[1], PROMPTS[2]]):
        assert re.fullmatch(pattern, row["text"]) and row["incomplete"] is False
        alone = decodelab.generate(lm, prompt, constraint={"regex": pattern}, max_new_tokens=8)
        assert row["token_ids"] == alone.token_ids


@pytest.mark.parametrize("lines,extra,words", [
    ('"a"\n{not json\n', [], ["line 2", "not JSON"]),
    ([{"prompt": "a", "seed": 1}], [], ["line 1", "unknown key 'seed'"]),
    ([{"constraint": {"regex": "a"}}], [], ["line 1", "non-empty string"]),
    (["a", {"prompt": "b", "constraint": {"regex": "a"}}], [], ["prompt 1 has no constraint"]),
    ([{"prompt": "b", "constraint": {"regex": "("}}], [], ["invalid regex constraint"]),
    ([], [], ["holds no prompt"]),
    (["a"], ["PROMPT"], ["PROMPT or --prompts-file, not both"]),
    (["a"], ["--compare", "greedy"], ["--compare runs one prompt"]),
    (["a"], ["--n", "0"], ["--n must be ≥ 1"]),
    (["a"], ["--max-batch", "0"], ["--max-batch must be ≥ 1"]),
])
def test_bad_files_and_flags_are_one_line(capsys, tmp_path, model, lines, extra, words):
    path, _ = model
    argv = ["generate", "--prompts-file", _file(tmp_path, lines), "--model", path, "--max-new-tokens", "4"]
    if extra[:1] == ["PROMPT"]:
        argv.insert(1, "x")
        extra = extra[1:]
    code, _, err = _run(capsys, argv + extra)
    _assert_one_line_error(code, err, *words)


def test_batch_flags_need_a_prompts_file(capsys, model):
    path, _ = model
    for flag, value in (("--n", "2"), ("--max-batch", "4")):
        code, _, err = _run(capsys, ["generate", "x", "--model", path, flag, value])
        _assert_one_line_error(code, err, f"{flag} needs --prompts-file")
    code, _, err = _run(capsys, ["generate", "--prompts-file", "/nonexistent/p.jsonl", "--model", path])
    _assert_one_line_error(code, err, "cannot read '/nonexistent/p.jsonl'")
