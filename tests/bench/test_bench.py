"""decodelab bench end to end on a tiny random model: outputs, schema, exactness detection, suites."""

import json
import statistics

import jsonschema
import pytest

from decodelab.bench.report import SCHEMA
from decodelab.bench.suites import load_suite
from decodelab.cli import main
from decodelab.methods import registry
from decodelab.methods.loop import speculative_loop
from decodelab.proposers.lookup import PromptLookup


def _broken_method(ctx):
    for step in speculative_loop(ctx, PromptLookup(3, 4)):
        if len(ctx.out[0]) > 5:
            step = [[(t + 1) % 256 for t in step[0]]]  # corrupt the emitted tokens
        yield step


@pytest.fixture
def broken():
    registry.register("broken", description="test-only: corrupts tokens", lossless=True)(_broken_method)
    yield "broken"
    registry._REGISTRY.pop("broken")


def _mean_tokens_per_s(records: list[dict], method: str) -> float:
    """Mean over prompts of new tokens / median wall time over the repeats."""
    by_prompt: dict[str, list[dict]] = {}
    for r in records:
        if r["method"] == method:
            by_prompt.setdefault(r["prompt_id"], []).append(r)
    return statistics.fmean(rs[0]["new_tokens"] / statistics.median(r["wall_time_s"] for r in rs)
                            for rs in by_prompt.values())


def _run(args, capsys):
    rc = main(["bench", *args])
    out = capsys.readouterr()
    return rc, out


def test_quick_suite_end_to_end(model_dir, tmp_path, capsys, broken):
    out = tmp_path / "out"
    rc, cap = _run(["--model", str(model_dir), "--suite", "quick", "--methods", "greedy,pld,jacobi,broken",
                    "--repeats", "2", "--max-new-tokens", "24", "--out", str(out), "--json"], capsys)
    assert rc == 0, cap.err
    summary = json.loads(cap.out.strip().splitlines()[-1])
    results = json.loads((out / "results.json").read_text())
    jsonschema.validate(results, SCHEMA)
    for png in ("speedup.png", "tau_vs_speedup.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert "| pld |" in (out / "report.md").read_text()
    agg = {a["method"]: a for a in summary["aggregates"]}
    for method in ("pld", "jacobi"):  # the reported speed-up is the ratio of mean per-prompt tokens/s
        want = _mean_tokens_per_s(results["records"], method) / _mean_tokens_per_s(results["records"], "greedy")
        assert agg[method]["speedup"] == pytest.approx(want, rel=1e-3)
    assert agg["pld"]["exact"] is True and agg["jacobi"]["exact"] is True
    assert agg["hf:greedy"]["exact"] is True and agg["hf:pld"]["exact"] is True
    assert agg["broken"]["exact"] is False
    assert agg["broken"]["mismatch"]["position"] >= 5
    n_prompts = len(load_suite("quick").prompts)
    per = [r for r in results["records"] if r["method"] == "pld"]
    assert len(per) == n_prompts * 2 and {r["repeat"] for r in per} == {0, 1}


def test_sampling_mode_checks_distribution(model_dir, tmp_path, capsys):
    out = tmp_path / "s"
    rc, cap = _run(["--model", str(model_dir), "--suite", "quick", "--methods", "greedy,pld", "--no-peers",
                    "--repeats", "1", "--max-new-tokens", "8", "--limit", "1", "-p", "temperature=0.8",
                    "-p", "top_k=3", "--dist-seeds", "150", "--out", str(out), "--json"], capsys)
    assert rc == 0, cap.err
    agg = {a["method"]: a for a in json.loads(cap.out.strip().splitlines()[-1])["aggregates"]}
    assert agg["pld"]["distribution_pvalue"] is not None and agg["pld"]["exact"] is True


def test_user_jsonl_suite_and_malformed_line(model_dir, tmp_path, capsys):
    good = tmp_path / "mine.jsonl"
    good.write_text('{"prompt": "def f(x):", "id": "a"}\n\n{"prompt": "x = 1", "max_new_tokens": 4}\n')
    suite = load_suite(str(good))
    assert [p.id for p in suite.prompts] == ["a", "mine/3"] and suite.prompts[1].max_new_tokens == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 5}\n')
    rc, cap = _run(["--model", str(model_dir), "--suite", str(bad), "--out", str(tmp_path / "o")], capsys)
    assert rc != 0
    assert cap.err.strip().count("\n") == 0 and "bad.jsonl:2" in cap.err and "Traceback" not in cap.err
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_suite(str(bad))


def test_builtin_suites_are_deterministic_and_from_test_split():
    from decodelab.training.corpus import split_of

    for name in ("code", "edit", "long"):
        a, b = load_suite(name), load_suite(name)
        assert a.prompts == b.prompts and len(a.prompts) >= 6
        for p in a.prompts:
            rel = p.id.split("/", 1)[1].split(":")[0]
            assert split_of(rel) == "test", p.id
            # v2: no prompt ends in a bare newline (the tokenizer merges it with the next indentation)
            assert not p.text.endswith("\n") and p.text.strip(), p.id
        assert a.version == 2
    edit = load_suite("edit").prompts[0].text
    assert "_v2(" in edit


def test_bad_bench_arguments(model_dir, capsys):
    rc, cap = _run(["--model", str(model_dir), "--methods", "greedy,nope"], capsys)
    assert rc != 0 and "nope" in cap.err
    rc, cap = _run(["--model", str(model_dir), "-p", "pld.bogus=1"], capsys)
    assert rc != 0 and "bogus" in cap.err
    rc, cap = _run(["--list"], capsys)
    assert rc == 0 and "quick" in cap.out and "speculative" in cap.out


def test_first_mismatch_counts_length_difference():
    from decodelab.bench.runner import first_mismatch

    assert first_mismatch([1, 2, 3], [1, 2, 3]) is None
    assert first_mismatch([1, 2], [1, 2, 3]) == 2
    assert first_mismatch([1, 9, 3], [1, 2, 3]) == 1
