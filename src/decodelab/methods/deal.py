"""`deal`: decoding-time alignment as heuristic search over tokens, guided by a reward.

Huang et al., "DeAL: Decoding-time Alignment for Large Language Models" (arXiv:2402.06147). Each
step every kept state proposes its `branching` most likely next tokens (after every processor,
the grammar mask included, so constraints hold); each candidate is extended by a greedy look-ahead
rollout of `lookahead` tokens, and the rollout's text is scored by the reward R_a; the `keep` best
candidates (score, then log-probability) become the next states. A finished state (EOS or the
grammar's end) is kept as it is. The best state by reward is returned.

The paper leaves the exact combination of reward and likelihood open (the reference notes mark it
unconfirmed); here the reward ranks and the log-probability only breaks ties. Rewards: a callable
text → float, or "keyword:w1,w2" (number of the words present), "length:N" (−|characters − N|),
"json" (1 if the text parses as JSON and satisfies the constraint's schema when there is one).
Cost: each step re-runs the context (no cache kept across steps) for keep × branching rows, then
`lookahead` batched greedy steps — a search method for short outputs, not a fast one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..constraints import GrammarMask
from ..errors import UserError
from ..processors import Sampler
from .registry import WARPER_PARAMS, Param, register


@dataclass(frozen=True)
class RewardParam(Param):
    """A reward: a callable text → float, or a built-in name ("keyword:a,b", "length:N", "json")."""

    def check(self, name: str, value):
        if callable(value):
            return value
        if not isinstance(value, str) or not (value == "json" or value.startswith(("keyword:", "length:"))):
            raise UserError(f"{name} must be a callable text -> float, 'keyword:w1,w2', 'length:N' or 'json'; "
                             f"got {value!r}")
        if value.startswith("length:") and not value[7:].isdigit():
            raise UserError(f"{name}: 'length:N' needs an integer N, got {value!r}")
        return value


def reward_function(spec, schema: dict | None) -> Callable[[str], float]:
    if callable(spec):
        return spec
    if spec.startswith("keyword:"):
        words = [w for w in spec[8:].split(",") if w]
        return lambda text: float(sum(w in text for w in words))
    if spec.startswith("length:"):
        target = int(spec[7:])
        return lambda text: -abs(len(text) - target)
    return lambda text: _json_reward(text, schema)


def _json_reward(text: str, schema: dict | None) -> float:
    try:
        value = json.loads(text)
    except ValueError:
        return 0.0
    if schema is None:
        return 1.0
    import jsonschema

    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return 0.0
    return 1.0


@dataclass
class _State:
    tokens: list[int]
    logprob: float = 0.0
    done: bool = False
    row: object = None  # RowConstraint, or None when unconstrained


def _batch_sampler(ctx, states: list[_State]) -> Sampler:
    """A greedy sampler over one row per state: each row's grammar state is a fork of the state's, and
    token healing's first-token mask (the prompt's) holds for every state."""
    mask = None
    if ctx.sampler.constraint is not None:
        mask = GrammarMask([], len(ctx.prompts[0]), ctx.lm.eos_token_ids)
        mask.rows = [s.row.fork() for s in states]
    healer = ctx.sampler.healing.repeated(len(states)) if ctx.sampler.healing is not None else None
    return Sampler(ctx.params, prompt_len=len(ctx.prompts[0]), constraint=mask, healing=healer)  # temperature 0:
    # the registry refuses any other (`ignores`), so the request's parameters already give a greedy sampler


def _next_scores(ctx, states: list[_State]) -> torch.Tensor:
    """[N, V] processed log-probabilities (grammar-masked) after each state's tokens (one forward).

    Every state passed here has the same length: each search step and each rollout step adds one
    token to every live state, and finished states are never passed."""
    if len({len(s.tokens) for s in states}) != 1:
        raise AssertionError("deal: states of different lengths in one batch")
    ids = torch.tensor([ctx.prompts[0] + s.tokens for s in states])  # [N, L]
    logits = ctx.lm.session(len(states), stats=ctx.stats).forward(ids, last_only=True)[:, -1]
    return _batch_sampler(ctx, states).process(ids, logits).log_softmax(-1)


def _finished(ctx, state: _State) -> bool:
    last = state.tokens[-1] if state.tokens else None
    return last in ctx.lm.eos_token_ids or (state.row is not None and state.row.stopped)


def _child(ctx, state: _State, token: int, logp: float) -> _State:
    row = state.row.fork() if state.row is not None else None
    if row is not None and token not in ctx.lm.eos_token_ids:
        row.advance([token])
    child = _State(state.tokens + [token], state.logprob + logp, row=row)
    child.done = _finished(ctx, child)
    return child


def _rollout(ctx, states: list[_State], steps: int) -> list[list[int]]:
    """Greedy look-ahead continuations (≤ steps tokens) of each state, batched."""
    live = [_State(list(s.tokens), row=s.row.fork() if s.row is not None else None, done=s.done) for s in states]
    for _ in range(steps):
        todo = [s for s in live if not s.done]
        if not todo:
            break
        best = _next_scores(ctx, todo).argmax(-1).tolist()
        for s, t in zip(todo, best):
            s.tokens.append(t)
            if s.row is not None and t not in ctx.lm.eos_token_ids:
                s.row.advance([t])
            s.done = _finished(ctx, s)
    return [s.tokens for s in live]


def _text(ctx, tokens: list[int]) -> str:
    """A state's text as the user gets it: without EOS, and without the prompt text token healing's
    first token re-covers (the reward scores the output, not the prompt's end)."""
    text = ctx.lm.decode([t for t in tokens if t not in ctx.lm.eos_token_ids])
    return text[len(ctx.sampler.healing.removed[0]):] if ctx.sampler.healing is not None else text


def _deal(ctx) -> Iterator[list[list[int]]]:
    p = ctx.params
    schema = None
    if ctx.sampler.constraint is not None and ctx.sampler.constraint.rows[0].grammar.kind == "json_schema":
        schema = ctx.sampler.constraint.rows[0].grammar.source
    reward = reward_function(p["reward"], schema)
    base = ctx.sampler.constraint.rows[0].fork() if ctx.sampler.constraint is not None else None
    states = [_State([], row=base)]
    budget = ctx.remaining()
    for _ in range(budget):
        live = [s for s in states if not s.done and len(s.tokens) < budget]
        if not live:
            break
        scores = _next_scores(ctx, live)
        top = torch.topk(scores, min(p["branching"], scores.shape[-1]), dim=-1)
        children = [_child(ctx, s, t, lp) for s, ts, lps in zip(live, top.indices.tolist(), top.values.tolist())
                    for t, lp in zip(ts, lps) if lp > -math.inf]
        ahead = _rollout(ctx, children, min(p["lookahead"], budget - len(children[0].tokens))) if children else []
        scored = [(reward(_text(ctx, full)), c.logprob, c) for c, full in zip(children, ahead)]
        scored += [(reward(_text(ctx, s.tokens)), s.logprob, s) for s in states if s.done]
        scored.sort(key=lambda x: (x[0], x[1]), reverse=True)
        states = [c for _, _, c in scored[: p["keep"]]]
    ranked = sorted(((reward(_text(ctx, s.tokens)), s.logprob, s.tokens) for s in states), reverse=True)
    if hasattr(ctx, "candidates"):  # the final states, best first, scored by the reward
        ctx.candidates[0] = [(tokens, score) for score, _, tokens in ranked]
    if ranked and ranked[0][2]:
        yield [ranked[0][2]]


@register("deal", lossless=False, temperature=0.0,
          description="DeAL: reward-guided search — top-k expansion, greedy look-ahead rollouts scored by a "
                      "reward (callable, keyword:…, length:N, json), best states kept.",
          paper="DeAL: Decoding-time Alignment for Large Language Models (arXiv:2402.06147)",
          params={"reward": RewardParam("length:64", help="callable text -> float, 'keyword:w1,w2', 'length:N' "
                                        "or 'json'"),
                  "branching": Param(4, 1, 64, help="next tokens tried per state (top-k)"),
                  "lookahead": Param(4, 0, 64, help="greedy rollout length used to score a candidate"),
                  "keep": Param(4, 1, 64, help="states kept after each step")},
          ignores=("temperature",) + WARPER_PARAMS,
          ignores_why="its expansion and rollouts are deterministic: top-branching tokens and greedy look-ahead")
def deal(ctx) -> Iterator[list[list[int]]]:
    if ctx.batch_size != 1:
        raise UserError("deal runs one sequence at a time")
    return _deal(ctx)
