"""The HTTP app's behaviour around generation: readiness, limits, errors, metrics, auth-free routes."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import decodelab
from decodelab.serve import create_app
from decodelab.serve.scheduler import Job, Row


def _metrics(client) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics: (name, sorted labels) → value."""
    text = client.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _total(samples: dict, name: str, **labels) -> float:
    return sum(v for (n, lab), v in samples.items() if n == name and labels.items() <= dict(lab).items())


def test_not_ready_is_503_in_openai_error_shape():
    with TestClient(create_app(None)) as client:
        assert client.get("/health").status_code == 503
        r = client.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 503
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert client.get("/openapi.json").status_code == 200


def test_ready_health_and_models(served_lm):
    with TestClient(create_app(served_lm, model_name="m")) as client:
        assert client.get("/health").json() == {"status": "ok"}
        card = client.get("/v1/models").json()["data"][0]
        assert card["id"] == "m" and card["max_model_len"] == served_lm.max_length
        causal = {n for n, m in decodelab.methods().items() if getattr(m, "kind", "causal") == "causal"}
        assert set(card["methods"]) == causal and "greedy" in causal
        assert all("draft" not in m["params"] for m in card["methods"].values())


def test_queue_full_is_429_and_recovers(served_lm):
    app = create_app(served_lm, max_queue=1, max_tokens=4)
    scheduler = app.state.server.scheduler
    gate, held = threading.Event(), threading.Event()

    def block(event):  # the worker thread calls this: it holds the worker until the gate opens
        held.set()
        gate.wait(30)

    def job(emit):
        return Job("greedy", {}, 2, [], [Row([1, 2, 3], 0, None)], stream=True, greedy=True, batched=True,
                   emit=emit)

    with TestClient(app) as client:
        scheduler.submit(job(block))
        assert held.wait(30)  # the worker is busy with the first job
        scheduler.submit(job(lambda ev: None))  # and one job waits: the queue is full
        r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        assert _total(_metrics(client), "decodelab:num_requests_waiting") == 1
        gate.set()
        deadline = time.monotonic() + 30
        while scheduler.waiting:  # the worker frees the queue once it is released
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200


@pytest.mark.parametrize("body,status,needle", [
    (b"{not json", 400, "not valid JSON"),
    (b'{"max_tokens": 3}', 400, "prompt"),
    (b'{"prompt": "x", "stream_options": {"include_usage": true, "continuous": 1}}', 400, "continuous"),
    (b'{"prompt": "x", "temperature": -1}', 400, "temperature"),
    (b'{"prompt": [999999]}', 400, "out of range"),
    (b'{"prompt": []}', 400, "empty"),
    (b'{"prompt": "x", "logprobs": 1, "stream": true, "method": "beam"}', 400, "logprobs"),
    (b'{"prompt": "x", "logprobs": 6}', 400, "logprobs"),
    (b'{"prompt": ["a", "b", "c", "d", "e"], "n": 16}', 400, "at most 64"),
    (b'{"prompt": "x", "stop": [""]}', 400, "stop"),
    (b'{"prompt": "x", "structured_outputs": {"regex": "a", "choice": ["b"]}}', 400, "exactly one"),
    (b'{"prompt": "' + b"a" * 3000 + b'"}', 413, "larger than"),
])
def test_bad_requests_are_one_line_errors(served_lm, body, status, needle):
    with TestClient(create_app(served_lm, max_body_bytes=2048, max_tokens=4)) as client:
        r = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        message = r.json()["error"]["message"]
        assert needle in message and "\n" not in message and "Traceback" not in message
        assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200


def test_unknown_route_and_method_keep_the_error_shape(served_lm):
    with TestClient(create_app(served_lm)) as client:
        assert client.get("/v1/nothing").json()["error"]["code"] == 404
        assert client.get("/v1/completions").status_code == 405


def test_metrics_add_up(served_lm):
    """Token counters equal the usage the responses reported; one histogram sample per request."""
    with TestClient(create_app(served_lm, model_name="m", max_tokens=16)) as client:
        bodies = [{"prompt": "abcabcabcabc", "max_tokens": 12, "method": "pld"},
                  {"prompt": "hello", "max_tokens": 5, "n": 2, "temperature": 5.0, "seed": 1},
                  {"prompt": ["one", "two"], "max_tokens": 3}]
        responses = [client.post("/v1/completions", json=b).json() for b in bodies]
        stream = client.post("/v1/completions", json={"prompt": "s", "max_tokens": 4, "stream": True})
        assert stream.text.rstrip().endswith("data: [DONE]")
        m = _metrics(client)
    usage = [r["usage"] for r in responses]
    assert _total(m, "decodelab:generation_tokens_total") == sum(u["completion_tokens"] for u in usage) + 4
    assert _total(m, "decodelab:prompt_tokens_total") == sum(u["prompt_tokens"] for u in usage) + 1
    assert _total(m, "decodelab:request_success_total") == 1 + 2 + 2 + 1  # one per choice
    assert _total(m, "decodelab:e2e_request_latency_seconds_count") == 4
    assert _total(m, "decodelab:time_to_first_token_seconds_count") == 4
    assert _total(m, "decodelab:inter_token_latency_seconds_count", method="greedy") >= 3  # the stream's gaps
    pld = [c["stats"] for c in responses[0]["decodelab"]["choices"]]
    assert _total(m, "decodelab:spec_decode_num_draft_tokens_total", method="pld") == sum(s["drafted_tokens"] for s in pld)
    assert _total(m, "decodelab:spec_decode_num_accepted_tokens_total", method="pld") == sum(
        s["accepted_tokens"] for s in pld)
    assert sum(s["drafted_tokens"] for s in pld) > 0  # the repeated prompt does give the lookup drafts
    assert _total(m, "decodelab:num_requests_running") == 0 and _total(m, "decodelab:num_requests_waiting") == 0


def test_draft_model_comes_from_the_server(served_lm, tmp_path):
    """`draft=` is a server setting (a directory here); speculative through it is lossless."""
    from fakes import tiny_lm

    draft = tiny_lm("llama", seed=3)
    draft.model.save_pretrained(tmp_path)
    draft.tokenizer.save_pretrained(tmp_path)
    ref = decodelab.generate(served_lm, "def f(x):", max_new_tokens=10)
    with TestClient(create_app(served_lm, draft=str(tmp_path), max_tokens=16)) as client:
        r = client.post("/v1/completions", json={"prompt": "def f(x):", "max_tokens": 10, "method": "speculative",
                                                 "method_params": {"num_draft_tokens": 3}}).json()
    choice = r["decodelab"]["choices"][0]
    assert choice["token_ids"] == ref.token_ids
    assert choice["stats"]["draft_forward_passes"] > 0 and choice["stats"]["drafted_tokens"] > 0


def test_tiny_temperature_is_greedy_as_in_vllm(served_lm):
    """0 < temperature < 1e-5 is greedy (vLLM's _SAMPLING_EPS), not an overflow into NaN probabilities."""
    ref = decodelab.generate(served_lm, "hello", max_new_tokens=6)
    with TestClient(create_app(served_lm, max_tokens=8)) as client:
        r = client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 6, "method": "sample",
                                                 "temperature": 1e-300, "seed": 3})
    assert r.status_code == 200, r.text
    assert r.json()["decodelab"]["choices"][0]["token_ids"] == ref.token_ids


def test_a_stream_that_fails_before_its_first_token_is_a_400(served_lm):
    """The worker's error (no draft model for speculative here) arrives before the stream's headers."""
    with TestClient(create_app(served_lm, max_tokens=8)) as client:
        r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 4, "stream": True,
                                                 "method": "speculative"})
        assert r.status_code == 400 and "draft" in r.json()["error"]["message"]
        assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "stream": True}).status_code == 200


def test_chunked_body_over_the_limit_is_413(served_lm):
    def chunks():
        for _ in range(8):
            yield b" " * 512

    with TestClient(create_app(served_lm, max_body_bytes=2048, max_tokens=4)) as client:
        r = client.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "larger than 2048" in r.json()["error"]["message"]


def test_echo_and_streamed_choices(served_lm):
    """echo prepends the prompt; a stream with n=2 carries both choices, each equal to its non-streamed text."""
    body = {"prompt": "hello", "max_tokens": 5, "n": 2, "temperature": 5.0, "seed": 11}
    with TestClient(create_app(served_lm, max_tokens=8)) as client:
        plain = client.post("/v1/completions", json=body).json()
        echoed = client.post("/v1/completions", json={**body, "echo": True}).json()
        stream = client.post("/v1/completions", json={**body, "stream": True}).text
    texts = [c["text"] for c in plain["choices"]]
    assert [c["text"] for c in echoed["choices"]] == ["hello" + t for t in texts]
    pieces = ["", ""]
    for line in stream.splitlines():
        if line.startswith("data: {"):
            for c in json.loads(line[6:])["choices"]:
                pieces[c["index"]] += c["text"]
    assert pieces == texts


@pytest.mark.parametrize("body,message", [
    ({"prompt": "x", "stop": [""]}, "stop.0: String should have at least 1 character"),
    ({"prompt": 5}, "prompt: Input should be a valid string or a valid list"),
    ({"prompt": "x", "n": 0}, "n: Input should be greater than or equal to 1"),
])
def test_union_field_errors_name_the_real_problem(served_lm, body, message):
    with TestClient(create_app(served_lm, max_tokens=4)) as client:
        assert client.post("/v1/completions", json=body).json()["error"]["message"] == message


def test_checked_parameters_are_remembered_and_bad_ones_never(served_lm):
    from decodelab.serve.errors import ApiError
    from decodelab.serve.service import CHECKED_CACHE

    server = create_app(served_lm).state.server
    first = server._check_params("sample", {"temperature": 0.7, "top_p": 0.9})
    assert first["temperature"] == 0.7 and first["top_p"] == 0.9
    assert server._check_params("sample", {"top_p": 0.9, "temperature": 0.7}) is first  # same set, any key order
    assert server._check_params("sample", {"temperature": 0.8})["temperature"] == 0.8
    for _ in range(2):  # a bad value is a 400 every time
        with pytest.raises(ApiError, match="top_p"):
            server._check_params("sample", {"temperature": 0.7, "top_p": 7.0})
    for i in range(CHECKED_CACHE + 5):
        server._check_params("sample", {"temperature": 0.5 + i / 1000})
    assert len(server._checked) == CHECKED_CACHE
