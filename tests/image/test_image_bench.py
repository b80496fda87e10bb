"""The shared bench's `digits` suite: `decodelab bench --suite digits` runs the image bench."""

import json

import pytest

from decodelab.cli import main


def test_bench_digits_suite(tmp_path, capsys):
    rc = main(["bench", "--suite", "digits", "--methods", "nar", "--limit", "1", "--out", str(tmp_path), "--json"])
    assert rc in (0, None)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["label"] for r in out["rows"]] == ["raster", "raster (2nd run)", "nar"]
    nar = out["rows"][-1]
    assert nar["forward_passes"] == 15 and out["rows"][0]["forward_passes"] == 64  # 2n-1 on 8×8
    report = json.loads((tmp_path / "bench-8.json").read_text())
    assert report["per_class"] == 1 and report["command"].startswith("decodelab bench --suite digits")
    assert (tmp_path / "samples-8.png").stat().st_size > 0


@pytest.mark.parametrize("args,message", [
    (["--suite", "digits,code"], "runs alone"),
    (["--suite", "digits", "-p", "top_k=3"], "cfg_scale"),
    (["--suite", "digits", "--methods", "speculative"], "unknown image method"),
    (["--suite", "digits", "--limit", "0"], "images per class"),
])
def test_bench_digits_suite_refuses_bad_input(tmp_path, capsys, args, message):
    assert main(["bench", *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_bench_list_names_the_digits_suite(capsys):
    main(["bench", "--list"])
    assert "suite  digits" in capsys.readouterr().out
