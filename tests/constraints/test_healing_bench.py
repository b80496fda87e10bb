"""The token-healing measurement runs and reports what it claims (counts; the run's table is in docs)."""

import json

from decodelab.constraints.healing_bench import main


def test_healing_bench_rows(tmp_path, capsys):
    rows = main(["--limit", "2", "--max-new-tokens", "6", "--out", str(tmp_path)])
    assert [(r["ending"], r["token_healing"]) for r in rows] == [
        ("newline", False), ("newline", True), ("newline+indent", False), ("newline+indent", True)]
    assert all(r["prompts"] == 2 and 0 <= r["syntax_valid"] <= 1 for r in rows)
    assert all(r["changed_vs_plain"] == 0 for r in rows if not r["token_healing"])  # off = plain greedy
    saved = json.loads((tmp_path / "healing.json").read_text())
    assert saved["rows"] == rows and "--limit 2" in saved["command"]
    assert "| newline+indent | on |" in capsys.readouterr().out
