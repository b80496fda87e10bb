"""The grammar mask's cost per token: what it computes, and what of it the decode step actually waits for.

`python -m decodelab.constraints.mask_cost --backend native --out docs/constraints`: the `json` suite's
prompts and schemas (constraints/json_suite.py) on builtin:pyco, each requested method at temperature 0,
under each requested route:

- `overlap`: every mask of a verify step from one llguidance call (batched.py), computed on the worker
  thread while the target's forward runs (`batched.OVERLAP = True`);
- `batched`: the same call, made before the forward on the decoding thread (`batched.OVERLAP = False`);
  by default decodelab overlaps only when a core is free beside torch's intra-op threads
  (`batched.overlapping`), so `--torch-threads` decides which of the two a plain run uses;
- `one node`: each node's mask computed when verification asks (`batched.ENABLED = False`).

Per method and route it reports the mask **compute** time per emitted token (processor calls + batched
calls, constraints/timing.py: the work done, on whichever thread), masks and llguidance calls per token,
the target's forward time per pass, and the **exposed** grammar time per token: what the decode steps
took longer than the same steps without the grammar. Exposed time is measured by replay, so both sides
run the very same forwards and emit the very same tokens:

1. the reference run — the constrained generation itself — records the token drawn after prefill, each
   verify step's draft and verdict, and the grammar work done while drafting (fast-forward queries, draft pruning checks, a draft model's
   masked q), which is never overlapped;
2. the *constrained replay* runs the constrained decode loop (methods/loop.py) again with those drafts,
   timing every step from its start to the next one's (premask, forward, verification through the
   grammar processor, accept, and the engine advancing the row's grammar by the emitted tokens);
3. the *unconstrained replay* runs the same loop with the same drafts and no grammar (verification
   without the mask; the recorded verdict is applied, so the same tokens are emitted and cached), timing
   every step the same way.

exposed per token = (Σ constrained replay steps − Σ unconstrained replay steps + drafting grammar time)
÷ tokens: it includes everything the grammar costs the decoding thread — the Python part of premask, the
worker's competition for cores and the GIL with the forward (torch's threads included: run it with the
thread count you decode with), the processor after the forward, history-keyed verification — and leaves
out the once-per-request work (compiling the grammar, the first token's mask after prefill). Both replays
use greedy's proposer (none); the drafts are the method's own. "exposed ÷ step" is the exposed time per
emitted token ÷ one plain one-token decode step (the issue's goal: ≤ 5 % of a decode step), timed after each
prompt in the same run (`bench.decode_cost.session_ms`, 3 × DECODE_STEPS steps: the median of the three,
then the median over prompts). It is not the "forward µs / pass" column: a constrained pass often feeds
several tokens (fast-forward, drafts) and the passes include the prefill, so that mean is larger than a
decode step — up to 2.5× on an Intel Xeon whose several-row matmuls cost more than one row's. Runs are
interleaved per prompt after one warm-up generation per method; the machine's load is recorded
(bench/machine.py) and a busy machine is flagged.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

METHODS = "greedy,pld,speculative,recycling,tree,lookahead"
DECODE_STEPS = 32  # one-token decode steps timed after each prompt: the denominator of the shares
ROUTES = ("overlap", "batched", "one node")
SIZES = {"recycling": {"widths": "4,6,4,2"}, "speculative": {"num_draft_tokens": 4}}


class _Replay:
    """The loop hooks' state: record a run's drafts and verdicts, or replay them while timing each step."""

    def __init__(self):
        self.mode = "off"  # "record", "replay" or "off"
        self.drafts: list = []
        self.verdicts: list = []
        self.first = None  # the token drawn after prefill
        self.at = 0  # the next step to replay
        self.steps: list[float] = []  # each step's time in this run
        self.started = 0.0  # when the last step started
        self.mismatches = 0  # replayed steps whose own verdict differed from the recorded one
        self.draft_grammar_s = 0.0  # grammar time spent while drafting (record mode)

    def start(self, mode: str) -> None:
        self.mode, self.at, self.steps, self.mismatches, self.draft_grammar_s = mode, 0, [], 0, 0.0
        if mode == "record":
            self.drafts, self.verdicts = [], []


@contextmanager
def _hooks(state: _Replay):
    """Wrap methods/loop.py's `_step`, `_drafts` and `verify` (and route unconstrained greedy through the
    loop) for the measurement's runs; restored on exit."""
    from ..methods import autoregressive, loop
    from . import timing
    from .fastforward import fast_forward_loop

    saved = (loop._step, loop._drafts, loop.verify, autoregressive._constrained_or_plain, loop.sample_rows)

    def step(*args, **kwargs):  # a step's time runs to the next step's start: the engine's handling of
        t0 = time.perf_counter()  # its tokens (a row's grammar advanced, its end checked) is counted in
        if state.steps:
            state.steps[-1] = t0 - state.started
        state.started = t0
        out = saved[0](*args, **kwargs)
        state.steps.append(time.perf_counter() - t0)
        return out

    def drafts(rows, views, proposers, session, caps):
        if state.mode == "replay":
            return [state.drafts[state.at]]
        outer = timing._ACTIVE.get()
        with timing.grammar_timing() as inner:
            got = saved[1](rows, views, proposers, session, caps)
        if outer is not None:
            outer.add(inner)
        if state.mode == "record":
            state.drafts.append(got[0])
            state.draft_grammar_s += inner.total_s()
        return got

    def verify(draft, target, generator, greedy):
        verdict = saved[2](draft, target, generator, greedy)
        if state.mode == "record":
            state.verdicts.append(verdict)
        elif state.mode == "replay":
            want = state.verdicts[state.at]
            state.mismatches += (verdict.path, verdict.tokens) != (want.path, want.tokens)
            state.at += 1
            return want
        return verdict

    def first(ctx, probs, rows=None):  # the token after prefill (drawn outside the steps)
        got = saved[4](ctx, probs, rows)
        if state.mode == "record":
            state.first = got
        return state.first if state.mode == "replay" else got

    def through_the_loop(ctx):
        return fast_forward_loop(ctx) if state.mode == "replay" else saved[3](ctx)

    loop._step, loop._drafts, loop.verify, autoregressive._constrained_or_plain, loop.sample_rows = (
        step, drafts, verify, through_the_loop, first)
    try:
        yield
    finally:
        loop._step, loop._drafts, loop.verify, autoregressive._constrained_or_plain, loop.sample_rows = saved


def _route(route: str) -> None:
    from . import batched

    batched.ENABLED, batched.OVERLAP = route != "one node", route == "overlap"


def _default_route() -> None:
    from . import batched

    batched.ENABLED, batched.OVERLAP = True, None


def run(model: str = "builtin:pyco", methods: list[str] | None = None, limit: int | None = None,
        backend: str = "auto", executor_threads: int | None = None, routes: list[str] | None = None,
        repeats: int = 3) -> dict:
    from .. import generate, load
    from ..bench import machine
    from ..bench.decode_cost import session_ms
    from . import batched
    from .json_suite import CASES, MAX_NEW_TOKENS
    from .timing import grammar_timing

    lm = load(model, backend=backend)
    batched.executor(executor_threads)
    cases = CASES[:limit]
    methods = methods or METHODS.split(",")
    routes = routes or list(ROUTES)
    keys = ("tokens", "mask_s", "masks", "calls", "forward_s", "passes", "wall_s", "constrained_s",
            "unconstrained_s", "draft_grammar_s", "same")
    totals = {(m, r): dict.fromkeys(keys, 0) for m in methods for r in routes}
    state = _Replay()
    steps_us: list[float] = []  # one plain one-token decode step after each prompt, µs
    before, a = machine.snapshot(), machine.sample()
    try:
        with _hooks(state):
            for m in methods:  # warm-up: the tokenizer conversion, the grammar compiler, the draft model
                generate(lm, cases[0][1], method=m, max_new_tokens=8, constraint={"json_schema": cases[0][2]},
                         **SIZES.get(m, {}))
            for _, prompt, schema, _ in cases:
                steps_us.append(1e3 * statistics.median(session_ms(lm, lm.encode(prompt), DECODE_STEPS)
                                                        for _ in range(3)))  # the goal's denominator
                for m in methods:
                    _measure(lm, prompt, schema, m, routes, totals, state, generate, grammar_timing,
                             MAX_NEW_TOKENS, repeats)
    finally:
        _default_route()
    during = machine.others_share(a, machine.sample())
    decode_step_us = statistics.median(steps_us)
    rows = [_row(m, r, t, len(cases), decode_step_us) for (m, r), t in totals.items()]
    import torch

    return {"model": model, "backend": lm.backend if hasattr(lm, "backend") else backend,
            "executor_threads": executor_threads or "llguidance default", "torch_threads": torch.get_num_threads(),
            "repeats": repeats, "decode_step_us": round(decode_step_us, 1),
            "machine_load": machine.report(before, during, machine.snapshot()), "rows": rows}


def _measure(lm, prompt, schema, method, routes, totals, state, generate, grammar_timing, max_new,
             repeats) -> None:
    """One prompt and method: the reference run under each route, then `repeats` rounds of the constrained
    replay under each route and the unconstrained replay (it does not depend on the route), interleaved.
    A step's time is its median over the rounds (one preempted round does not move it)."""
    constraint = {"json_schema": schema}
    kw = dict(max_new_tokens=max_new, **SIZES.get(method, {}))
    runs = {}
    for r in routes:
        _route(r)
        state.start("record")
        with grammar_timing() as timer:
            t0 = time.perf_counter()
            g = generate(lm, prompt, method=method, constraint=constraint, **kw)
            wall = time.perf_counter() - t0
        runs[r] = (g, timer, wall, state.drafts, state.verdicts, state.first, state.draft_grammar_s)
    reference = runs[routes[0]][0]
    n = len(reference.token_ids)  # both replays stop after these (the unconstrained one has no grammar to end it)
    steps = {r: [] for r in [*routes, None]}  # route (None: unconstrained) → per round, each step's time
    same = dict.fromkeys(routes, True)
    for _ in range(repeats):
        for r in [*routes, None]:
            _, _, _, state.drafts, state.verdicts, state.first, _ = runs[r if r is not None else routes[0]]
            _route(r or "overlap")
            state.start("replay")
            got = generate(lm, prompt, method="greedy", max_new_tokens=n,
                           **({"constraint": constraint} if r is not None else {}))
            steps[r].append(state.steps)
            for route in ([r] if r is not None else routes):  # every run of this prompt emits the same tokens
                same[route] &= got.token_ids == reference.token_ids and (r is None or not state.mismatches)
    plain = _median_steps(steps[None])
    for r in routes:
        g, timer, wall, _, _, _, draft_grammar_s = runs[r]
        t = totals[method, r]
        t["tokens"] += len(g.token_ids)
        t["mask_s"] += sum(timer.mask_s) + sum(timer.batch_s)
        t["masks"] += timer.batch_masks + timer.mask_rows - timer.mask_hits
        t["calls"] += len(timer.batch_s) + timer.mask_rows - timer.mask_hits
        t["forward_s"] += g.stats.target_time_s
        t["passes"] += g.stats.forward_passes
        t["wall_s"] += wall
        t["constrained_s"] += _median_steps(steps[r])
        t["unconstrained_s"] += plain
        t["draft_grammar_s"] += draft_grammar_s
        t["same"] += same[r] and g.token_ids == reference.token_ids


def _median_steps(rounds: list[list[float]]) -> float:
    """Σ over steps of the step's median time over the rounds (every round runs the same steps)."""
    if len({len(x) for x in rounds}) != 1:
        raise RuntimeError("the replays ran different numbers of steps")  # pragma: no cover (a hook bug)
    return sum(statistics.median(col) for col in zip(*rounds))


def _row(method: str, route: str, t: dict, prompts: int, step_us: float) -> dict:
    n, forward_us = t["tokens"] or 1, 1e6 * t["forward_s"] / max(t["passes"], 1)
    mask_us = 1e6 * t["mask_s"] / n
    exposed_us = 1e6 * (t["constrained_s"] - t["unconstrained_s"] + t["draft_grammar_s"]) / n
    return {"method": method, "route": route, "batched": route != "one node", "overlap": route == "overlap",
            "prompts": prompts, "tokens": t["tokens"],
            "mask_us_per_token": round(mask_us, 1), "masks_per_token": round(t["masks"] / n, 3),
            "llguidance_calls_per_token": round(t["calls"] / n, 3),
            "forward_us_per_pass": round(forward_us, 1),
            "mask_share_of_forward": round(mask_us / forward_us, 4) if forward_us else None,
            "exposed_us_per_token": round(exposed_us, 1),
            "draft_grammar_us_per_token": round(1e6 * t["draft_grammar_s"] / n, 1),
            "exposed_share_of_forward": round(exposed_us / forward_us, 4) if forward_us else None,
            # the goal's denominator: one plain one-token decode step (a pass above may feed several tokens)
            "mask_share_of_step": round(mask_us / step_us, 4),
            "exposed_share_of_step": round(exposed_us / step_us, 4),
            # the replayed steps themselves, to compare configurations (--torch-threads) with each other
            "constrained_step_ms_per_token": round(1e3 * t["constrained_s"] / n, 3),
            "unconstrained_step_ms_per_token": round(1e3 * t["unconstrained_s"] / n, 3),
            "wall_ms_per_token": round(1e3 * t["wall_s"] / n, 3),
            "same_tokens": f"{t['same']}/{prompts}"}


def markdown(result: dict, command: str) -> str:
    from .bench import share, with_warning

    lines = [f"Command: `{command}`", "",
             f"{result['model']}, the `json` suite, temperature 0, batch size 1, torch threads: "
             f"{result.get('torch_threads', '?')}, llguidance executor threads: {result['executor_threads']}, "
             f"replay rounds: {result.get('repeats', 1)} (a step's median). "
             "Routes: overlap = every mask of a verify step from one llguidance call, computed on a worker "
             "thread while the forward runs; batched = the same call before the forward (constraints/batched.py); "
             "one node = each mask when verification asks. Compute = the mask work done, on any thread; "
             "exposed = how much longer the decode steps took than the same steps (same drafts, same forwards, "
             "same tokens) without the grammar, plus the grammar work done while drafting (the drafting column); "
             f"÷ step = per emitted token ÷ one plain one-token decode step ({result.get('decode_step_us', '?')} µs, "
             "timed in this run; the goal: exposed ≤ 5 %); forward µs / pass = the mean target pass of the run "
             "(prefill and several-token passes included). Steps ms / token: "
             "the replayed steps' time per token with and without the grammar (medians; compare these across "
             "--torch-threads settings: fewer torch threads may hide the mask better but slow the forward). "
             "Same tokens: every route, both replays and the reference agree.", "",
             "| method | route | mask compute µs / token | masks / token | llguidance calls / token | "
             "forward µs / pass | compute ÷ step | exposed µs / token | of which drafting | "
             "exposed ÷ step | steps ms / token: constrained | unconstrained | wall ms / token | same tokens |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['route']} | {r['mask_us_per_token']} | {r['masks_per_token']} | "
                     f"{r['llguidance_calls_per_token']} | {r['forward_us_per_pass']} | "
                     f"{share(r['mask_share_of_step'])} | {r['exposed_us_per_token']} | "
                     f"{r['draft_grammar_us_per_token']} | {share(r['exposed_share_of_step'])} | "
                     f"{r['constrained_step_ms_per_token']} | {r['unconstrained_step_ms_per_token']} | "
                     f"{r['wall_ms_per_token']} | {r['same_tokens']} |")
    return with_warning(lines, result["machine_load"])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m decodelab.constraints.mask_cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:pyco")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--methods", default=METHODS, help=f"comma-separated (default {METHODS})")
    ap.add_argument("--routes", default=",".join(ROUTES), help=f"comma-separated among {', '.join(ROUTES)} "
                    "(default all)")
    ap.add_argument("--limit", type=int, default=None, help="prompts of the json suite (default all 12)")
    ap.add_argument("--executor-threads", type=int, default=None,
                    help="llguidance executor threads for the batched calls (default: llguidance's)")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch.set_num_threads for the whole run (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds of both replays per prompt; a step's time is its median (default 3)")
    ap.add_argument("--out", default=None, help="directory for mask_cost.json and mask_cost.md")
    args = ap.parse_args(argv)
    from .. import methods as registry

    unknown = [m for m in args.methods.split(",") if m not in registry() or registry()[m].kind != "causal"]
    if unknown:
        ap.error(f"unknown or non-causal method {unknown[0]!r}")
    routes = args.routes.split(",")
    if any(r not in ROUTES for r in routes) or len(set(routes)) != len(routes):
        ap.error(f"--routes takes distinct routes among {', '.join(ROUTES)}, got {args.routes!r}")
    from .bench import publish

    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.executor_threads is not None and args.executor_threads < 1:
        ap.error("--executor-threads must be at least 1")
    if args.torch_threads is not None:
        if args.torch_threads < 1:
            ap.error("--torch-threads must be at least 1")
        import torch

        torch.set_num_threads(args.torch_threads)
    result = run(args.model, args.methods.split(","), args.limit, args.backend, args.executor_threads, routes,
                 args.repeats)
    return publish("decodelab.constraints.mask_cost", argv, result, markdown, args.out, "mask_cost")


if __name__ == "__main__":  # pragma: no cover
    main()
