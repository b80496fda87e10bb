"""bench-diffusion (diffusion/bench.py): metrics, Pareto front, table, CLI errors — on tiny models."""

from __future__ import annotations

import json

import pytest

from decodelab.cli import main
from decodelab.diffusion import bench


def test_valid_python_prefix_accepts_incomplete_code_and_rejects_errors():
    prompt = "def f(x):\n    \"\"\"Double.\"\"\""
    assert bench.valid_python_prefix(prompt, "\n    y = (x,\n         x)\n    return y\n")
    assert bench.valid_python_prefix(prompt, "\n    if x:\n        return (1,\n")  # open bracket: incomplete
    assert bench.valid_python_prefix(prompt, "\n    return x +")  # an unfinished last line is not judged
    assert not bench.valid_python_prefix(prompt, "\n    return x +\n")
    assert not bench.valid_python_prefix(prompt, "\n    y = )\n")


def test_pareto_keeps_the_points_nothing_beats():
    pts = [(1.0, 0.5), (2.0, 0.9), (3.0, 0.8), (1.0, 0.4), (0.5, 0.2)]
    assert bench.pareto(pts) == [0, 1, 4]


def test_run_config_rows_and_table(tiny):
    items = [("copy : 1 2 =", "1 2", 6), ("sort : 3 1 =", "1 3", 6)]
    base = bench.run_config(tiny, "llada", {}, items, "tasks", "tiny")
    fast = bench.run_config(tiny, "fastdllm", {"threshold": 0.0}, items, "tasks", "tiny")
    assert base.n == fast.n == 2 and base.passes == 12  # one token per step: 6 passes per item
    assert fast.passes == 2  # threshold 0: everything in one pass
    row = fast.summary(base)
    assert row["passes_share_of_baseline"] == pytest.approx(2 / 12, abs=1e-4)
    assert 0.0 <= row["position_agreement"] <= 1.0 and base.summary(base)["identical_to_baseline"] == 1.0
    result = {"suite": "tasks", "items": 2, "rows": [base.summary(base), row]}
    text = bench.table(result, passes_only=True)
    assert text.count("\n") == 3 and "wall" not in text and all(line.count("|") == 8 for line in text.splitlines())


def test_cli_refuses_a_bad_count_in_one_line(capsys, tmp_path):
    assert main(["bench-diffusion", "--n", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--n" in err


def test_results_file_shape(tmp_path, monkeypatch, tiny):
    """run_suite with a stand-in model list: the JSON records rows and the machine load."""
    monkeypatch.setattr(bench, "TASK_CONFIGS", [("tiny", "llada", {}), ("tiny", "sspd", {})])
    monkeypatch.setattr(bench, "task_items", lambda n: [("copy : 1 2 =", "1 2", 5)] * n)
    monkeypatch.setattr("decodelab.load", lambda name: tiny)
    res = bench.run_suite("tasks", 2, 1, 8, progress=lambda s: None)
    json.dumps(res)
    assert [r["method"] for r in res["rows"]] == ["llada", "sspd"]
    assert res["rows"][1]["identical_to_baseline"] == 1.0  # sspd equals stepwise llada
    assert set(res["machine_load"]) >= {"before", "after", "busy"}
