"""The quality comparison (`decodelab bench --quality`): metrics on hand-made inputs, the Pareto rule,
and a tiny end-to-end run that writes the table, JSON and plot (the full run is in docs/SEARCH.md)."""

import json

import pytest

from decodelab.search.compare import function_source, method_grid, pareto, rep2, run_quality, syntax_valid

from fakes import tiny_lm

PROMPT = 'def f(x):\n    """Double x."""'


def test_function_is_cut_at_its_end_and_at_the_last_complete_line():
    assert function_source(PROMPT, "\n    return 2 * x\n\ndef g(") == PROMPT + "\n    return 2 * x\n"
    assert function_source(PROMPT, "\n    return 2 * x\n    y = (") == PROMPT + "\n    return 2 * x"
    assert syntax_valid(PROMPT, "\n    return 2 * x\n\nprint(")
    assert not syntax_valid(PROMPT, "\n    return (2 * x\n\n")


def test_rep2_and_grid():
    assert rep2([1, 2, 1, 2, 1]) == 0.5  # bigrams 12 21 12 21: two unique of four
    assert rep2([1, 2, 3]) == 0.0 and rep2([1]) == 0.0
    widths = {m: (p.get("num_beams") or p.get("num_samples") or p.get("top_k"), w) for _, m, p, w in method_grid(3)
              if m in ("contrastive", "best_of_n", "mbr")}
    assert all(a == w == 3 for a, w in widths.values())


def test_pareto_front_by_hand():
    rows = [{"cost": 1, "q": 0.5}, {"cost": 4, "q": 0.5}, {"cost": 4, "q": 0.7}, {"cost": 8, "q": 0.6},
            {"cost": 1, "q": 0.5}]
    # (4, 0.5) costs more for the same quality; (8, 0.6) is beaten by (4, 0.7); ties on both stay
    assert pareto(rows, "q") == [True, False, True, False, True]


def test_tiny_end_to_end_writes_table_json_and_plot(tmp_path):
    lm = tiny_lm("llama", seed=1)
    grid = [("greedy", "greedy", {}, 1), ("beam K=2", "beam", {"num_beams": 2}, 2),
            ("top_k=5", "sample", {"top_k": 5}, 1), ("autodeco", "autodeco", {}, 1)]  # no heads for it: skipped
    result = run_quality(lm, 2, 4, 0, 2, tmp_path, grid=grid)
    rows = result["rows"]
    assert [r["method"] for r in rows] == ["greedy", "beam K=2", "top_k=5"]
    assert rows[0]["log_eps_per_token"] is None and rows[2]["log_eps_per_token"] > 0  # top-k truncates: Z < 1
    assert [r["cost"] for r in rows] == [r["forward_passes"] * r["width"] for r in rows]
    assert rows[0]["forward_passes"] == 4 and rows[1]["width"] == 2
    assert json.loads((tmp_path / "quality.json").read_text())["rows"][0]["method"] == "greedy"
    assert (tmp_path / "quality.png").stat().st_size > 1000
    assert "| beam K=2 | 2 |" in (tmp_path / "quality.md").read_text()
    assert "| — |" in (tmp_path / "quality.md").read_text()


def test_bench_quality_refuses_other_suites():
    from decodelab.search.compare import bench_quality

    class Args:
        suite = ["edit"]
    with pytest.raises(ValueError, match="code suite"):
        bench_quality(Args())
