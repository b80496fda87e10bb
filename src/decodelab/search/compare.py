"""Quality against cost of decoding methods on the `code` suite: `decodelab bench --quality`.

    decodelab bench --quality [--model builtin:pyco] [--max-new-tokens 48] [--limit 12] [--out DIR]
    python -m decodelab.search.compare [same flags]   (the table only)

Methods that look at W candidates per step (beam K=W, contrastive k=W, best-of-N N=W) are run at the
same W — each forward pass then computes W positions per prompt, so forward passes × W is the cost —
next to the width-1 methods (greedy, DoLa, sampling), after the design of Shi et al.,
"A Thorough Examination of Decoding Methods in the Era of LLMs" (arXiv:2402.13925). Per method:
forward passes of the batch (all prompts together), syntax validity (`ast.parse` of the prompt + completion, cut at the end of
the function: the first non-blank line back at column 0, and at the last complete line), mean token
log-likelihood under the model (no processors), rep-2 (share of repeated token bigrams in a
completion) and distinct-2 (unique bigrams / all bigrams over the method's completions), edit
similarity of the completed function body to the held-out reference (the rest of the function in the
test-split file the prompt comes from), and the target's perplexity of the output.

Cost is counted, never timed here: forward passes per prompt (those of the batch for a batched
method, the mean over prompts for one run one prompt at a time) and W (the most positions a pass
computes per prompt), so cost = passes × W per prompt — exact for beam, contrastive and best-of-N, an
upper bound for lookback and cntp, which widen only on alarm / uncertain steps; wall time is recorded in the JSON for a run on an idle machine. The
Pareto front (no other method is at most as costly and strictly better) is marked and plotted.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
import time
from pathlib import Path

import torch

from ..api import generate_batch
from ..errors import UserError
from ..model import load


def method_grid(width: int) -> list[tuple[str, str, dict, int]]:
    """(label, method, params, W): deterministic then stochastic methods on a small grid, after Shi et
    al.; W = positions each forward pass computes per prompt (beams, candidates, samples)."""
    w = width
    return [
        ("greedy", "greedy", {}, 1),
        ("beam K=2", "beam", {"num_beams": 2}, 2),
        (f"beam K={w}", "beam", {"num_beams": w}, w),
        (f"contrastive k={w} a=0.6", "contrastive", {"top_k": w, "penalty_alpha": 0.6}, w),
        ("dola (high)", "dola", {}, 1),
        ("deco a=0.6", "deco", {}, 1),
        ("self_infill tau=0.25", "self_infill", {}, 1),
        (f"lookback k={w} a=0.6", "lookback", {"num_candidates": w}, w),
        ("superposed k=3", "superposed", {}, 1),  # k drafts, one position per pass  # W only on alarm steps: cost is a bound
        ("sample T=0.8 p=0.95", "sample", {"temperature": 0.8, "top_p": 0.95}, 1),
        ("sample T=1 min_p=0.1", "sample", {"temperature": 1.0, "min_p": 0.1}, 1),
        ("typical 0.95", "sample", {"temperature": 1.0, "typical_p": 0.95}, 1),
        ("sample top_k=10", "sample", {"top_k": 10}, 1),
        ("bregman a=1 l=0.05", "sample", {"bregman_alpha": 1.0, "bregman_lambda": 0.05}, 1),
        ("bregman a=2 l=0.05", "sample", {"bregman_alpha": 2.0, "bregman_lambda": 0.05}, 1),
        ("autodeco", "autodeco", {}, 1),  # pyco's shipped heads: skipped on other models
        (f"best_of_n N={w} T=0.8", "best_of_n", {"num_samples": w, "temperature": 0.8, "top_p": 0.95}, w),
        (f"mbr N={w} T=0.8", "mbr", {"num_samples": w, "temperature": 0.8, "top_p": 0.95}, w),
        (f"cntp N_max={w}", "cntp", {"max_trials": w}, w),  # W only on uncertain steps: cost is a bound
    ]


def function_source(prompt: str, completion: str) -> str:
    """The prompt + completion up to the end of the function (and its last complete line)."""
    text = prompt + completion
    lines = text.split("\n")
    start = len(prompt.split("\n"))
    end = next((i for i in range(start, len(lines)) if lines[i].strip() and not lines[i][0].isspace()), len(lines))
    if end == len(lines) and not text.endswith("\n"):
        end -= 1  # the last line may be cut mid-token
    return "\n".join(lines[:max(end, start)])


def syntax_valid(prompt: str, completion: str) -> bool:
    try:
        ast.parse(function_source(prompt, completion))
        return True
    except SyntaxError:
        return False


def reference_body(prompt: str) -> str:
    """The held-out rest of the function a code-suite prompt starts (from its test-split file)."""
    for f in _test_files():
        at = f.text.find(prompt)
        if at >= 0:
            rest = f.text[at + len(prompt):]
            return function_source(prompt, rest)[len(prompt):]
    return ""


_TEST_FILES: list = []


def _test_files() -> list:
    from ..training.corpus import load_split

    if not _TEST_FILES:
        _TEST_FILES.extend(load_split("test"))
    return _TEST_FILES


def rep2(ids: list[int]) -> float:
    grams = list(zip(ids, ids[1:]))
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


@torch.inference_mode()
def mean_logprob(lm, prompt: list[int], completion: list[int]) -> float:
    ids = torch.tensor([prompt + completion])
    logp = lm.session(1).forward(ids).log_softmax(-1)[0]
    n = len(prompt)
    return float(sum(logp[n + i - 1, t] for i, t in enumerate(completion)) / max(len(completion), 1))


def evaluate(lm, prompts: list[str], entry: tuple, max_new: int, seed: int) -> dict:
    """Run one grid entry over all prompts (one batch) and score its completions."""
    label, method, params, width = entry
    t0 = time.perf_counter()
    gens = generate_batch(lm, prompts, method=method, max_new_tokens=max_new, seed=seed, **params)
    wall = time.perf_counter() - t0
    grams = [g for x in gens for g in zip(x.token_ids, x.token_ids[1:])]
    logprob = sum(mean_logprob(lm, lm.encode(p), g.token_ids) for p, g in zip(prompts, gens)) / len(gens)
    # per prompt: a batched method's rows share the batch's count; a one-at-a-time method has its own
    passes = round(sum(g.stats.forward_passes for g in gens) / len(gens), 2)
    return {
        "method": label, "name": method, "params": params, "width": width, "forward_passes": passes,
        "cost": round(passes * width, 2),  # positions computed per prompt (a prefill counts as one pass)
        "syntax_valid": sum(syntax_valid(p, g.text) for p, g in zip(prompts, gens)) / len(prompts),
        "edit_sim": sum(body_similarity(lm, p, g.text) for p, g in zip(prompts, gens)) / len(prompts),
        "mean_logprob": logprob, "perplexity": math.exp(-logprob),
        "rep_2": sum(rep2(g.token_ids) for g in gens) / len(gens),
        "distinct_2": len(set(grams)) / max(len(grams), 1),
        "log_eps_per_token": distortion_per_token(gens),
        "wall_time_s": wall,
    }


def distortion_per_token(gens) -> float | None:
    """Mean over completions of log ε / tokens = −Σ_t log Z_t / n (Stats.log_distortion, Kempton & Burrell,
    arXiv:2503.21929); None for methods that do not draw every token from the sampler."""
    if any(g.stats.log_z is None for g in gens):
        return None
    return sum(g.stats.log_distortion / max(len(g.token_ids), 1) for g in gens) / len(gens)


def body_similarity(lm, prompt: str, completion: str) -> float:
    """Token edit similarity of the completed function body to the held-out reference body."""
    from .meta import edit_similarity

    body = function_source(prompt, completion)[len(prompt):]
    return edit_similarity(lm.encode(body), lm.encode(reference_body(prompt)))


def pareto(rows: list[dict], metric: str) -> list[bool]:
    """On the front: no other row costs at most as much with a strictly higher metric (or costs
    strictly less with an equal one)."""
    def beaten(r, o):
        return (o["cost"] <= r["cost"] and o[metric] > r[metric]) or (o["cost"] < r["cost"] and o[metric] >= r[metric])
    return [not any(beaten(r, o) for o in rows if o is not r) for r in rows]


METRICS = ("syntax_valid", "edit_sim")


def markdown(rows: list[dict]) -> str:
    fronts = {m: pareto(rows, m) for m in METRICS}
    out = ["| method | W | forward passes | cost (passes × W) | syntax valid | edit sim | perplexity | rep-2 "
           "| distinct-2 | log ε / token | Pareto (syntax / edit) |", "|---" * 11 + "|"]
    for i, r in enumerate(rows):
        front = " / ".join("✓" if fronts[m][i] else "·" for m in METRICS)
        out.append(f"| {r['method']} | {r['width']} | {r['forward_passes']} | {r['cost']} | {r['syntax_valid']:.2f} | "
                   f"{r['edit_sim']:.3f} | {r['perplexity']:.2f} | {r['rep_2']:.3f} | {r['distinct_2']:.3f} | "
                   f"{_or_dash(r.get('log_eps_per_token'))} | {front} |")
    return "\n".join(out)


def _or_dash(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def plot(rows: list[dict], path: Path) -> None:
    """Quality against cost, one panel per metric, the Pareto front drawn as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(6 * len(METRICS), 4.5))
    for ax, metric in zip(axes, METRICS):
        front = sorted((r["cost"], r[metric]) for r, on in zip(rows, pareto(rows, metric)) if on)
        line = front + [(max(r["cost"] for r in rows), front[-1][1])]
        ax.step([c for c, _ in line], [q for _, q in line], where="post", color="tab:red", label="Pareto front")
        ax.scatter([c for c, _ in front], [q for _, q in front], marker="s", s=120, facecolors="none",
                   edgecolors="tab:red")
        for r in rows:
            ax.scatter(r["cost"], r[metric], color="tab:blue" if r["width"] == 1 else "tab:green")
            ax.annotate(r["method"], (r["cost"], r[metric]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("cost: forward passes × positions per pass, per prompt")
        ax.set_ylabel(metric.replace("_", " "))
        ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_quality(lm, limit: int | None, max_new: int, seed: int, width: int, out: Path | None,
                grid: list[tuple] | None = None) -> dict:
    """The whole comparison (`grid` default: `method_grid(width)`): rows, machine load, and (with `out`)
    quality.json/.md/.png written there."""
    from ..bench import machine
    from ..bench.suites import load_suite

    prompts = [p.text for p in load_suite("code").prompts[:limit]]
    before, start = machine.snapshot(), machine.sample()
    rows = [evaluate(lm, prompts, entry, max_new, seed) for entry in runnable(lm, grid or method_grid(width))]
    load_info = machine.report(before, machine.others_share(start, machine.sample()), machine.snapshot())
    for m in METRICS:
        for r, on in zip(rows, pareto(rows, m)):
            r[f"pareto_{m}"] = on
    result = {"schema": "decodelab.quality/1", "model": lm.name, "backend": lm.backend, "suite": "code",
              "prompts": len(prompts), "max_new_tokens": max_new, "seed": seed, "width": width,
              "machine_load": load_info, "rows": rows}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "quality.json").write_text(json.dumps(result, indent=1))
        (out / "quality.md").write_text(markdown(rows) + "\n")
        plot(rows, out / "quality.png")
    return result


def runnable(lm, grid: list[tuple]) -> list[tuple]:
    """The grid entries whose method can run on lm (a method's `supports(lm)` gives a reason it cannot)."""
    from ..methods import methods

    table = methods()
    return [e for e in grid if getattr(table[e[1]].run, "supports", lambda lm: None)(lm) is None]


def bench_quality(args) -> None:
    """`decodelab bench --quality`: the comparison with bench's flags (--model, --limit, --max-new-tokens,
    --seed, --out, --json, --backend, --device, --dtype, --threads)."""
    from ..bench import machine

    if args.suite not in (None, ["code"]):
        raise UserError("bench --quality runs on the code suite (it needs the held-out function bodies)")
    machine.set_threads(args.threads)
    lm = load(args.model, device=args.device, dtype=args.dtype, backend=args.backend,
              allow_pickle=args.allow_pickle, trust_remote_code=args.trust_remote_code)
    result = run_quality(lm, args.limit, args.max_new_tokens, args.seed, QUALITY_WIDTH, Path(args.out))
    print(markdown(result["rows"]))
    print(f"wrote {args.out}/quality.json, quality.md, quality.png", file=sys.stderr)
    if args.json:
        print(json.dumps({"out": str(args.out), "rows": result["rows"]}))


QUALITY_WIDTH = 4


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m decodelab.search.compare", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="builtin:pyco")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--width", type=int, default=QUALITY_WIDTH)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write quality.json/.md/.png here")
    args = ap.parse_args(argv)
    result = run_quality(load(args.model), args.limit, args.max_new_tokens, args.seed, args.width,
                         Path(args.out) if args.out else None)
    print(markdown(result["rows"]))
    print(json.dumps(result["rows"]))
    return result["rows"]


if __name__ == "__main__":
    main()
