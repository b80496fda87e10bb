"""A small quality comparison of search / meta methods at equal width, on the `code` suite.

    python -m decodelab.search.compare [--model builtin:pyco] [--max-new-tokens 48] [--limit 12]

Methods that look at W candidates per step (beam K=W, contrastive k=W, best-of-N N=W) are run at the
same W — each forward pass then computes W positions per prompt, so forward passes × W is the cost —
next to the width-1 methods (greedy, DoLa, sampling), after the design of Shi et al.,
"A Thorough Examination of Decoding Methods in the Era of LLMs" (arXiv:2402.13925). Per method:
forward passes of the batch (all prompts together), syntax validity (`ast.parse` of the prompt + completion, cut at the end of
the function: the first non-blank line back at column 0, and at the last complete line), mean token
log-likelihood under the model (no processors), rep-2 (share of repeated token bigrams in a
completion) and distinct-2 (unique bigrams / all bigrams over the method's completions).
"""

from __future__ import annotations

import argparse
import ast
import json

import torch

from ..api import generate_batch
from ..model import load


def method_grid(width: int) -> list[tuple[str, str, dict]]:
    """(label, method, params): the width-W methods at one W and the width-1 references."""
    return [
        ("greedy", "greedy", {}),
        ("dola (high)", "dola", {}),
        ("sample T=0.8 p=0.95", "sample", {"temperature": 0.8, "top_p": 0.95}),
        (f"beam K={width}", "beam", {"num_beams": width}),
        (f"contrastive k={width} a=0.6", "contrastive", {"top_k": width, "penalty_alpha": 0.6}),
        (f"best_of_n N={width} T=0.8", "best_of_n", {"num_samples": width, "temperature": 0.8, "top_p": 0.95}),
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


def rep2(ids: list[int]) -> float:
    grams = list(zip(ids, ids[1:]))
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


@torch.inference_mode()
def mean_logprob(lm, prompt: list[int], completion: list[int]) -> float:
    ids = torch.tensor([prompt + completion])
    logp = lm.session(1).forward(ids).log_softmax(-1)[0]
    n = len(prompt)
    return float(sum(logp[n + i - 1, t] for i, t in enumerate(completion)) / max(len(completion), 1))


def evaluate(lm, prompts: list[str], label: str, method: str, params: dict, max_new: int, seed: int) -> dict:
    gens = generate_batch(lm, prompts, method=method, max_new_tokens=max_new, seed=seed, **params)
    grams = [g for x in gens for g in zip(x.token_ids, x.token_ids[1:])]
    return {
        "method": label,
        "forward_passes": gens[0].stats.forward_passes,  # of the whole batch (all prompts at once)
        "width": params.get("num_beams") or params.get("num_samples") or (params.get("top_k") if method == "contrastive" else 1),
        "syntax_valid": sum(syntax_valid(p, g.text) for p, g in zip(prompts, gens)) / len(prompts),
        "mean_logprob": sum(mean_logprob(lm, lm.encode(p), g.token_ids) for p, g in zip(prompts, gens)) / len(gens),
        "rep_2": sum(rep2(g.token_ids) for g in gens) / len(gens),
        "distinct_2": len(set(grams)) / max(len(grams), 1),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    from ..bench.suites import load_suite

    ap = argparse.ArgumentParser(prog="python -m decodelab.search.compare", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="builtin:pyco")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    lm = load(args.model)
    prompts = [p.text for p in load_suite("code").prompts[: args.limit]]
    rows = [evaluate(lm, prompts, *m, args.max_new_tokens, args.seed) for m in method_grid(args.width)]
    print("| method | width W | forward passes (batch) | syntax valid | mean log-prob | rep-2 | distinct-2 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['width']} | {r['forward_passes']} | {r['syntax_valid']:.2f} | "
              f"{r['mean_logprob']:.3f} | {r['rep_2']:.3f} | {r['distinct_2']:.3f} |")
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
