"""The public Python API: generate, stream, generate_batch, next_token_probs, methods."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .constraints import compile_constraint
from .engine import Event, Generation, run_method
from .errors import UserError
from .inputs import check_common, check_healing, check_seed, prompt_ids
from .logprobs import attach, check_top, refuse_healed
from .methods import get
from .model import LM
from .processors import SAMPLING_DEFAULTS, Sampler, SamplingParams


def _run(lm, prompts, method, max_new_tokens, seed, stop, params) -> Iterator[Event]:
    params = dict(params)
    try:
        top = check_top(params.pop("logprobs", None))
        info, ids, checked, stop, grammar, healing = _validate(lm, prompts, method, max_new_tokens, seed, stop, params)
        if top is not None and info.kind != "causal":
            raise UserError("logprobs are defined for causal methods (a diffusion or image method has no "
                            "left-to-right distribution)")
        refuse_healed(top, healing)
    except UserError:
        raise
    except ValueError as exc:  # a check below the boundary (a grammar's compiler, say): still the input's fault
        raise UserError(str(exc)) from None
    if len(ids) > 1 and not info.batched:
        events = _one_by_one(info, lm, ids, checked, max_new_tokens, seed, stop, grammar, healing)
    else:
        events = run_method(info, lm, ids, checked, max_new_tokens, seed, stop, grammar, healing)
    return events if top is None else _with_logprobs(lm, ids, events, top)


def _with_logprobs(lm, ids: list[list[int]], events: Iterator[Event], top: int) -> Iterator[Event]:
    """The final event of each row carries its tokens' logprobs (decodelab/logprobs.py)."""
    for event in events:
        if event.generation is not None:
            attach(lm, ids[event.row], event.generation, top)
        yield event


def _validate(lm, prompts, method, max_new_tokens, seed, stop, params):
    """Every check of a request, before anything runs: the boundary where user input becomes typed."""
    info = get(method)
    if info.kind != getattr(lm, "kind", "causal"):
        from .diffusion.methods import kind_error

        raise UserError(kind_error(lm, info))
    params = _with_sampling(dict(params))
    grammar = _grammars(lm, info, params.pop("constraint", None), len(prompts))
    healing = check_healing(params.pop("token_healing", False))
    if (grammar is not None or healing) and info.kind != "causal":  # never silently unconstrained
        from .constraints.diffusion import refusal

        reason = refusal(info, grammar, healing)
        if reason:
            raise UserError(reason)
    checked = info.check_params(params)
    stop = check_common(max_new_tokens, stop)
    check_seed(seed)
    ids = [prompt_ids(lm, p) for p in prompts]
    if isinstance(seed, (list, tuple)) and len(seed) != len(ids):
        raise UserError(f"{len(seed)} seeds for {len(ids)} rows: give one seed per row (or one int)")
    return info, ids, checked, stop, grammar, healing


def _grammars(lm, info, spec, rows: int):
    """One compiled grammar for every row, or (a list of constraints, one per prompt) one per row."""
    if not isinstance(spec, (list, tuple)):
        return compile_constraint(lm, spec)
    _check_one_per_prompt(spec, rows)
    if not (info.continuous or info.name == "awrs" or info.kind == "diffusion"):
        raise UserError(f"method {info.name!r} takes one constraint for the whole batch, not one per prompt; "
                        "per-prompt constraints: greedy, sample, awrs, the speculative methods, diffusion samplers")
    if any(c is None for c in spec):
        raise UserError("a list of per-prompt constraints needs a constraint for every prompt (no None)")
    return [compile_constraint(lm, c) for c in spec]


def _check_one_per_prompt(spec: list, prompts: int) -> None:
    if len(spec) != prompts:
        raise UserError(f"{len(spec)} constraints for {prompts} prompts: give one per prompt (or one dict for all)")


def _with_sampling(params: dict) -> dict:
    """`sampling=SamplingParams(...)` spread into the parameters (a name given both ways is an error)."""
    sampling = params.pop("sampling", None)
    if sampling is None:
        return params
    if not isinstance(sampling, SamplingParams):
        raise UserError(f"sampling must be a decodelab.SamplingParams, got {type(sampling).__name__}")
    both = sorted(set(params) & set(SAMPLING_DEFAULTS))
    if both:
        raise UserError(f"{both[0]} given both in sampling= and as a keyword; give it once")
    return {**sampling.to_dict(), **params}


def _one_by_one(info, lm, ids, params, max_new_tokens, seed, stop, grammar=None, healing=False) -> Iterator[Event]:
    for b, prompt in enumerate(ids):
        row_seed = seed[b] if isinstance(seed, (list, tuple)) else None if seed is None else seed + b
        row_grammar = grammar[b] if isinstance(grammar, list) else grammar
        for event in run_method(info, lm, [prompt], params, max_new_tokens, row_seed, stop, row_grammar, healing):
            event.row = b
            yield event


def stream(lm: LM, prompt: str | list[int], *, method: str = "greedy", max_new_tokens: int = 64,
           seed: int | None = None, stop: str | list[str] | None = None, **params) -> Iterator[Event]:
    """Yield events with each new text piece; the last event carries the final `Generation`."""
    return _run(lm, [prompt], method, max_new_tokens, seed, stop, params)


def generate(lm: LM, prompt: str | list[int], *, method: str = "greedy", max_new_tokens: int = 64,
             seed: int | None = None, stop: str | list[str] | None = None, **params) -> Generation:
    """Generate a continuation of one prompt with any registered method."""
    for event in stream(lm, prompt, method=method, max_new_tokens=max_new_tokens, seed=seed, stop=stop, **params):
        if event.generation is not None:
            return event.generation
    raise RuntimeError("engine ended without a result")  # pragma: no cover


def generate_batch(lm: LM, prompts: list[str | list[int]], *, method: str = "greedy", max_new_tokens: int = 64,
                   n: int = 1, seed: int | list[int] | None = None, stop: str | list[str] | None = None,
                   max_batch: int | None = None, **params) -> list[Generation]:
    """Generate for several prompts (× n samples each, prompt-major): one batch for every batched method.

    Row i uses seed `seed + i` (or `seed[i]`): a row's output does not depend on the other rows.
    `constraint=` is one constraint for every row, or a list with one per prompt (greedy, sample, awrs,
    the speculative methods and the diffusion samplers: each row follows its own grammar in one batch).
    `max_batch=B`: at most B rows run at once — a dataset in bounded memory. Methods that take rows into a
    running batch keep B rows busy (a finished row's place goes to the next prompt at once, `Engine`), so
    rows that finish early never leave the batch half empty; the others run in consecutive groups of B.
    The outputs are the same either way."""
    if not prompts:
        raise UserError("prompts is empty")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"n must be an integer ≥ 1, got {n!r}")
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise UserError(f"max_batch must be an integer ≥ 1 or None, got {max_batch!r}")
    per_prompt = params.get("constraint")
    if isinstance(per_prompt, (list, tuple)):  # one constraint per prompt: each of its n samples follows it
        _check_one_per_prompt(per_prompt, len(prompts))
        params = {**params, "constraint": [c for c in per_prompt for _ in range(n)]}
    prompts = [p for p in prompts for _ in range(n)]
    if max_batch is not None and max_batch < len(prompts):
        return _windowed(lm, prompts, method, max_new_tokens, seed, stop, params, max_batch)
    results: dict[int, Generation] = {}
    for event in _run(lm, list(prompts), method, max_new_tokens, seed, stop, params):
        if event.generation is not None:
            results[event.row] = event.generation
    return [results[b] for b in range(len(prompts))]


def _windowed(lm, prompts: list, method: str, max_new_tokens: int, seed, stop, params: dict,
              max_batch: int) -> list[Generation]:
    """generate_batch with at most `max_batch` rows at once: a rolling window on the continuous Engine
    (Orca's iteration-level scheduling) where the method allows it, else consecutive groups."""
    from .engine import Engine, fast_forwards

    # checked once here (prompts, seeds, parameters, grammars); each group or row reuses the compiled grammar
    info, ids, checked, stop, grammar, healing = _validate(lm, prompts, method, max_new_tokens, seed, stop,
                                                           {k: v for k, v in params.items() if k != "logprobs"})
    seeds = list(seed) if isinstance(seed, (list, tuple)) else \
        [None if seed is None else seed + i for i in range(len(ids))]
    if grammar is not None:
        params = {**params, "constraint": grammar}
    if not info.continuous:
        out: list[Generation] = []
        per_row = params.get("constraint")
        for lo in range(0, len(ids), max_batch):
            group = {**params, "constraint": per_row[lo : lo + max_batch]} if isinstance(per_row, list) else params
            out += generate_batch(lm, ids[lo : lo + max_batch], method=method, max_new_tokens=max_new_tokens,
                                  seed=seeds[lo : lo + max_batch] if seed is not None else None, stop=stop, **group)
        return out
    top = check_top(params.get("logprobs"))
    grammars = grammar if isinstance(grammar, list) else [grammar] * len(ids)
    engine = Engine(lm, method, mixed=grammar is not None and not fast_forwards(info, mixed=False), **checked)
    rows: dict[int, int] = {}  # engine row → prompt index
    results: dict[int, Generation] = {}
    waiting = list(range(len(ids)))[::-1]
    try:
        while len(results) < len(ids):
            while waiting and len(rows) - len(results) < max_batch:  # refill the batch from the queue
                i = waiting.pop()
                rows[engine.add(ids[i], max_new_tokens=max_new_tokens, seed=seeds[i], stop=stop, logprobs=top,
                                constraint=grammars[i], token_healing=healing)] = i
            for event in engine.step():
                if event.generation is not None:
                    results[rows[event.row]] = event.generation
    finally:
        engine.close()
    return [results[i] for i in range(len(ids))]


@torch.inference_mode()
def next_token_probs(lm: LM, prompt: str | list[int], *, generated: list[int] | None = None,
                     **params) -> torch.Tensor:
    """[vocab_size] next-token distribution after the processors `params` switch on.

    `generated`: token ids already emitted after the prompt — what presence / frequency penalties count
    (they never count the prompt), so the distribution of any later step can be computed, not only the
    first one's."""
    sampling = SamplingParams.from_dict(_with_sampling(dict(params)))
    ids = prompt_ids(lm, prompt)
    tail = prompt_ids(lm, list(generated)) if generated else []  # checked like a prompt (ids in the vocabulary)
    logits = lm.session().forward(ids + tail, last_only=True)[:, -1]
    sampler = Sampler(sampling.to_dict(), prompt_len=len(ids))
    return sampler.probs(torch.tensor([ids + tail]), logits)[0]
