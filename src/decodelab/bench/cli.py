"""`decodelab bench`: arguments, the interleaved run loop with a live table, and the outputs."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from ..errors import UserError

DEFAULT_SUITES = ["code", "edit", "long"]


def add_arguments(p) -> None:
    p.add_argument("--model", default=None, help="model (default builtin:pyco)")
    p.add_argument("--suite", "--suites", dest="suite", action="append", default=None,
                   help="suite name or a .jsonl file (repeatable, or comma-separated; `json` runs every method "
                        "under each prompt's JSON schema)")
    p.add_argument("--methods", default=None, help="comma-separated methods (greedy is always the baseline)")
    p.add_argument("--all", action="store_true", help="every registered method")
    p.add_argument("-p", "--param", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                   help="parameter for one method (method.key=value) or for all (key=value)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--limit", type=int, default=None, help="at most this many prompts per suite")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--draft", default="auto",
                   help="draft model for the draft methods (speculative, tree) and transformers' assisted "
                        "generation; auto = the model's embedded draft, if it has one")
    p.add_argument("--no-peers", action="store_true", help="skip transformers' generate baselines")
    p.add_argument("--dist-seeds", type=int, default=200, help="seeds per prompt for the sampling exactness test")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="auto", choices=("auto", "native", "transformers", "llamacpp"),
                   help="model backend (default auto: native for Llama-family models)")
    p.add_argument("--dtype", default=None, help="float32 (default on CPU), bfloat16 or float16")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--batch-size", default="1",
                   help="rows running at once: each suite goes through one generate_batch call with max_batch = this "
                        "(a finished row's place goes to the next prompt; the peer, transformers' batched greedy, runs "
                        "consecutive groups of this size), or a list such as 1,4,8,16: one run per size and a sweep table")
    p.add_argument("--out", default="bench-out")
    p.add_argument("--json", action="store_true", help="end stdout with one JSON summary object")
    p.add_argument("--list", action="store_true", help="list suites and methods, then exit")
    p.add_argument("--quality", action="store_true",
                   help="quality vs cost of search/meta/sampling methods on the code suite, with a Pareto plot "
                        "(docs/SEARCH.md; decodelab.search.compare)")
    from ..cli import add_load_flags

    add_load_flags(p)
    p.set_defaults(func=run)


def parse_bench_params(pairs: list[str]) -> dict[str, dict]:
    """`method.key=value` / `key=value` → {method or '*': {key: typed value}}."""
    from ..cli import parse_params
    from ..methods import methods
    from ..processors import SAMPLING_DEFAULTS

    table = methods()
    grouped: dict[str, list[str]] = {}
    for pair in pairs:
        head = pair.split("=", 1)[0]
        method, _, _key = head.rpartition(".")
        if method and method not in table:
            raise UserError(f"parameter {pair!r}: unknown method {method!r}")
        grouped.setdefault(method or "*", []).append(pair.split(".", 1)[1] if method else pair)
    return {m: parse_params(ps, table[m].params if m in table else SAMPLING_DEFAULTS) for m, ps in grouped.items()}


def _print_list() -> None:
    from ..methods import methods
    from .suites import list_suites

    for name, desc in list_suites().items():
        print(f"suite  {name:8s} {desc}")
    for name, m in methods().items():
        print(f"method {name:12s} {'lossless' if m.lossless else 'lossy':8s} {m.description}")


def run(args) -> None:
    from ..methods import methods

    if args.list:
        return _print_list()
    if args.quality:
        from ..search.compare import bench_quality

        return bench_quality(args)
    if any(s.strip() == "digits" for arg in args.suite or [] for s in arg.split(",")):
        from ..image.bench import run_suite  # image models: its own protocol (docs/VISUAL.md)

        return run_suite(args)
    if args.repeats < 1 or args.max_new_tokens < 1:
        raise UserError("--repeats and --max-new-tokens must be ≥ 1")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be ≥ 1 (prompts per suite), got {args.limit}")
    from .sweep import batch_sizes, sweep

    sizes = batch_sizes(args.batch_size)
    if args.dist_seeds < 2:
        raise UserError(f"--dist-seeds must be ≥ 2, got {args.dist_seeds}")
    names = sorted(n for n in methods() if n != "sample") if args.all else \
        [m.strip() for m in (args.methods or "greedy,speculative,pld").split(",") if m.strip()]
    params = parse_bench_params(args.param)
    if len(sizes) > 1:
        summary = sweep(args, names, params, benchmark)
        from .sweep import markdown as sweep_markdown

        print(json.dumps(summary) if args.json else sweep_markdown(summary))
        return None
    args.batch_size = sizes[0]
    results = benchmark(args, names, params)
    from .machine import warning

    if warning(results["machine"]["load"]):
        print(warning(results["machine"]["load"]))
    for method, reason in results["config"].get("skipped", {}).items():
        print(f"bench: skipped {method}: {reason}", file=sys.stderr)
    from .report import write

    paths = write(results, Path(args.out))
    print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    if args.json:
        print(json.dumps({"out": str(args.out), "aggregates": results["aggregates"],
                          "skipped": results["config"].get("skipped", {})}))
    else:
        from .report import markdown

        print(markdown(results))


def benchmark(args, names: list[str], params: dict[str, dict]) -> dict:
    from ..model import load
    from ..proposers.draft_model import resolve_draft
    from . import machine, runner
    from .peers import drop_unavailable
    from .suites import load_suite

    suites = [load_suite(s) for arg in (args.suite or DEFAULT_SUITES) for s in arg.split(",") if s.strip()]
    constraints = {s.name: {p.id: p.constraint for p in s.prompts if p.constraint} for s in suites}
    if args.batch_size > 1 and any(constraints.values()):
        raise UserError("constrained suites (e.g. json) run at --batch-size 1: one constraint per prompt")
    options = {"allow_pickle": args.allow_pickle, "trust_remote_code": args.trust_remote_code}
    machine.set_threads(args.threads)
    lm = load(args.model, device=args.device, dtype=args.dtype, backend=args.backend, **options)
    names, skipped = _draft_methods(lm, names, params, args.draft, options, args.all)
    draft = _maybe_draft(lm, args.draft, resolve_draft)
    entries = runner.make_entries(names, params, not args.no_peers, draft is not None, args.batch_size)
    entries = drop_unavailable(lm, entries, skipped)  # e.g. the llama.cpp peer without llama-cpp-python
    entries = _drop_refusing(lm, entries, constraints, skipped)
    temperature = params.get("*", {}).get("temperature", 0.0)
    prompts = {s.name: runner.prompt_ids(lm, s, args.max_new_tokens)[: args.limit] for s in suites}
    before, start = machine.snapshot(), machine.sample()
    records = _run_all(lm, entries, prompts, args, draft, constraints)
    load_info = machine.report(before, machine.others_share(start, machine.sample()), machine.snapshot())
    results = {"schema": "decodelab.bench/1", "machine": runner.machine_info(lm), "config": {
        "command": "decodelab bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"]
        else "decodelab bench (API)", "model": lm.name, "suites": [s.name for s in suites],
        "suite_versions": {s.name: s.version for s in suites},
        "methods": [{"label": e.label, "method": e.method, "params": e.params, "lossless": e.lossless} for e in entries],
        "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "batch_size": args.batch_size, "temperature": temperature, "seed": args.seed,
        "skipped": skipped},
        "records": records}
    results["machine"]["load"] = load_info
    results["machine"]["backend"] = lm.backend
    results["aggregates"] = runner.aggregate(records, entries, [s.name for s in suites])
    _exactness(results, lm, entries, prompts, temperature, args, draft, constraints)
    return results


def _drop_refusing(lm, entries, constraints: dict, skipped: dict) -> list:
    """Without the methods that refuse a constraint, when a suite is constrained (reasons in `skipped`)."""
    first = next((c for per in constraints.values() for c in per.values()), None)
    if first is None:
        return entries
    from ..constraints.bench import refusals

    refused = refusals(lm, entries, first)
    if "greedy" in refused:
        raise UserError(f"greedy {refused['greedy']}")
    skipped.update(refused)
    return [e for e in entries if e.label not in refused]


def _draft_methods(lm, names: list[str], params: dict[str, dict], default: str, options: dict,
                   all_methods: bool = False):
    """Give each draft method its draft (-p METHOD.draft, -p draft, --draft, in that order) and load it;
    skip the draft methods when no draft is named and the model has no embedded one."""
    from ..methods import methods
    from ..model.lm import DRAFTS
    from ..proposers.draft_model import resolve_draft

    table, kept, skipped = methods(), [], {}
    shared_draft = params.get("*", {}).pop("draft", None)  # -p draft=X: for the draft methods only
    kind = getattr(lm, "kind", "causal")
    for name in names:
        if all_methods and (getattr(table[name], "kind", "causal") != kind
                            or any(p.default is None for p in table[name].specs.values())
                            or getattr(table[name].run, "supports", lambda _: None)(lm)):
            continue  # --all: every method this model can run (kind, FIM tokens) with no required parameter (dba)
        if name not in table or "draft" not in table[name].specs:
            kept.append(name)
            continue
        draft = params.get(name, {}).get("draft") or shared_draft or default
        if draft == "auto" and lm.name not in DRAFTS:
            skipped[name] = (f"needs a draft model with the target's vocabulary; {lm.name} has no embedded "
                             f"draft — enable it with --draft DIR (or -p {name}.draft=DIR)")
            continue
        resolve_draft(lm, draft, **options)  # a named draft that cannot load or does not fit is an error
        params.setdefault(name, {})["draft"] = draft
        kept.append(name)
    return kept, skipped


def _maybe_draft(lm, name, resolve):
    try:
        return resolve(lm, name)
    except Exception:  # noqa: BLE001 - no draft simply means no assisted-generation peer
        return None


def _run_all(lm, entries, prompts, args, draft, constraints=None) -> list[dict]:
    from rich.console import Console
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .runner import run_batch, run_one

    if args.batch_size > 1:  # the whole suite at once, at most batch_size rows running (generate_batch's max_batch)
        prompts = {suite: _batches(plist, len(plist)) for suite, plist in prompts.items()}
    total = sum(len(p) for p in prompts.values()) * args.repeats * len(entries)
    progress = Progress(TextColumn("bench"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.description}"))
    task = progress.add_task("", total=total)
    records: list[dict] = []
    console = Console(stderr=True)
    first_suite, plist = next(iter(prompts.items()))
    first = plist[0]
    constraints = constraints or {}
    for e in entries:  # warm-up, not recorded
        if args.batch_size > 1:
            run_batch(lm, e, first[1][: args.batch_size], min(8, first[2]), args.seed, args.batch_size)
        else:
            constraint = None if e.is_peer else constraints.get(first_suite, {}).get(first[0])
            run_one(lm, e, first[1], min(8, first[2]), args.seed, draft, constraint)
    with Live(_live_table(records, entries, progress), console=console, refresh_per_second=4) as live:
        for suite, plist in prompts.items():
            for pid, ids, n in plist:
                for rep in range(args.repeats):
                    constraint = constraints.get(suite, {}).get(pid)
                    for e in entries:  # interleaved: A B C, A B C …
                        progress.update(task, description=f"{suite} {e.label}")
                        if constraint and e.is_peer:  # transformers' generate has no grammar constraints
                            progress.advance(task)
                            continue
                        rec = run_batch(lm, e, ids, n, args.seed + rep, args.batch_size) if args.batch_size > 1 \
                            else run_one(lm, e, ids, n, args.seed + rep, draft, constraint)
                        records.append({"suite": suite, "prompt_id": pid, "method": e.label, "repeat": rep, **rec})
                        progress.advance(task)
                live.update(_live_table(records, entries, progress))
    return records


def _batches(plist: list[tuple[str, list[int], int]], size: int) -> list[tuple[str, list[list[int]], int]]:
    """Consecutive prompts grouped `size` at a time: (joined ids, rows, the group's max_new_tokens)."""
    groups = [plist[i : i + size] for i in range(0, len(plist), size)]
    return [("+".join(p[0] for p in g), [p[1] for p in g], min(p[2] for p in g)) for g in groups]


def _live_table(records, entries, progress):
    from rich.console import Group
    from rich.table import Table

    t = Table("method", "tokens/s", "vs greedy", "τ", title="running totals")
    tps = {}
    for e in entries:
        rs = [r for r in records if r["method"] == e.label]
        tps[e.label] = sum(r["new_tokens"] for r in rs) / max(1e-9, sum(r["wall_time_s"] for r in rs)) if rs else 0
    for e in entries:
        rs = [r for r in records if r["method"] == e.label and "steps" in r]
        tau = sum(r["decode_tokens"] for r in rs) / max(1, sum(r["steps"] for r in rs)) if rs else 0
        ratio = tps[e.label] / tps["greedy"] if tps.get("greedy") else 0
        t.add_row(e.label, f"{tps[e.label]:.1f}", f"{ratio:.2f}×", f"{tau:.2f}" if rs else "—")
    return Group(progress, t)


def _exactness(results, lm, entries, prompts, temperature, args, draft, constraints=None) -> None:
    """Fill exact / mismatch / distribution_pvalue in the aggregates: a method that decodes greedily is
    compared token for token with greedy; one that samples (at its own temperature) is checked by the
    distribution test against `sample` — never its sampled tokens against greedy's."""
    from ..methods import methods
    from .runner import ALPHA, distribution_check, first_mismatch

    records = results["records"]
    for a in results["aggregates"]:
        entry = next(e for e in entries if e.label == a["method"])
        if not entry.lossless:
            continue
        if entry.is_peer or entry.method not in methods():
            sampled = temperature > 0
        else:  # a method samples at its own default temperature unless -p says otherwise (sample: 1.0)
            sampled = methods()[entry.method].check_params(entry.params)["temperature"] > 0
        if not sampled:
            a["exact"], a["mismatch"] = True, None
            ref = {r["prompt_id"]: r["token_ids"] for r in records
                   if r["suite"] == a["suite"] and r["method"] == "greedy" and r["repeat"] == 0}
            a["mismatched_prompts"] = 0
            for r in records:
                if r["suite"] == a["suite"] and r["method"] == a["method"] and r["repeat"] == 0:
                    pos = first_mismatch(r["token_ids"], ref[r["prompt_id"]])
                    if pos is not None:
                        a["mismatched_prompts"] += 1
                        if a["exact"]:
                            a["exact"], a["mismatch"] = False, {"prompt_id": r["prompt_id"], "position": pos}
        elif entry.method not in ("sample",) and not entry.is_peer:
            short = [ids[:64] for _, ids, _ in prompts[a["suite"]][:2]]
            per = (constraints or {}).get(a["suite"], {})
            kept = [per.get(pid) for pid, _, _ in prompts[a["suite"]][:2]]
            a["distribution_pvalue"] = round(distribution_check(lm, entry, short, args.dist_seeds, draft, kept), 6)
            a["exact"] = a["distribution_pvalue"] > ALPHA
