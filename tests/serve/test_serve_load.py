"""A bounded load test on loopback: concurrent streaming and plain clients mixing methods, grammars and
token healing, some of them disconnecting mid-stream. Every completed response equals its in-process reference, the token
counters add up, and the server is idle and healthy afterwards."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

import decodelab
from decodelab.serve import create_app

from serve_utils import live_server

httpx2 = pytest.importorskip("httpx2")

PROMPTS = ["def f(x):", "hello world", "abcabcabcabc", "import os\n", "for i in range(10):\n", "x = [0] * 8\n"]
REGEX = r"(yes|no), [0-9]{2}"
METHODS = [("greedy", {}, {}), ("pld", {"num_draft_tokens": 4}, {}), ("jacobi", {"block_size": 4}, {}),
           ("sample", {}, {"temperature": 5.0, "seed": 9}),
           ("greedy", {}, {"structured_outputs": {"regex": REGEX}}), ("pld", {}, {"token_healing": True}),
           ("sample", {}, {"temperature": 2.0, "seed": 3, "structured_outputs": {"regex": REGEX}})]
CLIENTS = 16


def _request(i: int) -> dict:
    method, own, sampling = METHODS[i % len(METHODS)]
    return {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 12, "method": method, "method_params": own,
            **sampling, "stream": i % 3 == 0, "stream_options": {"include_usage": True} if i % 3 == 0 else None}


def _client(url: str, i: int):
    """(request index, token ids, completion tokens) — or None for a client that hangs up early."""
    body = {k: v for k, v in _request(i).items() if v is not None}
    if not body["stream"]:
        r = httpx2.post(url + "/v1/completions", json=body, timeout=120).json()
        return i, r["decodelab"]["choices"][0]["token_ids"], r["usage"]["completion_tokens"]
    with httpx2.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
        events = []
        for line in r.iter_lines():
            if i % 6 == 0 and events:
                return None  # hang up after the first event
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
    last = events[-1]
    return i, last["decodelab"]["choices"][0]["token_ids"], last["usage"]["completion_tokens"]


def _metric(url: str, name: str) -> float:
    text = httpx2.get(url + "/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_concurrent_mixed_clients(served_lm):
    with live_server(create_app(served_lm, max_batch=4, max_queue=CLIENTS, max_tokens=16)) as url:
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(lambda i: _client(url, i), range(CLIENTS)))
        deadline = time.monotonic() + 60
        while _metric(url, "decodelab:request_success_total") < CLIENTS:  # aborted ones are counted too
            assert time.monotonic() < deadline, "some request never finished"
            time.sleep(0.05)
        assert httpx2.get(url + "/health").status_code == 200
        assert _metric(url, "decodelab:num_requests_running") == 0 == _metric(url, "decodelab:num_requests_waiting")
        generated = _metric(url, "decodelab:generation_tokens_total")
    done = [r for r in results if r is not None]
    assert len(done) == CLIENTS - 3
    for i, token_ids, completion_tokens in done:
        req = _request(i)
        params = {**req["method_params"], **{k: req[k] for k in ("temperature", "seed", "token_healing") if k in req}}
        if "structured_outputs" in req:
            params["constraint"] = req["structured_outputs"]
        ref = decodelab.generate(served_lm, req["prompt"], method=req["method"], max_new_tokens=12, **params)
        assert token_ids == ref.token_ids, req
        assert completion_tokens == len(ref.token_ids)
    finished = sum(c for _, _, c in done)
    assert finished <= generated <= finished + 3 * 12  # plus what the three hung-up clients got
