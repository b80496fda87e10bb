"""Meta-generation over any inner method — Welleck et al., "From Decoding to Meta-Generation:
Inference-time Algorithms for Large Language Models" (arXiv:2406.16838).

Parallel meta-generators: draw N candidates per prompt with an inner method, then aggregate.
- best-of-N: keep the candidate with the best score v(y); v = the model's mean token log-likelihood
  of y given the prompt ("mean_logprob", raw model, no processors), its sum ("sum_logprob"), or a
  user callable `scorer(text, token_ids) -> float`.
- self-consistency (Wang et al., "Self-Consistency Improves Chain of Thought Reasoning in Language
  Models", arXiv:2203.11171): majority vote over answers extracted from the candidates (default
  extractor: the stripped text; or a callable `extract(text) -> str`), i.e. MBR with u = 1[same answer];
  ties and the returned representative go to the higher mean log-likelihood.

Under a grammar `constraint=` the inner method runs under the same grammar, so every candidate obeys it;
with `token_healing=True` it heals the same prompt boundary (the candidates' tokens then continue the
backed-up prompt, which is what they are scored against, and their text leaves out the re-covered part).
The N candidates of prompt b are exactly `generate_batch(lm, prompts, method=inner, n=N, seed=s)`'s
rows b·N … b·N + N − 1 (seed s + b·N + j), so "best of these samples" is checkable sample for sample.
Cost: the inner run's forward passes plus one scoring forward over all B·N candidates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch

from ..errors import UserError
from ..processors import SAMPLING_DEFAULTS


def inner_generations(ctx, inner: str, n: int) -> list[list]:
    """Per prompt, the n Generations of the inner method (prompt-major, seeds as `generate_batch(n=n)`)."""
    seed = ctx.seed
    if isinstance(seed, (list, tuple)):
        seed = [s + j for s in seed for j in range(n)]
    gens = run_inner(ctx, inner, list(range(ctx.batch_size)), n, seed)
    return [gens[b * n: (b + 1) * n] for b in range(ctx.batch_size)]


def run_inner(ctx, inner: str, rows: list[int], n: int, seed) -> list:
    """`generate_batch(the prompts of rows, method=inner, n=n, seed=seed)` with the request's sampling
    parameters, grammar, token healing, stop strings and length (healing backs up the prompts as given
    to the request, so the candidates continue `ctx.prompts`); its forward passes are added to ctx.stats."""
    from ..api import generate_batch

    if inner in META_METHODS:
        raise UserError(f"inner method {inner!r} is itself a meta method; pick a decoding method")
    params = {k: ctx.params[k] for k in (*SAMPLING_DEFAULTS, "temperature")}
    if ctx.grammar is not None:  # the request's grammar, compiled once (healing prefixes it again inside)
        params["constraint"] = ctx.grammar
    prompts = [(ctx.unhealed if ctx.token_healing else ctx.prompts)[b] for b in rows]
    gens = generate_batch(ctx.lm, prompts, method=inner, n=n, seed=seed, stop=ctx.stop or None,
                          max_new_tokens=ctx.max_new_tokens, token_healing=ctx.token_healing, **params)
    shared = gens[0].stats  # forward passes are the whole inner batch's
    ctx.stats.forward_passes += shared.forward_passes
    ctx.stats.draft_forward_passes += shared.draft_forward_passes
    return gens


META_METHODS = ("best_of_n", "self_consistency", "mbr", "adaptive_best_of_k")


@torch.inference_mode()
def completion_logprobs(ctx, prompts: list[list[int]], completions: list[list[int]]) -> list[list[float]]:
    """log p(y_t | x, y_<t) of every completion token under the raw model: one batched forward."""
    rows = [p + c for p, c in zip(prompts, completions)]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[ctx.lm.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    session = ctx.lm.session(len(rows), stats=ctx.stats)
    logp = session.forward(ids, pad_mask=mask).log_softmax(dim=-1)  # [N, W, V]
    out = []
    for r, c in enumerate(completions):
        cols = torch.arange(width - len(c), width)
        out.append(logp[r, cols - 1, ids[r, cols]].tolist())
    return out


def _score(name_or_fn, gen, logprobs: list[float]) -> float:
    if callable(name_or_fn):
        return float(name_or_fn(gen.text, gen.token_ids))
    total = sum(logprobs)
    return total / max(len(logprobs), 1) if name_or_fn == "mean_logprob" else total


def best_of_n(ctx, inner: str, n: int, scorer: str | Callable) -> list[list[tuple[list[int], float]]]:
    """Per prompt, all n candidates ranked by score (best first) as (token_ids, score)."""
    groups = inner_generations(ctx, inner, n)
    flat = [g for group in groups for g in group]
    lps = (completion_logprobs(ctx, [ctx.prompts[i // n] for i in range(len(flat))], [g.token_ids for g in flat])
           if not callable(scorer) else [[] for _ in flat])
    ranked = []
    for b, group in enumerate(groups):
        scored = [(g.token_ids, _score(scorer, g, lps[b * n + j])) for j, g in enumerate(group)]
        ranked.append(sorted(scored, key=lambda c: -c[1]))  # stable: ties keep sample order
    return ranked


def self_consistency(ctx, inner: str, n: int, extract: str | Callable) -> list[list[tuple[list[int], float]]]:
    """Per prompt, candidates ranked by the vote share of their answer, then mean log-likelihood;
    the first is the most likely sample among those giving the majority answer."""
    groups = inner_generations(ctx, inner, n)
    flat = [g for group in groups for g in group]
    lps = completion_logprobs(ctx, [ctx.prompts[i // n] for i in range(len(flat))], [g.token_ids for g in flat])
    ranked = []
    for b, group in enumerate(groups):
        answers = [extract(g.text) if callable(extract) else g.text.strip() for g in group]
        votes = Counter(answers)
        keys = [(votes[a] / n, _score("mean_logprob", g, lps[b * n + j])) for j, (a, g) in enumerate(zip(answers, group))]
        order = sorted(range(n), key=lambda j: (-keys[j][0], -keys[j][1]))
        ranked.append([(group[j].token_ids, keys[j][0]) for j in order])
    return ranked


def edit_similarity(a: list[int], b: list[int]) -> float:
    """1 − Levenshtein(a, b) / max(|a|, |b|) over token ids (1.0 for two empty sequences)."""
    if not a and not b:
        return 1.0
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return 1 - row[-1] / max(len(a), len(b))


def _chrf(hyp: str, ref: str) -> float:
    try:
        from sacrebleu.metrics import CHRF
    except ImportError:
        raise UserError("utility='chrf' needs sacrebleu (pip install sacrebleu); or use 'edit'") from None
    return CHRF().sentence_score(hyp, [ref]).score / 100


def mbr(ctx, inner: str, n: int, utility: str | Callable) -> list[list[tuple[list[int], float]]]:
    """Minimum Bayes risk: per prompt, candidates ranked by mean utility against the other N − 1,
    argmax_y mean_{y' ≠ y} u(y, y'); utility 'edit' (token edit similarity), 'chrf', or u(text, text)."""
    ranked = []
    for group in inner_generations(ctx, inner, n):
        def u(a, b):
            if callable(utility):
                return float(utility(a.text, b.text))
            return edit_similarity(a.token_ids, b.token_ids) if utility == "edit" else _chrf(a.text, b.text)
        expected = [sum(u(y, z) for j, z in enumerate(group) if j != i) / max(n - 1, 1) for i, y in enumerate(group)]
        ranked.append(sorted(((g.token_ids, e) for g, e in zip(group, expected)), key=lambda c: -c[1]))
    return ranked
