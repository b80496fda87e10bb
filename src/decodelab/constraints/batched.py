"""Every grammar mask a verify step needs, for every row of the batch, from one llguidance call.

A speculative step verifies a draft (a chain or a tree hanging off the pending token) and needs the
grammar mask at the pending position and at every draft node, each with its own history. Asked one
node at a time (`GrammarMask` as a logits processor), a row's matcher seeks each node's history and
computes one mask. `premask` instead, once per step and before verification:

1. cuts every row's draft into chains (a node continues its parent's chain when it is the parent's
   first child; every other child starts a chain), dropping the nodes whose masks are already known
   (a draft model computed them while drafting, through the same row state);
2. puts one matcher at the head of each chain — the row's own matcher for the first chain, a fork
   (`deep_copy`) advanced by the path from the pending position for the others — and validates the
   chain's tokens (a chain ends before a token the grammar rejects, and before an EOS, after which a
   history-keyed mask would be the dead-row mask);
3. hands all chains of all rows to llguidance's `LLExecutor.unsafe_compute_mask_ptr_with_draft_token`
   (what `llguidance.torch.fill_next_token_bitmask_par_with_draft_tokens` wraps, without importing that
   module, which runs torch.compile at import): one call, parallel over chains on the executor's
   threads, writing the mask at the chain's head and after each of its tokens into consecutive rows of
   one bitmask (the matcher is rolled back afterwards). A step with a single chain (batch size 1 with a
   chain draft or none: greedy, pld, speculative) has nothing to run in parallel, so it makes the same
   call on the chain's own matcher (`LLMatcher.unsafe_compute_mask_ptr_with_draft_token`, same masks;
   `LLMatcher.unsafe_compute_mask_ptr` for a lone head, which needs no stand-in draft token) on the
   thread already running: handing one job to the executor's pool and waiting for it costs more than the
   mask itself when torch's threads hold the cores;
4. leaves each mask in its row's `RowConstraint.masks`, keyed by the node's generated tokens — the same
   key `GrammarMask` looks up, so verification reads the masks instead of computing them — and its
   additive form (0 / -inf per token, `matcher.bias_of`) in `RowConstraint.bias`, what the processor
   adds to the scores. A node the
   step did not cover (a rejected or post-EOS node, a lookahead window node) falls back to the
   one-node route, so the output cannot change: the mask of a state is the same whichever call
   computes it (tests/constraints/test_batched_masks.py compares them on trees).

The cost is masks for draft nodes verification never reaches (the siblings of a tree, the tail after a
rejection), traded for one call with parallel work instead of a seek and a call per reached node; the
json bench suite reports both (constraints/bench.py: batched calls, masks per call, µs per call).

**Overlap with the forward.** A step's masks depend only on the grammar state after the tokens accepted
so far and on the draft — not on the step's logits. So `premask_views` (the loop's hook) does the Python
part on the calling thread (cutting chains, seeking and forking matchers, validating draft tokens, which
hold the GIL) and hands the llguidance call, which releases the GIL (`py.detach` around the mask fill in
llguidance's python_ext/src/llmatcher.rs, for `LLMatcher.unsafe_compute_mask_ptr*` and every
`LLExecutor` call), plus the unpacking of the masks into the -inf pattern the processor applies, to one
long-lived worker thread; it returns a `Pending` handle the loop joins right after the target's forward
(`with premask_views(views, drafts): out = session.forward(...)`). Between start and join only the worker
touches the step's matchers and `RowConstraint.masks`: the loop runs the forward, which reads neither.
A worker exception is raised by the join, where the serial call would have raised it; a matcher that
fails while computing reports it through `RowConstraint.error` as before, and the row stops with that
reason. `OVERLAP = False` computes the masks on the calling thread before the forward (the same masks, so
the same tokens: tests/constraints/test_overlap.py); by default (`OVERLAP = None`) the worker is used only
when the process may run on more cores than torch's intra-op threads (`torch.get_num_threads()`): with no
core to spare, the worker would take one from the forward (constraints/mask_cost.py measures both routes
and what each leaves exposed).
"""

from __future__ import annotations

import contextvars
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from . import timing
from .matcher import RowConstraint, bias_of

_EXECUTOR = None
ENABLED = True  # False: every mask is computed one node at a time when verification asks (tests compare)
# True: a step's batched masks are computed on the worker thread while the forward runs; False: before the
# forward, on the calling thread; None (the default): overlap only when a core is free beside torch's
# intra-op threads (`overlapping`) — on a machine with no spare core the worker would compete with the forward
OVERLAP: bool | None = None
_WORKER: ThreadPoolExecutor | None = None
_WORKER_LOCK = threading.Lock()


def executor(threads: int | None = None):
    """The process's llguidance executor; `threads` rebuilds it with that many threads (None: llguidance's
    default, 80 % of the CPUs up to 32 — one thread on a 2-core machine)."""
    global _EXECUTOR
    if _EXECUTOR is None or threads is not None:
        from llguidance import LLExecutor

        _EXECUTOR = LLExecutor(threads) if threads else LLExecutor()
    return _EXECUTOR


def overlapping() -> bool:
    """Whether `premask_views` computes on the worker thread (see `OVERLAP`)."""
    if OVERLAP is not None:
        return OVERLAP
    return _cores() > torch.get_num_threads()


def _cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _forget_threads() -> None:
    """In a forked child: the parent's worker and llguidance pool threads do not exist there (a job
    handed to them would never run), so both are made afresh on first use."""
    global _WORKER, _EXECUTOR, _WORKER_LOCK
    _WORKER, _EXECUTOR, _WORKER_LOCK = None, None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_threads)


def worker() -> ThreadPoolExecutor:
    """The one long-lived thread that computes the batched masks while the forward runs (made on first
    use and reused by every step of every generation; a daemon-like pool thread, joined at exit)."""
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None:
            _WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decodelab-grammar-mask")
    return _WORKER


class Pending:
    """A step's batched masks being computed: `join()` waits and returns how many were computed (raising
    the worker's exception, if any). As a context manager it joins on exit, so the worker never outlives
    the step; when the body raised, that error wins and a worker error is dropped."""

    def __init__(self, future: Future | None = None, computed: int = 0):
        self._future, self.computed = future, computed

    def join(self) -> int:
        if self._future is not None:
            future, self._future = self._future, None
            self.computed = future.result()
        return self.computed

    def __enter__(self) -> "Pending":
        return self

    def __exit__(self, kind, error, trace) -> bool:
        if kind is None:
            self.join()
        else:
            try:
                self.join()
            except Exception:  # noqa: BLE001 - the body's error is the one to report
                pass
        return False


def premask_views(views, drafts) -> Pending:
    """Start `premask` for a verify step of the batched loop (methods/loop.py): `views` are the live
    rows' `RowContext`s, `drafts` their drafts; rows without a grammar are skipped. Returns the handle to
    join after the target's forward (the masks are computed meanwhile on the worker when `OVERLAP`)."""
    if not ENABLED:
        return Pending()
    rows = []
    for view, draft in zip(views, drafts):
        mask = view.sampler.constraint
        if mask is not None:
            rows.append((mask.rows[0], view.ids()[mask.prompt_len:], draft, mask.eos))
    return start(rows, overlapping())


def premask(rows: list[tuple]) -> int:
    """Compute the masks of every row's pending position and draft nodes in one llguidance call.

    rows: (row state, the row's generated tokens, its Draft, EOS ids) per constrained row of the step.
    Returns the number of masks computed (0: every mask was known and no call was made)."""
    return start(rows, overlap=False).join()


def start(rows: list[tuple], overlap: bool) -> Pending:
    """`premask`, its llguidance call and unpacking on the worker thread when `overlap` (see the module
    docstring); the Python part (chains, seeks, forks, validation) runs here."""
    t0 = timing.clock()
    chains = []  # (row, key of the head, matcher at the head, tokens after the head, EOS ids)
    for row, generated, draft, eos in rows:
        chains += [c + (set(eos),) for c in _chains(row, list(generated), draft, set(eos))]
    if not chains:
        return Pending()
    words = (chains[0][0].grammar.tokenizer.vocab_size + 31) // 32
    jobs, at = [], 0
    for _, _, matcher, rest, eos in chains:
        # the executor wants at least one draft token per job: a lone head gets a token it rejects, so
        # nothing is computed past the head (its row in the bitmask is scratch, written only if the token
        # is valid); a single job runs on its own matcher, which computes a lone head's mask directly
        draft = rest or ([] if len(chains) == 1 else [_rejected(matcher, eos)])
        jobs.append((matcher, at, draft))
        at += 1 + len(draft)
    bitmask = torch.full((at, words), -1, dtype=torch.int32)
    prepared = timing.clock() - t0
    if not overlap:
        return Pending(computed=_compute(chains, jobs, bitmask, prepared))
    # the worker records its time into this thread's active timer (constraints/timing.py), if any
    return Pending(worker().submit(contextvars.copy_context().run, _compute, chains, jobs, bitmask, prepared))


def _compute(chains: list[tuple], jobs: list[tuple], bitmask: torch.Tensor, prepared: float) -> int:
    """The llguidance call (GIL released), then each node's words and its additive row (what the
    processor adds to the scores, made here so the hit path after the forward is one add) into its row."""
    t0 = timing.clock()
    fill(jobs, bitmask)
    bias = bias_of(bitmask)  # [nodes, 32·words] float32, 0 where allowed, -inf where forbidden
    n = 0
    for (row, key, _, rest, _), (_, at, _) in zip(chains, jobs):
        for j in range(len(rest) + 1):
            node = key + tuple(rest[:j])  # as many as the step's nodes, not bounded
            row.masks[node] = bitmask[at + j]
            row.bias[node] = bias[at + j]
        n += 1 + len(rest)
    timing.record_batch(prepared + timing.clock() - t0, n)
    return n


def fill(jobs: list[tuple], bitmask: torch.Tensor) -> None:
    """Every job's masks (matcher, first bitmask row, draft tokens) into `bitmask`: one job through its own
    matcher on this thread, several through the executor's pool, in parallel over jobs."""
    one_mask = bitmask.shape[1] * 4
    if len(jobs) == 1:
        matcher, at, draft = jobs[0]
        if at + 1 + len(draft) > bitmask.shape[0]:
            raise ValueError(f"{1 + len(draft)} masks from row {at} do not fit a bitmask of {bitmask.shape[0]}")
        if draft:
            matcher.unsafe_compute_mask_ptr_with_draft_token(bitmask[at].data_ptr(), one_mask, draft)
        else:
            matcher.unsafe_compute_mask_ptr(bitmask[at].data_ptr(), one_mask)
    else:
        executor().unsafe_compute_mask_ptr_with_draft_token(jobs, bitmask.data_ptr(), one_mask, bitmask.shape[0])


def _rejected(matcher, eos: set[int]) -> int:
    """A token the matcher rejects in its state (when none of the few tried is, one mask is wasted)."""
    tried = sorted(eos) + [0, 1, 2]
    return next((t for t in tried if matcher.validate_tokens([t]) == 0), tried[0])


def _chains(row: RowConstraint, generated: list[int], draft, eos: set[int]) -> list[tuple]:
    """Row `row`'s chains of nodes whose masks are still unknown (see the module docstring)."""
    tokens, parents = draft.tokens, draft.parents
    paths: dict[int, tuple[int, ...]] = {-1: tuple(generated)}  # node → its key; none past an EOS
    first_child: dict[int, int] = {}
    for i, p in enumerate(parents):  # parents precede their children
        first_child.setdefault(p, i)
        if p in paths and tokens[i] not in eos:
            paths[i] = paths[p] + (tokens[i],)
    needed = set(paths.values())  # the row keeps the masks of this step's nodes only (bounded memory)
    row.masks = {k: v for k, v in row.masks.items() if k in needed}
    row.bias = {k: v for k, v in row.bias.items() if k in needed}
    out, own = [], True
    for head in [-1] + [i for i, p in enumerate(parents) if first_child[p] != i]:
        chain = [head]
        while chain[-1] in first_child and first_child[chain[-1]] in paths:
            chain.append(first_child[chain[-1]])
        if head not in paths:
            continue
        known = next((k for k, c in enumerate(chain) if paths[c] not in row.masks), len(chain))
        chain = chain[known:]
        if not chain:
            continue
        state = row if own else row.fork()  # the row's own matcher heads its first chain
        if not state.seek(list(paths[chain[0]])) or state.matcher.is_error():
            continue
        own = False
        rest = [tokens[c] for c in chain[1:]]
        rest = rest[: state.matcher.validate_tokens(rest)] if rest else rest
        out.append((row, paths[chain[0]], state.matcher, rest))
    return out
