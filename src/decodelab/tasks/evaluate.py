"""Exact-answer accuracy of a model and a decoding method on the synthetic tasks.

    python -m decodelab.tasks.evaluate --model builtin:tasks-diffusion --method llada --n 100 \
        [--seed 0] [--max-new-tokens 24] [--batch-size 50] [-p block_length=8 ...] [--json]
    python -m decodelab.tasks.evaluate --sweep --n 50 --batch-size 1   # every sampler, both models

Items come from `decodelab.tasks.make(task, n, seed)` (seed 0 is held out of training, see
train.py); an item is solved when `generation.text.strip() == item.answer`. Reports, per task and
overall, the accuracy and the mean forward passes per item — the cost unit of diffusion samplers.
A batch runs until its last row is done and each row is charged the batch's passes, so with
`--batch-size` > 1 the figure is an upper bound on a row's own cost; `--batch-size 1` measures it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from .generators import make, names


@dataclass
class TaskScore:
    task: str
    n: int
    solved: int
    forward_passes: float  # per item

    @property
    def accuracy(self) -> float:
        return self.solved / self.n if self.n else 0.0


def score(lm, method: str, task: str, n: int, seed: int = 0, max_new_tokens: int = 24, batch_size: int = 50,
          **params) -> TaskScore:
    """Accuracy of `method` on `n` items of `task` (batched `batch_size` prompts at a time)."""
    from .. import generate_batch

    items = make(task, n, seed)
    solved, passes = 0, 0.0
    for i in range(0, n, batch_size):
        chunk = items[i:i + batch_size]
        gens = generate_batch(lm, [it.prompt for it in chunk], method=method, max_new_tokens=max_new_tokens,
                              seed=seed, **params)
        solved += sum(g.text.strip() == it.answer for g, it in zip(gens, chunk))
        passes += sum(g.stats.forward_passes for g in gens)
    return TaskScore(task, n, solved, passes / n if n else 0.0)


def evaluate(lm, method: str, n: int, seed: int = 0, tasks: list[str] | None = None, **kw) -> list[TaskScore]:
    return [score(lm, method, t, n, seed, **kw) for t in tasks or names()]


SWEEP = [  # (model, method, params): the table in docs/DIFFUSION.md
    ("builtin:tasks-ar", "greedy", {}),
    ("builtin:tasks-diffusion", "llada", {}),
    ("builtin:tasks-diffusion", "llada", {"block_length": 4}),
    ("builtin:tasks-diffusion", "dream", {"alg": "entropy"}),
    ("builtin:tasks-diffusion", "fastdllm", {"threshold": 0.9}),
    ("builtin:tasks-diffusion", "fastdllm", {"threshold": 0.7}),
    ("builtin:tasks-diffusion", "localleap", {}),
    ("builtin:tasks-diffusion", "ccd", {}),
    ("builtin:tasks-diffusion", "learn2pd", {}),
    ("builtin:tasks-diffusion", "apd", {}),
]


def sweep(n: int, seed: int, batch_size: int, max_new_tokens: int) -> None:
    """Print the SWEEP as a Markdown table: accuracy per task, overall, forward passes per item."""
    from .. import load

    models: dict = {}
    print("| model | method | params | " + " | ".join(names()) + " | overall | passes/item |")
    print("|" + "---|" * (len(names()) + 5))
    for model, method, params in SWEEP:
        lm = models.setdefault(model, load(model))
        scores = evaluate(lm, method, n, seed, max_new_tokens=max_new_tokens, batch_size=batch_size, **params)
        acc = sum(s.solved for s in scores) / sum(s.n for s in scores)
        passes = sum(s.forward_passes * s.n for s in scores) / sum(s.n for s in scores)
        cells = " | ".join(f"{s.accuracy:.0%}" for s in scores)
        shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"
        print(f"| {model.removeprefix('builtin:')} | {method} | {shown} | {cells} | {acc:.1%} | {passes:.2f} |",
              flush=True)


def _param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"error: -p expects KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def main(argv: list[str] | None = None) -> None:
    from .. import load

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tasks-diffusion")
    parser.add_argument("--method", default=None, help="default: llada for diffusion models, greedy otherwise")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--tasks", default=None, help="comma-separated subset")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("-p", dest="params", action="append", default=[], type=_param)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="run the fixed table of docs/DIFFUSION.md")
    args = parser.parse_args(argv)
    if args.sweep:
        return sweep(args.n, args.seed, args.batch_size, args.max_new_tokens)
    lm = load(args.model)
    method = args.method or ("llada" if lm.kind == "diffusion" else "greedy")
    scores = evaluate(lm, method, args.n, args.seed, args.tasks.split(",") if args.tasks else None,
                      max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, **dict(args.params))
    total_n = sum(s.n for s in scores)
    overall = {"accuracy": sum(s.solved for s in scores) / total_n,
               "forward_passes": sum(s.forward_passes * s.n for s in scores) / total_n}
    if args.json:
        print(json.dumps({"model": args.model, "method": method, "params": dict(args.params), "n": args.n,
                          "seed": args.seed, "tasks": {s.task: {"accuracy": s.accuracy, "forward_passes":
                                                                 round(s.forward_passes, 2)} for s in scores},
                          "overall": overall}))
        return
    print(f"{args.model}  method={method}  params={dict(args.params)}  n={args.n} per task  seed={args.seed}")
    for s in scores:
        print(f"  {s.task:8s} accuracy {s.accuracy:6.1%}  forward passes/item {s.forward_passes:6.2f}")
    print(f"  {'overall':8s} accuracy {overall['accuracy']:6.1%}  forward passes/item {overall['forward_passes']:6.2f}")


if __name__ == "__main__":
    main()
