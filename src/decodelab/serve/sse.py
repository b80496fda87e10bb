"""The streamed path's per-token work, kept small: events from the worker thread to the event loop, and
server-sent-event chunks as text.

On a small machine the model, the server's event loop and the client share the cores, so whatever a
streamed token costs beside the forward pass shows up in its latency (docs/SERVING.md, "The per-chunk
path"). Two pieces make that cost small without changing a byte of what a client receives:

- `EventPipe` / `Sink`: the worker appends a request's events to its sink (a deque, no event-loop call)
  and, once a step's events are all out, `EventPipe.flush` wakes each event loop once for every sink
  that got something — one thread-safe call per step, not one per row. The request's coroutine takes
  every event waiting in its sink at once (`Sink.get`), so a stream that fell behind catches up in one
  write holding several SSE events (still one event per step and row, as a fast reader gets them).
- `Chunks`: a chunk that carries only new text (every chunk of a stream but the first and the last,
  unless logprobs were asked) is a prebuilt template around `json.dumps(text)` — byte for byte the
  `json.dumps` of the whole chunk object (tests/serve/test_serve_sse.py), without building and encoding
  the dict for every token.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque

_MARK = "\ue000decodelab-text\ue000"  # stands for the text in a template; never in json.dumps output of real text
_MARK_JSON = json.dumps(_MARK)
_json_str = json.encoder.encode_basestring_ascii  # what json.dumps(str) returns, without its two Python calls


class Sink:
    """One request's events: `put` from the worker thread, `get` in the event loop."""

    __slots__ = ("_events", "_waiter", "_loop", "_pipe", "_dirty")

    def __init__(self, pipe: EventPipe, loop: asyncio.AbstractEventLoop):
        self._events: deque = deque()
        self._waiter: asyncio.Future | None = None
        self._loop, self._pipe, self._dirty = loop, pipe, False

    def put(self, event) -> None:
        """Queue an event (any thread); the loop hears of it at the pipe's next `flush`."""
        self._events.append(event)
        if not self._dirty:  # the event is in the deque before the flag is read: a wake-up never misses it
            self._dirty = True
            self._pipe.mark(self)

    def wake(self) -> None:
        """In the loop: let `get` return what has arrived."""
        self._dirty = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> list:
        """Every event waiting (at least one), oldest first."""
        events = self._events
        while not events:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return [events.popleft() for _ in range(len(events))]


class EventPipe:
    """Wakes event loops for the sinks that received events since the last `flush`."""

    def __init__(self):
        self._lock = threading.Lock()
        self._dirty: list[Sink] = []

    def sink(self) -> Sink:
        """A sink read by the running event loop."""
        return Sink(self, asyncio.get_running_loop())

    def mark(self, sink: Sink) -> None:
        with self._lock:
            self._dirty.append(sink)

    def flush(self) -> None:
        """One thread-safe call per event loop with sinks to wake (called by the worker after a step)."""
        with self._lock:
            dirty, self._dirty = self._dirty, []
        loops: dict = {}
        for sink in dirty:
            loops.setdefault(sink._loop, []).append(sink)
        for loop, sinks in loops.items():
            try:
                loop.call_soon_threadsafe(_wake_all, sinks)
            except RuntimeError:  # the loop has closed: nobody is reading these requests any more
                pass


def _wake_all(sinks: list[Sink]) -> None:
    for sink in sinks:
        sink.wake()


class Chunks:
    """One response's SSE lines: `data: {chunk}\\n\\n`, where chunk = `head` + object + choices (+ extras).

    `shape.choice(index, text, finish)` builds a choice (the completions or the chat shape, app.py)."""

    def __init__(self, head: dict, shape):
        self.head, self.shape = head, shape
        self._templates: dict[int, tuple[str, str] | None] = {}

    def line(self, choices: list[dict], **extra) -> str:
        """The chunk built and encoded in full."""
        return "data: " + json.dumps({**self.head, "object": self.shape.chunk_object, "choices": choices,
                                      **extra}) + "\n\n"

    def text(self, index: int, text: str) -> str:
        """The chunk of choice `index` carrying only `text` (non-empty; no finish reason, no logprobs) —
        equal to `line([shape.choice(index, text, None)])`."""
        if index not in self._templates:
            whole = self.line([self.shape.choice(index, _MARK, None)])
            before, mark, after = whole.partition(_MARK_JSON)
            ok = mark and _MARK_JSON not in after  # (a model name holding the mark: no template)
            self._templates[index] = (before, after) if ok else None
        template = self._templates[index]
        if template is None:
            return self.line([self.shape.choice(index, text, None)])
        return template[0] + _json_str(text) + template[1]
