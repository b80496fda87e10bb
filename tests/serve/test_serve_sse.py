"""The streamed path (serve/sse.py): chunk templates byte-identical to the full JSON encoding, events from the
worker delivered once per flush and all together, and one flush per engine step."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from urllib.parse import urlsplit

import pytest

import decodelab
from decodelab.serve.app import _ChatShape, _CompletionShape
from decodelab.serve.scheduler import ContinuousScheduler, Job, Row, RowEvent
from decodelab.serve.sse import _MARK, Chunks, EventPipe, Sink

TRICKY = ["a", " ", "\"quoted\" and 'single'", "back\\slash", "line\nbreak\r\n\ttab", "\u00e9t\u00e9 \u4e2d\u6587",
          "emoji \U0001f600 and a lone \ud800 surrogate", "\x00\x1f\x7f control", "</script>", "{\"json\": [1, 2]}",
          "\u2028\u2029", _MARK, "data: [DONE]\n\n", "\ufffd"]
HEADS = [{"id": "cmpl-0123", "created": 1700000000, "model": "builtin:pyco"},
         {"id": "chatcmpl-x", "created": 0, "model": "caf\u00e9/\"m\"\n"}]


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("shape", [_CompletionShape(None, 1), _CompletionShape(["echo "], 2), _ChatShape()])
def test_text_template_equals_the_full_encoding(head, shape):
    chunks = Chunks(head, shape)
    for index in (0, 1, 3):
        for text in TRICKY:
            fast = chunks.text(index, text)
            assert fast == chunks.line([shape.choice(index, text, None)])
            choice = json.loads(fast.removeprefix("data: "))["choices"][0]
            assert fast.endswith("\n\n") and choice.get("text", choice.get("delta", {}).get("content")) == text


def test_a_model_name_holding_the_mark_falls_back_to_the_full_encoding():
    chunks = Chunks({"id": "x", "created": 1, "model": _MARK}, _CompletionShape(None, 1))
    assert chunks.text(0, "hi") == chunks.line([_CompletionShape(None, 1).choice(0, "hi", None)])


class _RecordingLoop:
    """Stands in for an event loop: records what the pipe asks it to run."""

    def __init__(self):
        self.calls = []

    def call_soon_threadsafe(self, fn, *args):
        self.calls.append((fn, args))


def test_a_flush_wakes_each_loop_once_for_all_its_sinks():
    pipe, loop = EventPipe(), _RecordingLoop()
    a, b = Sink(pipe, loop), Sink(pipe, loop)
    for i in range(3):
        a.put(RowEvent(0, f"a{i}"))
    b.put(RowEvent(0, "b0"))
    assert loop.calls == []  # nothing reaches the loop before the flush
    pipe.flush()
    assert len(loop.calls) == 1 and loop.calls[0][1][0] == [a, b]
    pipe.flush()
    assert len(loop.calls) == 1  # nothing new: no wake-up


def test_events_put_from_a_thread_arrive_in_order_and_together():
    async def main():
        pipe = EventPipe()
        sink = pipe.sink()
        got: list[list[str]] = []

        def worker():
            for step in range(50):
                for k in range(step % 3 + 1):  # several events before one flush
                    sink.put(RowEvent(0, f"{step}.{k}"))
                pipe.flush()

        thread = threading.Thread(target=worker)
        thread.start()
        while sum(map(len, got)) < sum(s % 3 + 1 for s in range(50)):
            got.append([e.text for e in await asyncio.wait_for(sink.get(), 10)])
        thread.join()
        return got

    got = asyncio.run(main())
    flat = [t for batch in got for t in batch]
    assert flat == [f"{s}.{k}" for s in range(50) for k in range(s % 3 + 1)]
    assert all(batch for batch in got)


def test_a_step_of_several_rows_is_one_flush(served_lm):
    events, flushes = [], []
    scheduler = ContinuousScheduler(served_lm, max_batch=4, flush=lambda: flushes.append(len(events)))
    rows = [Row(served_lm.encode(p), i, None) for i, p in enumerate(["def f(x):", "hello", "a"])]
    done = threading.Event()

    def emit(event):
        events.append(event)
        if sum(e.generation is not None for e in events) == len(rows):
            done.set()

    scheduler.submit(Job("greedy", {}, 12, [], rows, True, True, True, emit=emit))
    scheduler.start()
    assert done.wait(60)
    scheduler.stop()
    assert flushes[-1] == len(events)  # every event was followed by a flush
    assert len(flushes) < len(events)  # … shared by the rows of a step
    for row in rows:
        text = "".join(e.text for e in events if e.index == row.index)
        assert text == decodelab.generate(served_lm, row.prompt, max_new_tokens=12).text


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": ["\u00e9\"x\n", "def f(x):"], "n": 2, "seed": 3, "temperature": 1.5,
                         "max_tokens": 24}),
    ("/v1/completions", {"prompt": "\"q\"\n", "max_tokens": 16, "logprobs": 2}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "h\u00e9llo \"you\"\n"}], "max_tokens": 24,
                              "temperature": 2.0, "seed": 1}),
])
def test_every_streamed_chunk_is_its_objects_json(live, path, body):
    """On the wire each event is exactly `json.dumps` of the chunk object (template or not), the text pieces
    make the non-streamed text, and the usage chunk closes the stream."""
    url, _ = live
    raw = _post(url, path, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert raw.endswith(b"\n\ndata: [DONE]\n\n")
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n")[:-2]]
    chunks = [json.loads(e) for e in events]
    assert [json.dumps(c).encode() for c in chunks] == events
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    raw_whole = _post(url, path, body)
    whole = json.loads(raw_whole)  # the non-streamed body: FastAPI's compact JSON of plain types, as before
    assert json.dumps(whole, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode() == raw_whole
    for choice in whole["choices"]:
        pieces = [c["choices"][0] for c in chunks[:-1] if c["choices"] and c["choices"][0]["index"] == choice["index"]]
        key = "text" if "text" in choice else "content"
        streamed = "".join(p.get("text") or p.get("delta", {}).get("content") or "" for p in pieces)
        assert streamed == (choice.get("text") if key == "text" else choice["message"]["content"])


def _post(url: str, path: str, body: dict) -> bytes:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    raw = resp.read()
    conn.close()
    return raw
