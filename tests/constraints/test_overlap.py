"""The batched grammar masks computed on the worker thread while the forward runs (constraints/batched.py).

- overlap on and off give the same tokens: greedy and seeded sampling, a batch of rows with one JSON
  schema each (plus regex / choice / Lark rows), under plain decoding (the fast-forward loop) and under
  speculative methods (pld, speculative, tree); with it on the masks really are computed on the worker;
- a matcher that fails while the worker computes stops its row with llguidance's reason, exactly as when
  the masks are computed on the decoding thread; other rows are unaffected;
- an exception raised on the worker is raised by the step (no hang), and a forward that fails waits for
  the worker before its error propagates;
- one long-lived worker thread, reused by every step of every generation (no thread per step).
"""

import threading

import pytest
import torch
from constraint_cases import CONSTRAINTS, SCHEMAS, flat_lm

import decodelab
from decodelab.constraints import batched, compile_constraint
from decodelab.engine import run_method

SIZES = {"tree": {}, "pld": {}, "speculative": {}}
ROW_CONSTRAINTS = [{"json_schema": s} for s in SCHEMAS[:4]] + CONSTRAINTS[-3:]  # 4 schemas, regex, choice, lark
PROMPTS = ["{", "[", "{", "(", "x = ", "", "("]


@pytest.fixture(scope="module")
def lm():
    target = flat_lm(0, 0.3)  # flat enough that sampled rows differ from greedy ones
    target.state["drafts"] = {"tiny-draft": flat_lm(1, 0.3)}
    return target


@pytest.fixture
def route():
    """Set batched.OVERLAP for a test; restored afterwards."""
    saved = batched.OVERLAP

    def set_overlap(on: bool) -> None:
        batched.OVERLAP = on

    yield set_overlap
    batched.OVERLAP = saved


def _run(lm, method: str, temperature: float, constraints=ROW_CONSTRAINTS, prompts=PROMPTS, max_new=60):
    info = decodelab.methods()[method]
    params = {"temperature": temperature, **SIZES.get(method, {})}
    if "draft" in info.params:
        params["draft"] = "tiny-draft"
    grammars = [compile_constraint(lm, c) for c in constraints]
    ids = [lm.encode(p) for p in prompts]
    events = list(run_method(info, lm, ids, info.check_params(params), max_new, 7, [], grammars))
    gens = {e.row: e.generation for e in events if e.generation is not None}
    return [gens[b] for b in range(len(grammars))]


def _threads_of_compute(monkeypatch) -> list[str]:
    """Record the thread each batched computation runs on."""
    names, compute = [], batched._compute

    def spy(*args):
        names.append(threading.current_thread().name)
        return compute(*args)

    monkeypatch.setattr(batched, "_compute", spy)
    return names


@pytest.mark.parametrize("method", ["greedy", "sample", "pld", "speculative", "tree"])
def test_overlap_on_and_off_give_the_same_tokens(lm, method, route, monkeypatch):
    names = _threads_of_compute(monkeypatch)
    for temperature in ([0.0] if method == "greedy" else [0.0, 1.5] if method != "sample" else [1.0, 1.5]):
        route(True)
        on = _run(lm, method, temperature)
        on_threads = list(names)
        names.clear()
        route(False)
        off = _run(lm, method, temperature)
        assert [g.token_ids for g in on] == [g.token_ids for g in off], (method, temperature)
        assert [g.finish_reason for g in on] == [g.finish_reason for g in off]
        assert on_threads and all(n.startswith("decodelab-grammar-mask") for n in on_threads)
        assert names and all(n == threading.current_thread().name for n in names)
        names.clear()
    if method == "sample":  # the sampled rows really sampled: a second temperature changes some row
        assert [g.token_ids for g in _run(lm, method, 1.0)] != [g.token_ids for g in _run(lm, method, 1.5)]


class _FailingMatcher:
    """Wraps the executor: after the real call of the `at`-th batched computation, the first chain's matcher
    (the first constrained row's own) consumes a token its grammar rejects — llguidance's matcher then stays
    in its error state, as when its parser fails mid-way."""

    def __init__(self, real, at: int):
        self.real, self.at, self.calls, self.threads = real, at, 0, []

    def unsafe_compute_mask_ptr_with_draft_token(self, jobs, *args):
        self.real.unsafe_compute_mask_ptr_with_draft_token(jobs, *args)
        self.calls += 1
        if self.calls == self.at:
            self.threads.append(threading.current_thread().name)
            matcher = jobs[0][0]
            bad = next(t for t in range(300) if matcher.validate_tokens([t]) == 0)
            assert matcher.consume_token(bad) is False and matcher.is_error()


@pytest.mark.parametrize("method", ["greedy", "pld"])
def test_a_matcher_error_on_the_worker_stops_the_row_with_its_reason(lm, method, route, monkeypatch):
    real = batched.executor()
    results = {}
    for on in (True, False):
        route(on)
        failing = _FailingMatcher(real, at=3)
        monkeypatch.setattr(batched, "executor", lambda threads=None, f=failing: f)
        results[on] = _run(lm, method, 0.0, ROW_CONSTRAINTS[:3], PROMPTS[:3])
        assert failing.threads == (["decodelab-grammar-mask_0"] if on else [threading.current_thread().name])
    monkeypatch.setattr(batched, "executor", lambda threads=None: real)
    clean = _run(lm, method, 0.0, ROW_CONSTRAINTS[:3], PROMPTS[:3])
    failed = results[True][0]
    assert failed.error.startswith("Parser Error") and failed.incomplete and failed.finish_reason == "stop"
    assert len(failed.token_ids) < len(clean[0].token_ids)
    for on_row, off_row in zip(results[True], results[False]):  # the same as on the decoding thread
        assert (on_row.token_ids, on_row.finish_reason, on_row.incomplete) == \
               (off_row.token_ids, off_row.finish_reason, off_row.incomplete)
        # the reason's first line (llguidance appends parser statistics, compute times among them)
        assert (on_row.error or "").splitlines()[:1] == (off_row.error or "").splitlines()[:1]
    assert [g.token_ids for g in results[True][1:]] == [g.token_ids for g in clean[1:]]  # other rows go on
    assert all(g.error is None for g in results[True][1:])


class _Boom(RuntimeError):
    pass


def test_an_exception_on_the_worker_is_raised_by_the_step(lm, route, monkeypatch):
    class Raising:
        def unsafe_compute_mask_ptr_with_draft_token(self, *args):
            raise _Boom("llguidance failed")

    monkeypatch.setattr(batched, "executor", lambda threads=None: Raising())
    for on in (True, False):
        route(on)
        with pytest.raises(_Boom, match="llguidance failed"):
            _run(lm, "greedy", 0.0, ROW_CONSTRAINTS[:2], PROMPTS[:2])


def test_a_failing_forward_waits_for_the_worker_and_its_error_wins():
    release, finished = threading.Event(), []

    def slow():
        release.wait(5)
        finished.append(True)
        raise _Boom("worker")

    pending = batched.Pending(batched.worker().submit(slow))
    with pytest.raises(KeyError):
        with pending:
            release.set()
            raise KeyError("forward")
    assert finished  # joined before the forward's error left the block
    with pytest.raises(_Boom):
        with batched.Pending(batched.worker().submit(slow)):
            pass
    assert batched.Pending(computed=3).join() == 3


def test_one_worker_thread_reused_by_every_step(lm, route):
    route(True)
    pool = batched.worker()
    _run(lm, "greedy", 0.0, ROW_CONSTRAINTS[:2], PROMPTS[:2])
    before = threading.active_count()
    for method in ("greedy", "pld"):
        _run(lm, method, 0.0, ROW_CONSTRAINTS[:2], PROMPTS[:2])
    assert batched.worker() is pool
    assert threading.active_count() == before
    assert sum(t.name.startswith("decodelab-grammar-mask") for t in threading.enumerate()) == 1


def test_by_default_the_worker_is_used_only_beside_a_free_core(route):
    saved = torch.get_num_threads()
    route(None)
    try:
        cores = batched._cores()
        torch.set_num_threads(cores)
        assert batched.overlapping() is False
        if cores > 1:
            torch.set_num_threads(cores - 1)
            assert batched.overlapping() is True
    finally:
        torch.set_num_threads(saved)
    route(True)
    assert batched.overlapping() is True
    route(False)
    assert batched.overlapping() is False


def test_the_masks_are_computed_while_the_forward_runs(lm, route, monkeypatch):
    """A forward that follows a started batched computation waits (up to 2 s) until the worker has seen it
    running: the loop starts the masks before the forward and joins them only after it (joined before the
    forward, the worker would wait in vain and record False)."""
    from decodelab.model.session import Session

    in_forward, seen_it, expecting, seen = threading.Event(), threading.Event(), [False], []
    forward, compute, start = Session.forward, batched._compute, batched.start

    def started(rows, overlap):
        pending = start(rows, overlap)
        expecting[0] = pending._future is not None
        return pending

    def watched_forward(self, *args, **kwargs):
        if expecting[0]:
            expecting[0] = False
            in_forward.set()
            seen_it.wait(2)
            in_forward.clear()
            seen_it.clear()
        return forward(self, *args, **kwargs)

    def spy(*args):
        seen.append(in_forward.wait(2))
        seen_it.set()
        return compute(*args)

    monkeypatch.setattr(batched, "start", started)
    monkeypatch.setattr(Session, "forward", watched_forward)
    monkeypatch.setattr(batched, "_compute", spy)
    route(True)
    _run(lm, "pld", 0.0, ROW_CONSTRAINTS[:2], PROMPTS[:2], max_new=12)
    assert seen and all(seen)


def test_the_gil_check_runs():
    """python -m decodelab.constraints.gil_check (the docs' GIL figures): it runs and reports every call;
    the shares themselves are timings, not asserted here."""
    from decodelab.constraints import gil_check

    result = gil_check.main(["--seconds", "0.05"])
    assert len(result["shares"]) == 7 and all(s > 0 for s in result["shares"].values())
    with pytest.raises(SystemExit):
        gil_check.main(["--seconds", "0"])


def _generate_in_child(queue):
    lm = flat_lm(0, 0.3)
    out = _run(lm, "greedy", 0.0, ROW_CONSTRAINTS[:2], PROMPTS[:2], max_new=12)
    queue.put([g.token_ids for g in out])


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_worker(lm, route):
    """After fork the parent's worker thread does not exist in the child: the child makes its own instead
    of handing its masks to a thread that never runs them (a hang)."""
    import multiprocessing

    route(True)
    want = [g.token_ids for g in _run(lm, "greedy", 0.0, ROW_CONSTRAINTS[:2], PROMPTS[:2], max_new=12)]
    assert batched._WORKER is not None  # the parent's worker exists when the child forks
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_generate_in_child, args=(queue,))
    child.start()
    try:
        got = queue.get(timeout=60)
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    assert got == want


def test_the_additive_masks_equal_unpack():
    from decodelab.constraints.matcher import bias_of, unpack

    gen = torch.Generator().manual_seed(0)
    for nodes, words in ((1, 1), (3, 257), (2, 4010)):
        bitmask = torch.randint(-2**31, 2**31 - 1, (nodes, words), dtype=torch.int32, generator=gen)
        bitmask[0, 0] = -1  # all allowed, and
        bitmask[-1, -1] = 0  # none allowed, at the ends
        bias = bias_of(bitmask)
        assert bias.dtype == torch.float32 and bias.shape == (nodes, 32 * words)
        assert torch.equal(bias == 0, unpack(bitmask, 32 * words)) and bool((bias[bias != 0] == -float("inf")).all())
