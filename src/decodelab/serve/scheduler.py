"""The scheduler between the HTTP layer and decoding: a bounded queue and one worker thread.

The HTTP layer turns a request into a `Job` (one `Row` per choice), `submit`s it, and receives
`RowEvent`s through the job's `emit` callback (called from the worker thread); the scheduler's `flush`
hook is called once a step's events (or a lone event) are all emitted, so the HTTP layer can wake its
event loop once per step (serve/sse.py). The worker drives the
public API only (`decodelab.stream` / `decodelab.generate_batch`):

- non-streaming rows of the same method, parameters, `max_tokens` and stop strings, from any number
  of waiting jobs, share one `generate_batch` call when the method is batched (up to `max_batch`
  rows), each row with its own seed — a row's output does not depend on the other rows in a batch
  (one `torch.Generator` per row, docs/ARCHITECTURE.md);
- every other row (streamed rows; unbatched methods) runs on its own through `decodelab.stream`,
  which yields text as it is committed and is closed as soon as its client disconnects, freeing the
  row's cache.

`BatchingScheduler` is request-level batching: a batch is formed when the worker becomes free and runs
to its end. `ContinuousScheduler` (the server's default) is continuous batching (Orca, Yu et al., OSDI
2022): rows of every request whose method takes joining rows (`MethodInfo.continuous`: greedy, sample,
every speculative method) join a running `decodelab.Engine` between two steps and leave it as soon as
they finish or their client goes away; streamed and non-streamed rows share the batch, and so do rows
with different sampling parameters (each row is drawn and verified under its own), with different
grammars or token healing (each row masked by its own matcher; a constrained greedy or sample row joins an
engine whose loop feeds grammar-forced tokens at once, as `generate` does) and, once requests of
different methods overlap, rows of different methods (a mixed Engine: each row drafts with its own
method's proposer, one target forward per step verifies them all). Both implement
`Scheduler`: `submit`, `waiting`, `running`, `start`, `stop`, and the same events.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..constraints import compile_constraint
from ..engine import ROW_OPTIONS, Generation


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
    logprobs: list[float] | None = None  # streamed rows that asked: these tokens' logprobs
    top_logprobs: list | None = None

    def then(self, later: "RowEvent") -> "RowEvent":
        """This event and the row's next one as one (held back by the stream interval)."""
        def joined(a, b):
            return None if a is None and b is None else (a or []) + (b or [])
        return RowEvent(self.index, self.text + later.text, self.token_ids + later.token_ids, later.generation,
                        later.error, joined(self.logprobs, later.logprobs), joined(self.top_logprobs, later.top_logprobs))


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
    logprobs: int | None = None  # alternatives per token when the request asked for logprobs
    held: dict[int, RowEvent] = field(default_factory=dict)  # streamed rows' text not sent yet (stream interval)

    def batch_key(self, max_length: int) -> tuple | None:
        """Jobs with equal keys may share one generate_batch call; None = never batched."""
        fits = max(len(r.prompt) for r in self.rows) + self.max_new_tokens <= max_length
        if self.stream or not self.batched or not fits:
            return None
        return (self.method, json.dumps(self.params, sort_keys=True), self.max_new_tokens, tuple(self.stop),
                self.logprobs)


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

    def __init__(self, lm, *, max_batch: int = 8, max_queue: int = 64, observer=None, stream_interval: int = 1,
                 flush: Callable[[], None] | None = None):
        if max_batch < 1 or max_queue < 1 or stream_interval < 1:
            raise ValueError("max_batch, max_queue and stream_interval must be ≥ 1")
        self.lm, self.max_batch, self.max_queue = lm, max_batch, max_queue
        self.stream_interval = stream_interval  # a streamed row's text goes out every N tokens (and at its end)
        self.observer = observer  # metrics: on_tokens(...) and on_row_done(...); may be None
        self.flush = flush  # called once the events of a step (or a lone event) have been emitted; may be None
        self._holding = False  # inside a step's events: flush once at their end
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
        if not job.stream and event.generation is None and event.error is None:
            return  # a non-streamed request reads only each row's end: no wake-up per token
        if self.stream_interval > 1:
            event = job.held.pop(event.index).then(event) if event.index in job.held else event
            if event.generation is None and event.error is None and len(event.token_ids) < self.stream_interval:
                job.held[event.index] = event  # sent with the next tokens of this row
                return
        job.emit(event)
        if not self._holding and self.flush is not None:
            self.flush()

    def _stream_row(self, job: Job, row: Row) -> None:
        from .. import stream

        events = None
        try:
            events = stream(self.lm, row.prompt, method=job.method, max_new_tokens=job.max_new_tokens,
                            seed=row.seed, stop=job.stop, logprobs=job.logprobs, **job.params)
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
                                  max_new_tokens=first.max_new_tokens, seed=seeds, stop=first.stop,
                                  logprobs=first.logprobs, **first.params)
        except Exception:  # noqa: BLE001 - one failing request must not fail the others: run them alone
            for job, row in pairs:
                self._stream_row(job, row)
            return
        for (job, row), gen in zip(pairs, gens):
            self._emit(job, RowEvent(row.index, gen.text, gen.token_ids, gen))


class ContinuousScheduler(BatchingScheduler):
    """Continuous batching: one `decodelab.Engine` per (method, method parameters), stepped in turn by the
    worker; each row brings its own sampling parameters (temperature, top-p, penalties …), grammar and
    token healing.

    Between two steps the worker admits waiting requests in arrival order while the live rows stay within
    `max_batch` (the oldest waits rather than being overtaken), cancels the rows of clients that went away,
    and runs a request that cannot join an engine (a search, meta or diffusion method) on its own. A
    failing engine fails only its own rows; the worker goes on.
    """

    def __init__(self, lm, *, max_batch: int = 8, max_queue: int = 64, observer=None, stream_interval: int = 1,
                 mix_methods: bool = True, flush: Callable[[], None] | None = None):
        super().__init__(lm, max_batch=max_batch, max_queue=max_queue, observer=observer,
                         stream_interval=stream_interval, flush=flush)
        self.mix_methods = mix_methods  # False: one engine per method, each stepped in turn (no mixed engine)
        self._engines: dict[tuple, object] = {}
        self._owners: dict[tuple, tuple[Job, Row]] = {}  # (engine key, engine row) → the job's row

    @property
    def running(self) -> int:
        return len({id(job) for job, _ in list(self._owners.values())}) + self._running

    def _continuous_key(self, job: Job) -> tuple | None:
        from ..engine import fast_forwards
        from ..methods import methods

        info = methods().get(job.method)
        if info is None or not info.continuous:
            return None
        own, _ = _split(job.params)  # rows with different sampling parameters or grammars share one engine
        key = job.method, json.dumps(own, sort_keys=True)
        if "constraint" in job.params and not fast_forwards(info, mixed=False):
            return key + (FAST_FORWARD,)  # a plain greedy / sample engine does not feed forced tokens
        return key

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._owners and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._owners:
                    return
                alone = None if self._stopping else self._admit()  # stopping: finish the rows in flight
            if alone is not None:
                self._running = 1
                try:
                    self._run([alone])
                finally:
                    self._running = 0
            self._cancel_gone()
            for key in list(self._engines):
                self._step(key)

    def _admit(self) -> Job | None:
        """Move waiting jobs into engines (caller holds the lock); return a job that must run alone."""
        live = len(self._owners)
        while self._queue:
            job = self._queue[0]
            key = self._continuous_key(job)
            if key is None:
                if self._owners:  # runs alone once the batch drains (the order of arrival is kept)
                    return None
                self._queue.popleft()
                job.started = time.perf_counter()
                return job
            if live + len(job.rows) > self.max_batch and live > 0:
                return None
            self._queue.popleft()
            job.started = time.perf_counter()
            if job.cancelled.is_set():
                continue
            try:
                own, sampling = _split(job.params)
                key, engine = self._engine_for(key, job.method, own)
                sampling.update({k: job.params[k] for k in ROW_OPTIONS if k in job.params})
                if "constraint" in sampling:  # compiled once for the request's rows (n > 1, several prompts)
                    sampling["constraint"] = compile_constraint(self.lm, sampling["constraint"])
                extra = {"method": job.method, **own} if key == MIXED else {}
                for row in job.rows:
                    b = engine.add(row.prompt, max_new_tokens=job.max_new_tokens, seed=row.seed, stop=job.stop,
                                   logprobs=job.logprobs, **sampling, **extra)
                    self._owners[(key, b)] = (job, row)
                live += len(job.rows)
            except Exception as exc:  # noqa: BLE001 - this request's input; the others go on
                self._fail(key, job, exc)
        return None

    def _engine_for(self, key: tuple, method: str, own: dict):
        """(key, engine) for a request: the mixed engine while one runs (rows of other engines finish where
        they are); else the running engine of its own method and parameters; else, when other methods'
        rows are running, a new mixed engine (one step then serves every method); else a new engine of
        its own (a batch of one method runs that method's own loop)."""
        from ..engine import Engine

        if self.mix_methods and MIXED not in self._engines and key not in self._engines and \
                any(e.busy for e in self._engines.values()):
            self._engines[MIXED] = Engine(self.lm, mixed=True)
        if MIXED in self._engines:
            return MIXED, self._engines[MIXED]
        if key not in self._engines:
            self._engines[key] = Engine(self.lm, method, mixed=FAST_FORWARD in key, **own)
        return key, self._engines[key]

    def _fail(self, key: tuple, job: Job, exc: Exception) -> None:
        engine = self._engines.get(key)
        for (k, b), (owner, _) in list(self._owners.items()):
            if owner is job:
                del self._owners[(k, b)]
                if engine is not None:
                    engine.cancel(b)
        for row in job.rows:
            self._emit(job, RowEvent(row.index, error=exc))

    def _cancel_gone(self) -> None:
        for (key, b), (job, _) in list(self._owners.items()):
            if job.cancelled.is_set():
                self._engines[key].cancel(b)
                del self._owners[(key, b)]

    def _step(self, key: tuple) -> None:
        engine = self._engines[key]
        if not engine.busy:
            engine.close()
            del self._engines[key]
            return
        try:
            events = engine.step()
        except Exception as exc:  # noqa: BLE001 - a bug or a model error fails this engine's rows only
            del self._engines[key]
            for (k, b), (job, row) in list(self._owners.items()):
                if k == key:
                    del self._owners[(k, b)]
                    self._emit(job, RowEvent(row.index, error=exc))
            return
        self._holding = True  # one wake-up of the event loop for the whole step (serve/sse.py)
        try:
            for event in events:
                owner = self._owners.get((key, event.row))
                if owner is None:
                    continue
                job, row = owner
                if event.generation is not None:
                    del self._owners[(key, event.row)]
                self._emit(job, RowEvent(row.index, event.text, event.token_ids, event.generation,
                                         logprobs=event.logprobs, top_logprobs=event.top_logprobs))
        finally:
            self._holding = False
            if self.flush is not None:
                self.flush()


MIXED = ("mixed",)  # the key of the engine whose rows bring their own methods (Engine(mixed=True))
# the last element of the key of a greedy / sample engine made to take constrained rows (a mixed Engine,
# whose loop feeds grammar-forced tokens at once, engine.fast_forwards)
FAST_FORWARD = "fast-forward"


def _split(params: dict) -> tuple[dict, dict]:
    """(the method's own parameters, the sampling parameters) of a request; its grammar and token healing,
    per row like sampling, are in neither (Engine.add takes them)."""
    from ..processors import SAMPLING_DEFAULTS

    return ({k: v for k, v in params.items() if k not in SAMPLING_DEFAULTS and k not in ROW_OPTIONS},
            {k: v for k, v in params.items() if k in SAMPLING_DEFAULTS})
