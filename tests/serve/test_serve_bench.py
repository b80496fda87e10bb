"""python -m decodelab.serve.bench on a tiny model: counts, success, the results' shape (no timing claims)."""

import json

import pytest

from decodelab.serve import bench

from fakes import tiny_lm


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama as a Hugging Face directory (what `decodelab serve --model` loads)."""
    lm, path = tiny_lm("llama", seed=0), tmp_path_factory.mktemp("tiny-serve-bench")
    for part in (lm.model, lm.tokenizer):
        part.save_pretrained(path)
    return path


def _args(model_dir, out, *extra):
    return ["--model", str(model_dir), "--max-tokens", "6", "--prompt-chars", "100", "--out", str(out), *extra]


def _check_level(level, concurrency, requests, max_tokens=6):
    assert level["concurrency"] == concurrency and level["planned"] == concurrency * requests
    assert level["completed"] == level["planned"] and level["failed"] == 0 and level["not_started"] == 0
    reqs = level["requests"]
    assert sorted(r["index"] for r in reqs) == list(range(concurrency * requests))
    assert sorted({r["client"] for r in reqs}) == list(range(concurrency))
    assert all(r["ok"] and r["status"] == 200 and 1 <= r["completion_tokens"] <= max_tokens for r in reqs)
    assert level["output_tokens"] == sum(r["completion_tokens"] for r in reqs)
    assert level["prompt_tokens"] == sum(r["prompt_tokens"] for r in reqs)
    assert level["e2e_s"]["n"] == level["ttft_s"]["n"] == len(reqs)
    assert all(r["ttft_s"] <= r["e2e_s"] for r in reqs)
    assert level["throughput_tok_s"] == pytest.approx(level["output_tokens"] / level["wall_s"], rel=1e-3)
    assert set(level["load"]) >= {"before", "during_others_cpu_share", "after", "busy"}


def test_inprocess_run_counts_every_request_and_matches_generate(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = bench.main(_args(model_dir, out, "--server", "inprocess", "--concurrency", "1,3", "--requests", "2",
                          "--baseline", "--paired", "--json"))
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "decodelab.serve-bench/1" and results["config"]["levels"] == [1, 3]
    for level, c in zip(results["levels"], (1, 3)):
        _check_level(level, c, 2)
    base = results["baseline"]
    assert base["requests"] == 2 and base["same_text"] == "2/2"  # greedy over HTTP == decodelab.generate
    assert base["cpu_ms_per_token"] >= 0  # (clock ticks of 10 ms: may read 0 on a tiny model)
    pairs = results["paired"]  # each request over HTTP and in-process (alternating order): same text, overhead from the same pairs
    assert pairs["requests"] == 2 and pairs["same_text"] == "2/2" and pairs["output_tokens"] == base["output_tokens"]
    assert pairs["http_overhead"] == pytest.approx(pairs["http_s_per_token"] / pairs["inprocess_s_per_token"] - 1,
                                                   rel=0.02)  # (per-token figures are rounded to µs)
    assert pairs["order"] == ["http", "in-process", "in-process", "http"]  # each pair's order alternates
    low, high = pairs["http_overhead_quartiles"]
    assert low <= pairs["http_overhead_median"] <= high
    cpu = results["levels"][0]["cpu"]  # server and clients share this process: no split
    assert cpu["server_s"] is None and cpu["client_s"] is None and cpu["client_ms_per_token"] is None
    assert base["output_tokens"] == results["levels"][0]["output_tokens"]
    summary = json.loads(cap.out.strip().splitlines()[-1])
    assert [lv["completed"] for lv in summary["levels"]] == [2, 6] and "requests" not in summary["levels"][0]
    report = (out / "report.md").read_text()
    assert "| 1 | 2/2 | 0 |" in report and "| 3 | 6/6 | 0 |" in report and "same text 2/2" in report
    assert "Paired (each of 2 requests over HTTP and in-process next to it, the order alternating)" in report
    assert "middle half of the requests" in report and summary["paired"] == pairs


def test_subprocess_server_and_failed_requests_are_reported(model_dir, tmp_path, capsys):
    out = tmp_path / "sub"
    rc = bench.main(_args(model_dir, out, "--concurrency", "2", "--requests", "1", "--no-stream",
                          "--loop", "asyncio", "--http", "h11"))  # (live-server tests run uvicorn's auto choice)
    assert rc == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    _check_level(results["levels"][0], 2, 1)
    assert results["config"]["server_command"][1:4] == ["-m", "decodelab.cli", "serve"]
    assert "serving" in (out / "server.log").read_text()
    assert "asyncio event loop, h11 HTTP parser" in (out / "server.log").read_text()
    cpu = results["levels"][0]["cpu"]  # the server process's CPU (its model's too) and the clients', apart
    assert cpu["server_s"] >= 0 and cpu["client_s"] >= 0
    assert cpu["server_ms_per_token"] == pytest.approx(1e3 * cpu["server_s"] / results["levels"][0]["output_tokens"],
                                                       abs=1e-3)
    rc = bench.main(_args(model_dir, tmp_path / "bad", "--server", "inprocess", "--method", "nope"))
    assert rc == 2 and "warm-up request failed: 400" in capsys.readouterr().err


def test_summary_counts_failures_and_requests_not_started():
    ok = [{"ok": True, "status": 200, "e2e_s": x / 100, "ttft_s": x / 1000, "tpot_s": None, "itl_s": [],
           "prompt_tokens": 3, "completion_tokens": 2, "client": 0, "index": x} for x in range(1, 101)]
    bad = [{"ok": False, "status": 429, "error": "queue full", "e2e_s": 0.1, "client": 1, "index": 200}]
    s = bench.summarize(4, 110, ok + bad, 2.0, None)
    assert (s["completed"], s["failed"], s["not_started"]) == (100, 1, 9)
    assert s["errors"] == ["429: queue full"] and s["output_tokens"] == 200 and s["throughput_tok_s"] == 100.0
    assert s["e2e_s"]["p50"] == pytest.approx(0.505) and s["e2e_s"]["p99"] == pytest.approx(0.9901)
    assert s["tpot_s"] is None and s["itl_s"] is None


def test_time_limit_and_bad_arguments(model_dir, tmp_path, capsys):
    out = tmp_path / "late"
    rc = bench.main(_args(model_dir, out, "--server", "inprocess", "--concurrency", "2", "--requests", "3",
                          "--time-limit", "1e-9"))
    assert rc == 0, capsys.readouterr().err
    level = json.loads((out / "results.json").read_text())["levels"][0]
    assert level["completed"] + level["failed"] + level["not_started"] == 6 and level["not_started"] >= 4
    for argv, message in ((["--url", "http://example.com:80"], "loopback only"),
                          (["--concurrency", "0"], "≥ 1"), (["--concurrency", "a"], "integers"),
                          (["-p", "novalue"], "KEY=VALUE"), (["--requests", "0"], "--requests")):
        assert bench.main(argv) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("no_mix", [False, True])
def test_a_method_mix_cycles_methods_over_requests(model_dir, tmp_path, capsys, no_mix):
    """`--method greedy,pld` sends requests 0, 2, … as greedy and 1, 3, … as pld (each equal to generate()
    with its own method: the baseline's same-text count); `-p pld.KEY=VALUE` reaches pld's requests only,
    so a parameter pld does not take fails exactly those."""
    out = tmp_path / "mix"
    extra = ["--no-mix"] if no_mix else []
    rc = bench.main(_args(model_dir, out, "--server", "inprocess", "--method", "greedy,pld", "-p",
                          "pld.num_draft_tokens=3", "--concurrency", "1,2", "--requests", "2", "--baseline", *extra))
    assert rc == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    for level, c in zip(results["levels"], (1, 2)):
        _check_level(level, c, 2)
    assert results["baseline"]["same_text"] == "2/2" and results["config"]["no_mix"] == no_mix
    assert results["config"]["method_params"] == {"pld": {"num_draft_tokens": 3}}
    out = tmp_path / "scoped"
    rc = bench.main(_args(model_dir, out, "--server", "inprocess", "--method", "greedy,pld", "-p", "pld.bogus=1",
                          "--concurrency", "2", "--requests", "1"))
    level = json.loads((out / "results.json").read_text())["levels"][0]
    assert rc == 0 and level["completed"] == 1 and level["failed"] == 1 and "bogus" in level["errors"][0]
    assert bench.main(["--method", "greedy", "-p", "pld.k=1"]) == 2
    assert "not one of --method" in capsys.readouterr().err
