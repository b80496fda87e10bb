"""`decodelab serve` from the command line: argument errors, and one real server process on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import decodelab
from decodelab.cli import main


@pytest.mark.parametrize("argv,needle", [(["--max-queue", "0"], "--max-queue"), (["--port", "70000"], "--port"),
                                         (["--max-batch", "-1"], "--max-batch"),
                                         (["--stream-interval", "0"], "--stream-interval")])
def test_bad_flags_are_one_line_errors(capsys, argv, needle):
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_a_missing_event_loop_package_is_a_one_line_error(capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a))
    assert main(["serve", "--loop", "uvloop"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--loop uvloop needs the uvloop package" in err and len(err.splitlines()) == 1


def test_a_model_that_fails_to_load_stops_the_server_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "decodelab.cli", "serve", "--model", str(tmp_path / "nope"),
                             "--port", str(_free_port())], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "nope" in lines[0] and "Traceback" not in result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_serve_command_answers_like_generate():
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "decodelab.cli", "serve", "--port", str(port), "--max-tokens", "8",
                             "--api-key", "k"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if _get(url + "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        body = json.dumps({"prompt": "def f(x):", "max_tokens": 8}).encode()
        request = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json",
                                                                         "Authorization": "Bearer k"})
        with urllib.request.urlopen(request, timeout=60) as r:
            answer = json.loads(r.read())
        assert _get(url + "/v1/models")[0] == 401  # no key
    finally:
        proc.terminate()  # only the process this test started
        proc.wait(timeout=30)
    ref = decodelab.generate(decodelab.load(), "def f(x):", max_new_tokens=8)
    assert answer["model"] == "builtin:pyco"
    assert answer["choices"][0]["text"] == ref.text
    assert answer["decodelab"]["choices"][0]["token_ids"] == ref.token_ids
