"""The scheduler between the HTTP layer and decoding: a bounded queue and one worker thread.

The HTTP layer turns a request into a `Job` (one `Row` per choice), `submit`s it, and receives
`RowEvent`s through the job's `emit` callback (called from the worker thread). The worker drives the
public API only (`decodelab.stream` / `decodelab.generate_batch`):

- non-streaming rows of the same method, parameters, `max_tokens` and stop strings, from any number
  of waiting jobs, share one `generate_batch` call when the method is batched (up to `max_batch`
  rows), each row with its own seed — a row's output does not depend on the other rows in a batch
  (one `torch.Generator` per row, docs/ARCHITECTURE.md);
- every other row (streamed rows; unbatched methods) runs on its own through `decodelab.stream`,
  which yields text as it is committed and is closed as soon as its client disconnects, freeing the
  row's cache.

This is request-level batching, not continuous batching: a batch is formed when the worker becomes
free and runs to its end. `Scheduler` is the interface a continuous-batching engine (requests joining
and leaving the running batch between steps, cf. Orca, OSDI 2022, and vLLM's PagedAttention,
arXiv:2309.06180) replaces: `submit`, `waiting`, `running`, `start`, `stop`, and the same events.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..engine import Generation


class QueueFull(Exception):
    """The bounded queue holds `max_queue` jobs already (HTTP 429)."""


@dataclass
class Row:
    """One choice of a job: its prompt ids and seed (set for every sampled row, so it can join a batch)."""

    prompt: list[int]
    index: int
    seed: int | None


@dataclass
class RowEvent:
    """New text of one row; `generation` on the row's last event; `error` if the row failed."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    generation: Generation | None = None
    error: Exception | None = None


@dataclass
class Job:
    """A request as the worker sees it: token ids and already validated decodelab parameters."""

    method: str
    params: dict  # sampling + method parameters, passed to decodelab as **params
    max_new_tokens: int
    stop: list[str]
    rows: list[Row]
    stream: bool
    greedy: bool
    batched: bool  # the method supports one batched call over several prompts
    emit: Callable[[RowEvent], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.perf_counter)
    started: float | None = None  # when the worker took it
    first_token: float | None = None  # when its first token was emitted (set by the observer)
    last_token: dict[int, float] = field(default_factory=dict)  # row index → time of its last event

    def batch_key(self, max_length: int) -> tuple | None:
        """Jobs with equal keys may share one generate_batch call; None = never batched."""
        fits = max(len(r.prompt) for r in self.rows) + self.max_new_tokens <= max_length
        if self.stream or not self.batched or not fits:
            return None
        return self.method, json.dumps(self.params, sort_keys=True), self.max_new_tokens, tuple(self.stop)


class Scheduler(Protocol):
    """What the HTTP layer needs from whatever runs the jobs."""

    def submit(self, job: Job) -> None: ...  # raises QueueFull
    @property
    def waiting(self) -> int: ...
    @property
    def running(self) -> int: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


class BatchingScheduler:
    """A bounded FIFO of jobs and one worker thread that groups compatible rows into batches."""

    def __init__(self, lm, *, max_batch: int = 8, max_queue: int = 64, observer=None):
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be ≥ 1")
        self.lm, self.max_batch, self.max_queue = lm, max_batch, max_queue
        self.observer = observer  # metrics: on_tokens(...) and on_row_done(...); may be None
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._running = 0
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return self._running

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, job: Job) -> None:
        with self._cond:
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"the server's queue is full ({self.max_queue} requests waiting); retry later")
            self._queue.append(job)
            self._cond.notify()

    def start(self) -> None:
        """Start the worker (no-op while it runs; restarts it after `stop`, keeping the queue)."""
        with self._cond:
            if self.alive:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="decodelab-worker", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop after the current batch; waiting jobs stay queued."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                jobs = self._take()
                self._running = len(jobs)
            try:
                self._run(jobs)
            finally:
                with self._cond:
                    self._running = 0

    def _take(self) -> list[Job]:
        """The oldest job, plus waiting jobs that can share its batch (rows ≤ max_batch)."""
        first = self._queue.popleft()
        key = first.batch_key(self.lm.max_length)
        jobs, rows = [first], len(first.rows)
        if key is not None:
            for job in list(self._queue):
                if job.batch_key(self.lm.max_length) == key and rows + len(job.rows) <= self.max_batch:
                    self._queue.remove(job)
                    jobs.append(job)
                    rows += len(job.rows)
        now = time.perf_counter()
        for job in jobs:
            job.started = now
        return jobs

    def _run(self, jobs: list[Job]) -> None:
        live = [j for j in jobs if not j.cancelled.is_set()]
        if len(live) == 1 and (len(live[0].rows) == 1 or live[0].batch_key(self.lm.max_length) is None):
            for row in live[0].rows:
                self._stream_row(live[0], row)
        elif live:
            self._batch(live)

    def _emit(self, job: Job, event: RowEvent) -> None:
        if event.token_ids:
            now = time.perf_counter()
            previous = job.last_token.get(event.index)
            first = job.first_token is None
            job.first_token = job.first_token or now
            job.last_token[event.index] = now
            if self.observer is not None:
                self.observer.on_tokens(job, event, previous, now, first)
        if event.generation is not None and self.observer is not None:
            self.observer.on_row_done(job, event.generation)
        job.emit(event)

    def _stream_row(self, job: Job, row: Row) -> None:
        from .. import stream

        events = None
        try:
            events = stream(self.lm, row.prompt, method=job.method, max_new_tokens=job.max_new_tokens,
                            seed=row.seed, stop=job.stop, **job.params)
            for event in events:
                if job.cancelled.is_set():
                    return
                self._emit(job, RowEvent(row.index, event.text, event.token_ids, event.generation))
        except Exception as exc:  # noqa: BLE001 - reported to this request only; the worker goes on
            self._emit(job, RowEvent(row.index, error=exc))
        finally:
            if events is not None:
                events.close()  # frees the row's cache when the client went away

    def _batch(self, jobs: list[Job]) -> None:
        from .. import generate_batch

        pairs = [(job, row) for job in jobs for row in job.rows]
        first = jobs[0]
        try:
            seeds = None if first.greedy else [row.seed for _, row in pairs]  # one generator per row
            gens = generate_batch(self.lm, [row.prompt for _, row in pairs], method=first.method,
                                  max_new_tokens=first.max_new_tokens, seed=seeds, stop=first.stop, **first.params)
        except Exception:  # noqa: BLE001 - one failing request must not fail the others: run them alone
            for job, row in pairs:
                self._stream_row(job, row)
            return
        for (job, row), gen in zip(pairs, gens):
            self._emit(job, RowEvent(row.index, gen.text, gen.token_ids, gen))
