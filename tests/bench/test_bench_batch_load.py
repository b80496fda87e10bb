"""Bench at batch > 1, on both backends, and the machine-load record (bench/machine.py)."""

import json

import jsonschema
import pytest

from decodelab.bench import machine
from decodelab.bench.report import SCHEMA
from decodelab.cli import main


@pytest.mark.parametrize("backend", ["native", "transformers"])
def test_batched_bench_is_exact_and_records_load(model_dir, tmp_path, capsys, backend):
    out = tmp_path / "b"
    rc = main(["bench", "--model", str(model_dir), "--suite", "quick", "--methods", "greedy,pld,lookahead",
               "--batch-size", "3", "--repeats", "1", "--max-new-tokens", "16", "--backend", backend,
               "--out", str(out), "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    results = json.loads((out / "results.json").read_text())
    jsonschema.validate(results, SCHEMA)
    assert results["config"]["batch_size"] == 3 and results["machine"]["backend"] == backend
    assert {r["batch_size"] for r in results["records"]} <= {1, 2, 3} and max(r["batch_size"] for r in results["records"]) == 3
    assert {r["method"] for r in results["records"] if r["method"].startswith("hf:")} == {"hf:greedy"}  # batched peer
    agg = {a["method"]: a for a in results["aggregates"]}
    assert agg["pld"]["exact"] is True and agg["lookahead"]["exact"] is True
    load = results["machine"]["load"]
    assert set(load) >= {"before", "after", "during_others_cpu_share", "busy", "torch_threads"}
    assert "Machine load:" in (out / "report.md").read_text()


def test_others_share_counts_only_other_processes():
    a = machine.CpuSample(t=0.0, busy=0, total=0, own=0.0)
    hz = __import__("os").sysconf("SC_CLK_TCK")
    # 2 cores × 1 s = 2 s of capacity; 1.5 s busy, 0.5 s of it ours → others used 1 s = 50 %
    b = machine.CpuSample(t=1.0, busy=int(1.5 * hz), total=int(2 * hz), own=0.5)
    assert machine.others_share(a, b) == pytest.approx(0.5, abs=0.01)
    quiet = machine.report({"load_avg_1m": 0.1, "others_cpu_share": 0.01}, 0.02, {"load_avg_1m": 0.2, "others_cpu_share": 0.0})
    busy = machine.report({"load_avg_1m": 0.1, "others_cpu_share": 0.5}, 0.02, {"load_avg_1m": 0.2, "others_cpu_share": 0.0})
    assert not quiet["busy"] and machine.warning(quiet) is None
    assert busy["busy"] and "busy" in machine.warning(busy)
