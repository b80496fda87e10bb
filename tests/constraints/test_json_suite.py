"""The `json` bench suite: its schemas, the validity check, the grammar timers and the bench run."""

import json

import jsonschema
import pytest

import decodelab
from decodelab.bench.report import SCHEMA
from decodelab.bench.suites import load_suite
from decodelab.cli import main
from decodelab.constraints import compile_constraint, validity
from decodelab.constraints.json_suite import CASES, EXAMPLES
from decodelab.constraints.timing import grammar_timing

from fakes import tiny_lm


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("llama", seed=0)


@pytest.mark.parametrize("case", range(len(CASES)), ids=[c[0] for c in CASES])
def test_schema_is_valid_satisfiable_and_strict(lm, case):
    _, prompt, schema, example = CASES[case]
    jsonschema.Draft202012Validator.check_schema(schema)
    constraint = {"json_schema": schema}
    grammar = compile_constraint(lm, constraint)  # llguidance compiles it
    text = json.dumps(example)  # the constraint's layout is json.dumps's (spec.JSON_DEFAULTS)
    assert validity.satisfied(constraint, text, grammar)
    assert validity.grammar_accepts(grammar, text)
    bad = json.dumps({"unexpected": 1} if not isinstance(example, list) else [*example, *example, *example, *example])
    assert not validity.satisfied(constraint, bad, grammar)
    assert not validity.grammar_accepts(grammar, bad)
    assert not validity.satisfied(constraint, text[:-1], grammar)  # cut short: does not parse
    assert prompt.endswith("json.loads('")


def test_suite_carries_the_schemas():
    constrained, free = load_suite("json"), load_suite("json-unconstrained")
    assert [p.constraint for p in constrained.prompts] == [{"json_schema": c[2]} for c in CASES]
    assert [p.text for p in free.prompts] == [p.text for p in constrained.prompts]
    assert all(p.constraint is None for p in free.prompts)
    assert len(CASES) == len(EXAMPLES) >= 12


def test_validity_checks_each_kind_and_the_llguidance_fallback(lm, monkeypatch):
    regex, lark = {"regex": "[0-9]{2}"}, {"lark": 'start: "(" NUM ")"\nNUM: /[0-9]+/'}
    assert validity.satisfied(regex, "12") and not validity.satisfied(regex, "123")
    assert validity.satisfied({"choice": ["a", "bc"]}, "bc") and not validity.satisfied({"choice": ["a"]}, "b")
    g = compile_constraint(lm, lark)
    assert validity.satisfied(lark, "(42)", g) and not validity.satisfied(lark, "(4", g)
    schema = {"json_schema": CASES[0][2]}
    g = compile_constraint(lm, schema)
    monkeypatch.setattr(validity, "json_validator", lambda: "llguidance")
    assert validity.satisfied(schema, json.dumps(EXAMPLES[0]), g)
    assert not validity.satisfied(schema, json.dumps({**EXAMPLES[0], "age": 121}), g)  # out of range
    with pytest.raises(ValueError, match="compiled grammar"):
        validity.satisfied(schema, "{}")


def test_grammar_timer_records_one_mask_per_token_only_while_active(lm):
    constraint = {"regex": "[a-z]{3,12}"}
    with grammar_timing() as timer:
        g = decodelab.generate(lm, "x", max_new_tokens=12, constraint=constraint)
    assert len(timer.mask_s) == len(g.token_ids) and timer.mask_rows == len(g.token_ids)
    assert all(s > 0 for s in timer.mask_s)
    summary = timer.summary()
    assert summary["mask_calls"] == len(g.token_ids) and summary["mask_us_p99"] >= summary["mask_us_mean"] > 0
    decodelab.generate(lm, "x", max_new_tokens=4, constraint=constraint)  # no timer active: nothing kept
    assert len(timer.mask_s) == len(g.token_ids)
    with grammar_timing() as timer:  # a batch: every row's token had a mask (one call per row or per batch)
        gens = decodelab.generate_batch(lm, ["x", "yz"], max_new_tokens=5, constraint=constraint)
    assert timer.mask_rows >= sum(len(x.token_ids) for x in gens) and timer.mask_rows >= len(timer.mask_s)
    with grammar_timing() as timer:  # pld asks the grammar for forced tokens once per step
        g = decodelab.generate(lm, "x", method="pld", max_new_tokens=6, constraint={"choice": ["abcdefgh"]})
    assert timer.ff_s and g.stats.forced_tokens > 0
    with grammar_timing() as timer:  # awrs checks tokens one by one instead of masking
        g = decodelab.generate(lm, "x", method="awrs", temperature=1.0, seed=0, max_new_tokens=4, constraint=constraint)
    assert len(timer.check_s) >= len(g.token_ids) and timer.summary()["check_calls"] == len(timer.check_s)


def test_bench_json_suite_on_pyco(tmp_path, capsys):
    out, free = tmp_path / "out", tmp_path / "free.jsonl"
    free.write_text('{"prompt": "def f(x):", "max_new_tokens": 4}\n')  # an unconstrained suite in the same run
    rc = main(["bench", "--suites", f"json,{free}", "--methods", "greedy,pld,mbr", "--limit", "2", "--repeats", "1",
               "--out", str(out), "--json"])
    cap = capsys.readouterr()
    assert rc in (0, None), cap.err
    results = json.loads((out / "results.json").read_text())
    jsonschema.validate(results, SCHEMA)
    assert "mbr" not in results["config"]["skipped"]  # meta methods run their inner method under the grammar
    by_suite = {s: {r["method"] for r in results["records"] if r["suite"] == s} for s in ("json", "free")}
    assert by_suite["json"] == {"greedy", "pld", "mbr"} and by_suite["free"] > {"greedy", "pld", "hf:greedy"}  # peers
    assert all("valid" not in r for r in results["records"] if r["suite"] == "free")
    lm = decodelab.load("builtin:pyco")
    schemas = {c[0]: {"json_schema": c[2]} for c in CASES}
    for r in (r for r in results["records"] if r["suite"] == "json"):
        assert r["valid"] == validity.satisfied(schemas[r["prompt_id"]], r["text"])
        assert r["text"] == lm.decode(r["token_ids"])
    agg = {a["method"]: a for a in results["aggregates"] if a["suite"] == "json"}
    assert not any("validity" in a for a in results["aggregates"] if a["suite"] == "free")
    assert agg["greedy"]["validity"] == 1.0 and agg["greedy"]["valid_outputs"] == "2/2"  # pyco writes valid JSON
    assert agg["greedy"]["validator"] == "jsonschema"
    assert agg["pld"]["exact"] is True  # constrained pld == constrained greedy, token for token
    greedy = [r for r in results["records"] if r["method"] == "greedy" and r["suite"] == "json"]
    # greedy fast-forwards forced tokens too (constraints/fastforward.py): about one mask per token, no more
    assert agg["greedy"]["mask_calls_per_token"] <= 1.1 and agg["greedy"]["forced_tokens"] > 0
    assert agg["greedy"]["checks_per_token"] == 0 and agg["pld"]["checks_per_token"] > 0  # pld prunes drafts
    assert agg["greedy"]["grammar_ms_per_token"] >= agg["greedy"]["mask_ms_per_token"] > 0
    assert 0 < sum(len(r["mask_us"]) for r in greedy) <= 1.1 * sum(r["new_tokens"] for r in greedy)
    assert agg["pld"]["forced_tokens"] > 0  # JSON keys are forced: fast-forwarded as drafts
    assert agg["pld"]["forward_passes_per_token"] < 1.0
    assert 0 < agg["greedy"]["mask_share_of_forward"] and agg["greedy"]["forward_us_per_pass"] > 0
    # the masks come from one batched call per verify step (constraints/batched.py) and the processor reads them
    for m in ("greedy", "pld"):
        assert agg[m]["mask_hit_share"] >= 0.9 and 0 < agg[m]["batch_calls_per_token"] <= 1
        assert agg[m]["batch_us_p99"] >= agg[m]["batch_us_mean"] > 0
    assert agg["pld"]["masks_per_batch"] > 1  # a draft's nodes share the call
    report = (out / "report.md").read_text()
    assert "| greedy | 2/2 |" in report and "mask ÷ forward" in report


def test_bench_refuses_constrained_batches_and_bad_jsonl(tmp_path, capsys):
    assert main(["bench", "--suites", "json", "--batch-size", "2", "--out", str(tmp_path)]) == 2
    assert "batch-size 1" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "constraint": "[0-9]"}\n')
    with pytest.raises(ValueError, match="constraint"):
        load_suite(str(bad))
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "x = ", "constraint": {"regex": "[0-9]+"}}\n')
    assert load_suite(str(good)).prompts[0].constraint == {"regex": "[0-9]+"}
