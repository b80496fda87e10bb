"""The scheduler: grouping of greedy rows into one batch, isolation, and cancellation of a row."""

from __future__ import annotations

import re
import threading
import time

import pytest

import decodelab
from decodelab.serve.scheduler import BatchingScheduler, Job, QueueFull, Row

PROMPTS = ["def f(x):", "hello world", "a", "import os\n"]


def _job(lm, prompts, events, *, stream=False, greedy=True, params=None, max_new_tokens=8, method="greedy"):
    rows = [Row(lm.encode(p), i, 5 + i) for i, p in enumerate(prompts)]
    return Job(method, dict(params or {}), max_new_tokens, [], rows, stream, greedy,
               decodelab.methods()[method].batched, emit=events.append)


def _drain(scheduler, timeout=60):
    deadline = time.monotonic() + timeout
    while scheduler.waiting or scheduler.running:
        assert time.monotonic() < deadline, "worker did not finish"
        time.sleep(0.01)


def _finals(events):
    return {e.index: e.generation for e in events if e.generation is not None}


def test_greedy_jobs_share_one_batch_and_equal_generate(served_lm):
    scheduler = BatchingScheduler(served_lm, max_batch=8)
    jobs = [[] for _ in range(3)]
    for events, prompt in zip(jobs[:2], PROMPTS):
        scheduler.submit(_job(served_lm, [prompt], events))
    scheduler.submit(_job(served_lm, PROMPTS[2:], jobs[2]))  # one job with two prompts
    sampled = [[], []]
    for events, prompt in zip(sampled, ["hello", "abcabc"]):
        scheduler.submit(_job(served_lm, [prompt, prompt], events, greedy=False, params={"temperature": 5.0},
                              method="sample"))
    hot = []
    scheduler.submit(_job(served_lm, ["hello"], hot, greedy=False, params={"temperature": 9.0}, method="sample"))
    scheduler.start()  # all were waiting: 3 greedy jobs → one batch of 4 rows; 2 sampled jobs → one of 4
    _drain(scheduler)
    scheduler.stop()
    gens = [g for events in jobs for g in _finals(events).values()]
    assert [g.stats.batch_size for g in gens] == [4, 4, 4, 4]
    for g, prompt in zip(gens, PROMPTS):
        assert g.token_ids == decodelab.generate(served_lm, prompt, max_new_tokens=8).token_ids
    for events, prompt in zip(sampled, ["hello", "abcabc"]):  # row i of a job has seed 5 + i
        for i, g in sorted(_finals(events).items()):
            assert g.stats.batch_size == 4
            ref = decodelab.generate(served_lm, prompt, method="sample", max_new_tokens=8, seed=5 + i, temperature=5.0)
            assert g.token_ids == ref.token_ids
    assert [g.stats.batch_size for g in _finals(hot).values()] == [1]  # other parameters: not in that batch


def test_max_batch_and_max_queue_bound_the_work(served_lm):
    scheduler = BatchingScheduler(served_lm, max_batch=2, max_queue=3)
    logs = [[] for _ in range(3)]
    for events, prompt in zip(logs, PROMPTS):
        scheduler.submit(_job(served_lm, [prompt], events))
    try:
        scheduler.submit(_job(served_lm, ["x"], []))
        raise AssertionError("a fourth job fitted a queue of three")
    except QueueFull as exc:
        assert "queue is full" in str(exc)
    scheduler.start()
    _drain(scheduler)
    scheduler.stop()
    assert sorted(g.stats.batch_size for events in logs for g in _finals(events).values()) == [1, 2, 2]


def test_a_failing_job_does_not_affect_the_next(served_lm):
    scheduler = BatchingScheduler(served_lm)
    bad, good = [], []
    scheduler.submit(_job(served_lm, ["x"], bad, params={"no_such_param": 1}))
    scheduler.submit(_job(served_lm, ["x"], good))
    scheduler.start()
    _drain(scheduler)
    scheduler.stop()
    assert len(bad) == 1 and isinstance(bad[0].error, ValueError)
    assert _finals(good)[0].token_ids == decodelab.generate(served_lm, "x", max_new_tokens=8).token_ids


def test_cancelled_row_stops_at_the_next_step(served_lm):
    """A streamed row whose client went away is closed after its first event, far before max_new_tokens."""
    scheduler = BatchingScheduler(served_lm)
    events = []
    job = _job(served_lm, ["def f(x):"], events, stream=True, max_new_tokens=200)
    job.emit = lambda ev: (events.append(ev), job.cancelled.set())
    done = threading.Event()
    after = _job(served_lm, ["x"], [], stream=True)
    after.emit = lambda ev: done.set() if ev.generation is not None else None
    scheduler.start()
    scheduler.submit(job)
    scheduler.submit(after)
    assert done.wait(60)  # the worker went on to the next job
    scheduler.stop()
    assert len(events) == 1 and events[0].generation is None
    assert sum(len(e.token_ids) for e in events) < 200


def test_continuous_rows_join_a_running_batch_and_leave_first(served_lm):
    """The server's scheduler: a short request that arrives while a long one runs joins its batch between
    two steps and finishes first; both equal generate() alone (greedy, and sampled with the row's seed)."""
    from decodelab.serve.scheduler import ContinuousScheduler

    scheduler = ContinuousScheduler(served_lm, max_batch=8)
    scheduler.start()
    for method, params in (("greedy", {}), ("sample", {"temperature": 2.0})):
        long, short, order = [], [], []

        def note(events, name, order=order):
            def emit(event):
                events.append(event)
                if event.generation is not None:
                    order.append(name)
            return emit
        greedy = method == "greedy"
        long_job = _job(served_lm, ["def f(x):"], long, stream=True, greedy=greedy, params=params,
                        max_new_tokens=48, method=method)
        long_job.emit = note(long, "long")
        scheduler.submit(long_job)
        deadline = time.monotonic() + 60
        while not long:  # the long row is generating
            assert time.monotonic() < deadline
            time.sleep(0.001)
        short_job = _job(served_lm, ["hello world"], short, greedy=greedy, params=params, max_new_tokens=3,
                         method=method)
        short_job.emit = note(short, "short")
        scheduler.submit(short_job)
        _drain(scheduler)
        assert order == ["short", "long"]
        assert _finals(short)[0].stats.batch_size == 2  # it ran beside the long row
        for events, prompt, n in ((long, "def f(x):", 48), (short, "hello world", 3)):
            ref = decodelab.generate(served_lm, prompt, method=method, max_new_tokens=n, seed=5, **params)
            assert _finals(events)[0].token_ids == ref.token_ids and _finals(events)[0].text == ref.text
        assert "".join(e.text for e in long) == _finals(long)[0].text  # streamed: the pieces make the text
        assert len(short) == 1  # not streamed: one event, the row's end (no wake-up per token)
    scheduler.stop()


def test_continuous_rows_with_different_temperatures_share_one_batch(served_lm):
    from decodelab.serve.scheduler import ContinuousScheduler

    scheduler = ContinuousScheduler(served_lm, max_batch=8)
    logs = [[], [], []]
    settings = [{"temperature": 0.5}, {"temperature": 3.0, "top_k": 5}, {"temperature": 1.2, "top_p": 0.8}]
    for events, params in zip(logs, settings):  # all waiting before the worker starts: one step admits all
        scheduler.submit(_job(served_lm, ["hello"], events, greedy=False, params=params, method="sample"))
    scheduler.start()
    _drain(scheduler)
    scheduler.stop()
    for events, params in zip(logs, settings):
        gen = _finals(events)[0]
        assert gen.stats.batch_size >= 2  # ran beside the others
        ref = decodelab.generate(served_lm, "hello", method="sample", max_new_tokens=8, seed=5, **params)
        assert gen.token_ids == ref.token_ids


@pytest.mark.parametrize("mix", [True, False])
def test_requests_of_different_methods_share_one_step(served_lm, mix):
    """While a pld request runs, requests of other methods start a mixed engine; every request after that
    joins it, whatever its method, so one step serves them all. With mix_methods=False (serve --no-mix,
    the baseline of the mixing bench) each method keeps its own engine. Each equals generate() alone."""
    from decodelab.serve.scheduler import MIXED, ContinuousScheduler

    scheduler = ContinuousScheduler(served_lm, max_batch=8, mix_methods=mix)
    scheduler.start()
    first = []
    scheduler.submit(_job(served_lm, ["def f(x):"], first, stream=True, max_new_tokens=40, method="pld"))
    deadline = time.monotonic() + 60
    while not first:  # the pld row is generating
        assert time.monotonic() < deadline
        time.sleep(0.001)
    jobs = [("greedy", {}, True), ("sample", {"temperature": 1.3}, False), ("pld", {"num_draft_tokens": 3}, True),
            ("jacobi", {"block_size": 3}, True)]
    logs = [[] for _ in jobs]
    with scheduler._cond:  # submitted together: admitted in one pass, after the first has made the mixed engine
        for events, (method, params, greedy) in zip(logs, jobs):
            scheduler._queue.append(_job(served_lm, ["hello world"], events, greedy=greedy, params=params,
                                         max_new_tokens=12, method=method))
        scheduler._cond.notify()
    seen_mixed, most_engines = False, 0
    while scheduler.waiting or scheduler.running:
        seen_mixed |= MIXED in scheduler._engines
        most_engines = max(most_engines, len(scheduler._engines))
        assert time.monotonic() < deadline
        time.sleep(0.001)
    scheduler.stop()
    assert seen_mixed == mix and (mix or most_engines >= 3)
    for events, (method, params, _) in zip(logs, jobs):
        gen = _finals(events)[0]
        assert gen.method == method
        assert (gen.stats.batch_size >= 2) == mix  # beside rows of other methods, or alone in its engine
        ref = decodelab.generate(served_lm, "hello world", method=method, max_new_tokens=12, seed=5, **params)
        assert gen.token_ids == ref.token_ids, method
    ref = decodelab.generate(served_lm, "def f(x):", method="pld", max_new_tokens=40, seed=5)
    assert _finals(first)[0].token_ids == ref.token_ids


def test_stream_interval_sends_a_rows_text_every_n_tokens(served_lm):
    """`stream_interval=4`: each streamed event but the last carries ≥ 4 tokens (their logprobs with them);
    the pieces still make the row's text and tokens, equal to generate()."""
    from decodelab.serve.scheduler import ContinuousScheduler

    scheduler = ContinuousScheduler(served_lm, max_batch=8, stream_interval=4)
    logs = [[], []]
    for events, prompt in zip(logs, ["def f(x):", "hello world"]):
        job = _job(served_lm, [prompt], events, stream=True, max_new_tokens=18)
        job.logprobs = 0
        scheduler.submit(job)
    scheduler.start()
    _drain(scheduler)
    scheduler.stop()
    for events, prompt in zip(logs, ["def f(x):", "hello world"]):
        final = _finals(events)[0]
        assert all(len(e.token_ids) >= 4 for e in events[:-1]) and len(events) < len(final.token_ids)
        assert [t for e in events for t in e.token_ids] == final.token_ids
        assert "".join(e.text for e in events) == final.text
        assert sum(len(e.logprobs) for e in events) == len(final.token_ids)
        assert final.token_ids == decodelab.generate(served_lm, prompt, max_new_tokens=18).token_ids
    with pytest.raises(ValueError, match="stream_interval"):
        ContinuousScheduler(served_lm, stream_interval=0)


@pytest.mark.parametrize("mix", [True, False])
def test_constrained_and_healed_requests_join_the_running_batch(served_lm, mix):
    """Requests with a grammar or token healing are continuously batched like any other: while a long plain
    request streams, constrained greedy / sample / pld requests and a healed one join its batch (a
    constrained greedy or sample row in an engine that fast-forwards forced tokens), a request with a bad
    grammar fails alone, and every row equals generate() alone and satisfies its grammar."""
    from decodelab.serve.scheduler import ContinuousScheduler

    scheduler = ContinuousScheduler(served_lm, max_batch=8, mix_methods=mix)
    scheduler.start()
    first, ended = [], []

    def noting(events, name):
        def emit(event):
            events.append(event)
            if event.generation is not None or event.error is not None:
                ended.append(name)
        return emit
    scheduler.submit(_job(served_lm, ["def f(x):"], first, stream=True, max_new_tokens=48))
    scheduler._queue[-1].emit = noting(first, "first")
    deadline = time.monotonic() + 60
    while not first:  # the plain row is generating
        assert time.monotonic() < deadline
        time.sleep(0.001)
    regex = {"regex": r"(yes|no), [0-9]{2}"}
    jobs = [("greedy", {"constraint": regex}, True, 12), ("sample", {"constraint": regex, "temperature": 1.0}, False, 12),
            ("pld", {"constraint": regex}, True, 12), ("greedy", {"token_healing": True}, True, 2),
            ("greedy", {"constraint": {"regex": "("}}, True, 12)]  # (the healed row ends first: beside the others)
    logs = [[] for _ in jobs]
    with scheduler._cond:  # submitted together: admitted in one pass while the first row runs
        for events, (method, params, greedy, n) in zip(logs, jobs):
            scheduler._queue.append(_job(served_lm, ["answer:"], events, greedy=greedy, params=params,
                                         max_new_tokens=n, method=method))
            scheduler._queue[-1].emit = noting(events, method)
        scheduler._cond.notify()
    _drain(scheduler)
    scheduler.stop()
    assert ended[-1] == "first"  # the others did not wait for the running batch to drain
    for events, (method, params, _, n) in zip(logs[:-1], jobs):
        gen = _finals(events)[0]
        assert gen.stats.batch_size >= 2 or not mix, (method, params)  # beside other methods' rows (mixed)
        ref = decodelab.generate(served_lm, "answer:", method=method, max_new_tokens=n, seed=5, **params)
        assert gen.token_ids == ref.token_ids and gen.text == ref.text, (method, params)
        if "constraint" in params:
            assert re.fullmatch(regex["regex"], gen.text) and gen.incomplete is False
    assert [type(e.error).__name__ for e in logs[-1]] == ["UserError"]
    assert "invalid regex constraint" in str(logs[-1][0].error)
    ref = decodelab.generate(served_lm, "def f(x):", max_new_tokens=48)
    assert _finals(first)[0].token_ids == ref.token_ids
