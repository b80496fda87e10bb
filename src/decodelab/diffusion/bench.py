"""`decodelab bench-diffusion`: the diffusion samplers side by side on the `tasks` and `code` suites.

    decodelab bench-diffusion --suite tasks --n 4 --out bench-out/diffusion
    decodelab bench-diffusion --suite code --limit 6 --max-new-tokens 48 --out bench-out/diffusion
    decodelab bench-diffusion --suite tasks --passes-only --n 20      # pass counts only (no wall-time table)

- `tasks`: every task of `decodelab.tasks` (seed 0, held out of training; tasks/train.py). The diffusion
  samplers on `builtin:tasks-diffusion` and, on the same-size `builtin:tasks-ar`, greedy and the lossless
  AR methods. Accuracy is exact (`text.strip() == answer`).
- `code`: the bench `code` suite's prompts (bench/suites.py; the corpus's test split; the model sees
  each prompt's last 192 tokens) on `builtin:pyco-diffusion`: syntax validity (prompt + the completion's complete lines is valid Python
  so far, by `codeop`: complete or incomplete, not an error) and agreement with the one-token-per-step
  output (`llada`, steps = gen_length, the first configuration): the share of items whose tokens are
  identical, and the share of equal positions.
Every item runs at batch size 1, so forward passes and wall time are the row's own. Per configuration:
accuracy (or validity), forward passes per item (APD's AR passes shown beside) and as a share of the
baseline's — each model's first configuration: one token per step (`llada`) for a diffusion model,
`greedy` for the AR model — wall time per item and the speed-up over that baseline.
The machine's load before, during and after is recorded (bench/machine.py) and a warning printed when
it was busy: wall times from a busy machine are not comparable. Writes `diffusion-SUITE.json`, a
Markdown table, and `diffusion-SUITE.png` (accuracy against passes and against wall time; the Pareto
front per suite marked) into `--out`.
"""

from __future__ import annotations

import codeop
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

TASKS_DIFF, TASKS_AR, CODE_DIFF = "builtin:tasks-diffusion", "builtin:tasks-ar", "builtin:pyco-diffusion"
TASK_CONFIGS = [  # (model, method, params); the first is the one-token-per-step baseline
    (TASKS_DIFF, "llada", {}),
    (TASKS_DIFF, "llada", {"block_length": 4}),
    (TASKS_DIFF, "dream", {"alg": "entropy"}),
    (TASKS_DIFF, "fastdllm", {"threshold": 0.9, "block_length": 8}),
    (TASKS_DIFF, "fastdllm", {"threshold": 0.9, "block_length": 8, "cache": "prefix"}),
    (TASKS_DIFF, "fastdllm", {"threshold": 0.9, "block_length": 8, "cache": "dual"}),
    (TASKS_DIFF, "fastdllm", {"threshold": 0.7}),
    (TASKS_DIFF, "localleap", {}),
    (TASKS_DIFF, "adablock", {}),
    (TASKS_DIFF, "ccd", {}),
    (TASKS_DIFF, "learn2pd", {}),
    (TASKS_DIFF, "learn2pd", {"filter": "mlp", "accept": 0.93}),
    (TASKS_DIFF, "learn2pd", {"filter": "stable", "accept": 0.8, "budget": 0.15, "distinct": 2}),
    (TASKS_DIFF, "ebsampler", {"gamma": 0.1}),
    (TASKS_DIFF, "apd", {}),
    (TASKS_DIFF, "sspd", {"draft_length": 4}),
    (TASKS_DIFF, "sspd", {"draft_length": 16, "tree": "chain"}),
    (TASKS_DIFF, "sspd", {"draft_length": 16, "tree": "tree"}),
    (TASKS_AR, "greedy", {}),
    (TASKS_AR, "jacobi", {}),
    (TASKS_AR, "lookahead", {}),
    (TASKS_AR, "pld", {}),
]
CODE_CONFIGS = [
    (CODE_DIFF, "llada", {}),
    (CODE_DIFF, "llada", {"block_length": 16, "steps": 0}),
    (CODE_DIFF, "fastdllm", {"threshold": 0.9, "block_length": 16}),
    (CODE_DIFF, "fastdllm", {"threshold": 0.9, "block_length": 16, "cache": "prefix"}),
    (CODE_DIFF, "fastdllm", {"threshold": 0.9, "block_length": 16, "cache": "dual"}),
    (CODE_DIFF, "fastdllm", {"threshold": 0.7, "block_length": 16}),
    (CODE_DIFF, "localleap", {"block_length": 16}),
    (CODE_DIFF, "sspd", {"draft_length": 4}),
]
SUITES = ("tasks", "code")
CODE_PROMPT_TOKENS = 192  # the model sees the prompt's last tokens (pyco-diffusion trained on 256-token windows)


@dataclass
class Row:
    """One configuration's totals over a suite's items."""

    model: str
    method: str
    params: dict
    n: int = 0
    score: float = 0.0  # tasks: solved; code: syntactically valid
    passes: int = 0
    draft_passes: int = 0  # APD's AR-model passes (not in `passes`)
    wall_s: float = 0.0
    tokens: list = field(default_factory=list)  # per item, for agreement with the baseline

    def summary(self, base: Row) -> dict:
        passes, wall = self.passes / self.n, self.wall_s / self.n
        out = {"model": self.model, "method": self.method, "params": self.params, "n": self.n,
               "accuracy": round(self.score / self.n, 4), "passes_per_item": round(passes, 2),
               "draft_passes_per_item": round(self.draft_passes / self.n, 2),
               "wall_s_per_item": round(wall, 4)}
        if base.passes:  # against the same model's baseline
            out["passes_share_of_baseline"] = round(self.passes / base.passes, 4)
            out["speedup_vs_baseline"] = round(base.wall_s / self.wall_s, 3) if self.wall_s else None
            same = [a == b for a, b in zip(self.tokens, base.tokens)]
            out["identical_to_baseline"] = round(sum(same) / len(same), 4)
            out["position_agreement"] = round(_agreement(self.tokens, base.tokens), 4)
        return out


def _agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of equal positions over the longer of each pair of outputs."""
    equal = sum(sum(x == y for x, y in zip(s, t)) for s, t in zip(a, b))
    total = sum(max(len(s), len(t)) for s, t in zip(a, b))
    return equal / total if total else 1.0


def valid_python_prefix(prompt: str, completion: str) -> bool:
    """prompt + the completion's complete lines parse as Python so far (complete or incomplete input)."""
    text = prompt + completion[: completion.rfind("\n") + 1] if "\n" in completion else prompt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            codeop.compile_command(text, symbol="exec")
        except (SyntaxError, ValueError, OverflowError):
            return False
    return True


def task_items(n: int) -> list[tuple[str, str, int]]:
    """(prompt, answer, max_new_tokens) for n items of every task, seed 0."""
    from ..tasks import make, names

    return [(it.prompt, it.answer, 24) for t in names() for it in make(t, n, 0)]


def code_items(limit: int, max_new_tokens: int) -> list[tuple[str, str, int]]:
    from ..bench.suites import load_suite

    return [(p.text, "", max_new_tokens) for p in load_suite("code").prompts[:limit]]


def run_config(lm, method: str, params: dict, items, suite: str, model: str) -> Row:
    from .. import generate

    row = Row(model, method, params)
    for prompt, answer, max_new in items:
        shown = prompt if suite == "tasks" else lm.encode(prompt)[-CODE_PROMPT_TOKENS:]
        g = generate(lm, shown, method=method, max_new_tokens=max_new, **params)
        ok = g.text.strip() == answer if suite == "tasks" else valid_python_prefix(prompt, g.text)
        row.n, row.score, row.passes = row.n + 1, row.score + ok, row.passes + g.stats.forward_passes
        row.draft_passes += g.stats.draft_forward_passes
        row.wall_s += g.stats.wall_time_s
        row.tokens.append(list(g.token_ids))
    return row


def run_suite(suite: str, n: int, limit: int, max_new_tokens: int, progress=print) -> dict:
    """Run one suite; returns its results (rows as dicts, machine load)."""
    from .. import load
    from ..bench import machine

    configs = TASK_CONFIGS if suite == "tasks" else CODE_CONFIGS
    items = task_items(n) if suite == "tasks" else code_items(limit, max_new_tokens)
    models = {m: load(m) for m in dict.fromkeys(c[0] for c in configs)}
    before, start, t0 = machine.snapshot(), machine.sample(), time.perf_counter()
    rows: list[Row] = []
    for model, method, params in configs:
        rows.append(run_config(models[model], method, params, items, suite, model))
        progress(f"{suite}: {model} {method} {params} done")
    load_info = machine.report(before, machine.others_share(start, machine.sample()), machine.snapshot())
    base = {}  # each model's first configuration is its baseline (stepwise llada; AR greedy)
    for r in rows:
        base.setdefault(r.model, r)
    return {"suite": suite, "items": len(items), "total_s": round(time.perf_counter() - t0, 1),
            "machine_load": load_info, "rows": [r.summary(base[r.model]) for r in rows]}


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, accuracy) no other point beats on both (lower cost, higher accuracy)."""
    return [i for i, (c, a) in enumerate(points)
            if not any((c2 <= c and a2 >= a) and (c2, a2) != (c, a) for c2, a2 in points)]


def table(result: dict, passes_only: bool = False) -> str:
    metric = "accuracy" if result["suite"] == "tasks" else "syntax valid"
    head = f"| model | method | params | {metric} | passes/item | passes vs baseline | identical to baseline |"
    if not passes_only:
        head += " wall s/item | speed-up |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in result["rows"]:
        cells = [r["model"].removeprefix("builtin:"), r["method"], _shown(r["params"]), f"{r['accuracy']:.1%}",
                 f"{r['passes_per_item']:.2f}" + (f" (+{r['draft_passes_per_item']:.2f} AR)"
                                                   if r["draft_passes_per_item"] else ""), _pct(r.get("passes_share_of_baseline")),
                 _pct(r.get("identical_to_baseline"))]
        if not passes_only:
            cells += [f"{r['wall_s_per_item']:.4f}", f"{r['speedup_vs_baseline']:.2f}×" if r.get("speedup_vs_baseline") else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _shown(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"


def _pct(x) -> str:
    return "–" if x is None else f"{x:.1%}"


def plot(result: dict, path: Path) -> Path | None:
    """Accuracy against passes/item and against wall s/item, Pareto fronts marked (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "passes_per_item", "forward passes per item"),
                           (axes[1], "wall_s_per_item", "wall time per item (s)")):
        pts = [(r[key], r["accuracy"]) for r in result["rows"]]
        front = sorted(pareto(pts), key=lambda i: pts[i][0])
        for r, (x, y) in zip(result["rows"], pts):
            ax.scatter(x, y, marker="s" if r["model"] == TASKS_AR else "o")
            ax.annotate(f"{r['method']} {_shown(r['params'])}"[:32], (x, y), fontsize=6)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", lw=0.8, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy" if result["suite"] == "tasks" else "syntax valid")
        ax.legend(fontsize=7)
    fig.suptitle(f"diffusion samplers, suite {result['suite']} ({result['items']} items)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def cmd(args) -> None:
    from ..bench.machine import set_threads, warning

    set_threads(args.threads)
    if args.n < 1 or args.limit < 1 or args.max_new_tokens < 1:
        raise UserError("--n, --limit and --max-new-tokens must be ≥ 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for suite in args.suite or ["tasks"]:
        if suite not in SUITES:
            raise UserError(f"--suite must be one of {list(SUITES)}, got {suite!r}")
        res = run_suite(suite, args.n, args.limit, args.max_new_tokens,
                        progress=(lambda s: None) if args.json else print)
        (out / f"diffusion-{suite}.json").write_text(json.dumps(res, indent=1) + "\n")
        (out / f"diffusion-{suite}.md").write_text(table(res, args.passes_only) + "\n")
        plot(res, out / f"diffusion-{suite}.png")
        if not args.json:
            print(table(res, args.passes_only))
            if warning(res["machine_load"]):
                print(warning(res["machine_load"]))
        results.append(res)
    if args.json:
        print(json.dumps({"suites": results}))


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench-diffusion", help="diffusion samplers on the tasks / code suites: accuracy, "
                              "forward passes, wall time (Pareto plots)")
    p.add_argument("--suite", action="append", choices=SUITES, help="tasks (default) and/or code (repeatable)")
    p.add_argument("--n", type=int, default=4, help="tasks: items per task (seed 0)")
    p.add_argument("--limit", type=int, default=6, help="code: prompts from the code suite")
    p.add_argument("--max-new-tokens", type=int, default=48, help="code: canvas length (gen_length)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default="bench-out/diffusion", help="folder for JSON, Markdown and PNG")
    p.add_argument("--passes-only", action="store_true", help="leave wall time out of the printed table")
    p.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    p.set_defaults(func=cmd)
