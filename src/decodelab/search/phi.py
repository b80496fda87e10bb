"""φ-Decoding: foresight sampling over reasoning steps — Xu et al., "φ-Decoding: Adaptive Foresight
Sampling for Balanced Inference-Time Exploration and Exploitation" (ACL 2025, arXiv:2503.13288).

A step-level beam search (`search.meta`'s "step-level search" in Welleck et al.'s taxonomy). A step
ends at a token holding a newline. With M beams (`num_beams`, 4), per step (at most `max_steps`, 8):

1. each beam samples N next steps (`num_rollouts`, 4; the request's sampler, default temperature 0.6)
   → M·N candidates, each with F = the mean log-probability of its tokens;
2. in-width pruning: keep the candidates with F > mean(F) − 1·std(F); if fewer than M remain, top up
   by sampling the pruned ones without replacement ∝ softmax(F / 0.1);
3. foresight: roll every kept candidate out to the end (EOS or the length limit); its advantage is
   A = F′ − V_parent, F′ the mean log-probability of step + rollout, V_parent the parent beam's F′
   (0 for the prompt);
4. alignment: cluster the foresight completions' texts (TF-IDF + k-means, K = min(3, distinct texts));
   r = the size fraction of a candidate's cluster;
5. the next M beams are drawn without replacement by w = ½[softmax(r) + softmax(A / 0.1)];
6. in-depth pruning: from step 4 on, stop when all completions agree or the largest cluster holds
   ≥ 0.69 of them.
The answer: over the last beams' foresight completions, the largest cluster's members are drawn from by
softmax(A / 0.1). All completions are ranked in `.candidates` (score w). One prompt at a time; grammar
constraints are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .cntp import sample_trials

TAU = 0.1  # the softmax temperature on F and A
DEPTH_STEPS, DEPTH_SHARE = 4, 0.69


@dataclass
class Beam:
    tokens: list[int]  # new tokens of the steps chosen so far
    value: float = 0.0  # V: F′ of the candidate that made it (0 for the prompt)


@dataclass
class Candidate:
    parent: Beam
    step: list[int]
    f: float  # mean log-probability of the step
    rollout: list[int] | None = None
    f_prime: float = 0.0
    advantage: float = 0.0


def softmax(xs: list[float], tau: float = 1.0) -> list[float]:
    return torch.tensor(xs, dtype=torch.float64).div(tau).softmax(0).tolist()


def draw(weights: list[float], k: int, gen: torch.Generator | None) -> list[int]:
    """k indices without replacement ∝ weights (the k largest when gen is None)."""
    k = min(k, len(weights))
    w = torch.tensor(weights, dtype=torch.float64)
    if gen is None:
        return w.topk(k).indices.tolist()
    return torch.multinomial(w, k, replacement=False, generator=gen).tolist()


def prune_width(f: list[float], m: int, gen: torch.Generator | None) -> list[int]:
    """In-width pruning: F > mean − std (population std); top up to m from the rest ∝ softmax(F/0.1)."""
    mean = sum(f) / len(f)
    std = math.sqrt(sum((x - mean) ** 2 for x in f) / len(f))
    kept = [i for i, x in enumerate(f) if x > mean - std]
    rest = [i for i in range(len(f)) if i not in kept]
    if len(kept) < m and rest:
        kept += [rest[j] for j in draw(softmax([f[i] for i in rest], TAU), m - len(kept), gen)]
    return kept


def cluster(texts: list[str], k: int = 3) -> list[int]:
    """Cluster labels of the texts: TF-IDF + k-means with K = min(k, distinct texts)."""
    distinct = len(set(texts))
    if distinct <= 1:
        return [0] * len(texts)
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    try:
        x = TfidfVectorizer(token_pattern=r"\S+").fit_transform(texts)
    except ValueError:  # no words at all (whitespace-only texts)
        return [0] * len(texts)
    return KMeans(n_clusters=min(k, distinct), n_init=10, random_state=0).fit_predict(x).tolist()


def shares(labels: list[int]) -> list[float]:
    """r: the size fraction of each item's cluster."""
    return [labels.count(c) / len(labels) for c in labels]


def joint_weights(r: list[float], advantage: list[float]) -> list[float]:
    """w = ½[softmax(r) + softmax(A/0.1)]."""
    return [0.5 * (a + b) for a, b in zip(softmax(r), softmax(advantage, TAU))]


def stop_in_depth(step: int, texts: list[str], labels: list[int]) -> bool:
    """From step 4 on: all completions agree, or the largest cluster holds ≥ 0.69 of them."""
    return step >= DEPTH_STEPS and (len(set(texts)) == 1 or max(shares(labels)) >= DEPTH_SHARE)


def _newline_mask(lm) -> torch.Tensor:
    key = "phi.newline"
    if key not in lm.state:
        lm.state[key] = torch.tensor(["\n" in lm.decode([i]) for i in range(lm.vocab_size)])
    return lm.state[key]


def _sample(ctx, context: list[int], n: int, budget: int, stop: torch.Tensor):
    """n continuations of `context` (one prefill, forked): (tokens, mean log-prob) each."""
    session = ctx.lm.session(1, stats=ctx.stats)
    logits = session.forward(torch.tensor([context]), last_only=True)[:, -1]
    trials = sample_trials(ctx, session, logits, n, budget, stop, base=context)
    return [(t, lp / max(len(t), 1)) for t, lp in zip(trials.tokens, trials.logp)]


def _expand(ctx, beams: list[Beam], n: int, budget: int) -> list[Candidate]:
    prompt, newline = ctx.prompts[0], _newline_mask(ctx.lm)
    return [Candidate(b, step, f) for b in beams
            for step, f in _sample(ctx, prompt + b.tokens, n, budget - len(b.tokens), newline)]


def _foresee(ctx, cands: list[Candidate], budget: int) -> None:
    """Roll each candidate out to the end; F′ over step + rollout; A = F′ − V_parent."""
    prompt, never = ctx.prompts[0], torch.zeros(ctx.lm.vocab_size, dtype=torch.bool)
    eos = ctx.lm.eos_token_ids
    for c in cands:
        head = c.parent.tokens + c.step
        room = budget - len(head)
        if room <= 0 or (c.step and c.step[-1] in eos):
            c.rollout, total = [], c.f * len(c.step)
        else:
            (rollout, mean), = _sample(ctx, prompt + head, 1, room, never)
            c.rollout, total = rollout, c.f * len(c.step) + mean * len(rollout)
        c.f_prime = total / max(len(c.step) + len(c.rollout), 1)
        c.advantage = c.f_prime - c.parent.value


def phi_decoding(ctx, m: int, n: int, max_steps: int) -> list[tuple[list[int], float]]:
    """Ranked (new tokens, w) completions for ctx's one prompt; the first is the answer."""
    budget, gen = ctx.remaining(0), ctx.generator
    beams, final = [Beam([])], []
    for step in range(1, max_steps + 1):
        cands = _expand(ctx, beams, n if step > 1 else m * n, budget)
        cands = [cands[i] for i in prune_width([c.f for c in cands], m, gen)]
        _foresee(ctx, cands, budget)
        texts = [ctx.lm.decode(c.parent.tokens + c.step + c.rollout) for c in cands]
        labels = cluster(texts)
        weights = joint_weights(shares(labels), [c.advantage for c in cands])
        picked = draw(weights, m, gen)
        final = [(cands[i], weights[i], labels[i]) for i in picked]
        beams = [Beam(c.parent.tokens + c.step, c.f_prime) for c, _, _ in final]
        done = all(not c.rollout for c, _, _ in final)  # every chosen step already reached the end
        if done or stop_in_depth(step, texts, labels):
            break
    return _answer(final, gen)


def _answer(final: list, gen) -> list[tuple[list[int], float]]:
    """From the largest cluster of the final completions, draw by softmax(A/0.1); rank all by w."""
    labels = [lab for _, _, lab in final]
    top = max(set(labels), key=lambda c: (labels.count(c), -labels.index(c)))
    members = [i for i, lab in enumerate(labels) if lab == top]
    choice = members[draw(softmax([final[i][0].advantage for i in members], TAU), 1, gen)[0]]
    full = [(c.parent.tokens + c.step + c.rollout, w) for c, w, _ in final]
    return [full[choice]] + sorted((x for i, x in enumerate(full) if i != choice), key=lambda x: -x[1])
