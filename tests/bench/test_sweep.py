"""`bench --batch-size 1,2,3`: one run per batch size and a 2-D table; the batched transformers peer."""

import json

from decodelab.bench.peers import hf_generate_batch
from decodelab.cli import main


def test_batch_sweep_table_and_batched_peer(model_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    rc = main(["bench", "--model", str(model_dir), "--suite", "quick", "--methods", "greedy,pld", "--repeats", "1",
               "--max-new-tokens", "6", "--limit", "3", "--batch-size", "1,3", "--out", str(out), "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    summary = json.loads(cap.out.strip().splitlines()[-1])
    assert summary["batch_sizes"] == [1, 3] and json.loads((out / "sweep.json").read_text()) == summary
    for size in (1, 3):
        table = summary["by_batch_size"][str(size)]["methods"]
        assert {"greedy", "pld", "hf:greedy"} <= set(table)
        assert table["greedy"]["vs_greedy"] == 1.0 and table["pld"]["exact"] and table["hf:greedy"]["exact"]
        results = json.loads((out / f"batch-{size}" / "results.json").read_text())
        assert results["config"]["batch_size"] == size
        assert all(r["batch_size"] == size for r in results["records"] if "batch_size" in r)
    assert "hf:pld" not in summary["by_batch_size"]["3"]["methods"]  # transformers' prompt lookup refuses batches
    assert "| pld |" in (out / "sweep.md").read_text()


def test_bad_batch_size_is_one_line(model_dir, tmp_path, capsys):
    for bad in ("0", "2,x", ""):
        assert main(["bench", "--model", str(model_dir), "--batch-size", bad, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "--batch-size" in err and len(err.strip().splitlines()) == 1


def test_batched_peer_rows_equal_each_row_alone(model_dir):
    import decodelab

    lm = decodelab.load(str(model_dir))
    rows = [lm.encode(p) for p in ("def f(x):\n    return", "x", "import os")]
    batched = hf_generate_batch(lm, rows, 7)
    for row, got in zip(rows, batched):
        assert got == decodelab.generate(lm, row, max_new_tokens=7).token_ids
