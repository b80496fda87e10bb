"""The decoding engine: prefill, the method's step generator, and all output bookkeeping.

The engine knows nothing about how a method finds its tokens; a method knows nothing about stop
strings, EOS, text or timing (cf. nanochat's engine as a generator of token events). `stream`
yields `Event`s; `generate` consumes the same stream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property

import torch

from .errors import UserError
from .model import LM, Session
from .processors import Sampler
from .stats import Stats


@dataclass
class Candidate:
    """One ranked alternative of a search or meta method (docs/SEARCH.md): new tokens, text, score."""

    text: str
    token_ids: list[int]
    score: float


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str
    stats: Stats
    method: str = ""
    params: dict = field(default_factory=dict)
    incomplete: bool | None = None  # constrained only: True when the grammar was not completed
    error: str | None = None  # constrained only: the grammar engine's message if it failed mid-way
    candidates: list[Candidate] = field(default_factory=list)  # search / meta methods: ranked, best first
    logprobs: list[float] | None = None  # asked for (logprobs=k): log p of each token (decodelab/logprobs.py)
    top_logprobs: list[list[tuple[int, float]]] | None = None  # … and its k most likely alternatives

    def to_dict(self) -> dict:
        out = {"method": self.method, "params": self.params, "text": self.text,
               "token_ids": self.token_ids, "finish_reason": self.finish_reason,
               "stats": self.stats.to_dict()}
        if self.incomplete is not None:
            out["incomplete"] = self.incomplete
        if self.error:
            out["error"] = self.error
        if self.candidates:
            out["candidates"] = [vars(c) for c in self.candidates]
        if self.logprobs is not None:
            out["logprobs"], out["top_logprobs"] = self.logprobs, self.top_logprobs
        return out


@dataclass
class Event:
    """A streamed piece: `text` new since the last event (row `row`); `generation` on the last one."""

    text: str
    token_ids: list[int]
    row: int = 0
    generation: Generation | None = None
    logprobs: list[float] | None = None  # Engine rows that asked: these tokens' log p (and alternatives)
    top_logprobs: list[list[tuple[int, float]]] | None = None


class Context:
    """What a method sees: the model, prompts, sampler, RNG, stats and the tokens emitted so far.

    Rows may join while a method runs (continuous batching): `add_row` appends one, and a method that
    supports joining (`MethodInfo.continuous`) takes the rows added since its last look with `admit()`.
    """

    def __init__(self, lm: LM, prompts: list[list[int]], params: dict, sampler: Sampler,
                 generator: torch.Generator | None, max_new_tokens: int, stats: Stats):
        self.lm = lm
        self.prompts = prompts
        self.params = params
        self.sampler = sampler
        self.generator = generator
        self.max_new_tokens = max_new_tokens
        self.max_new: list[int] = [max_new_tokens] * len(prompts)  # per row (rows that join bring their own)
        self.stats = stats
        self.out: list[list[int]] = [[] for _ in prompts]
        self.generators: list[torch.Generator] | None = None  # one per row (row_generators)
        self.done: list[bool] = [False] * len(prompts)  # rows the engine has finished (EOS, stop, length)
        self.candidates: list[list[tuple[list[int], float]]] = [[] for _ in prompts]  # search/meta: ranked
        self.log_z: list[list[float]] = [[] for _ in prompts]  # per row: log Z_t of each sampled token
        self.seed: int | list[int] | None = None  # the request's seed and stop strings (set by run_method)
        self.stop: list[str] = []
        # the request's grammar and token healing, and its prompts before healing backed them up (set by
        # run_method): meta-generation re-runs an inner method on them
        self.grammar = None
        self.token_healing = False
        self.unhealed: list[list[int]] = prompts
        self.open = False  # more rows may join: a method idles (yields nothing) instead of ending
        self.row_stats: dict[int, Stats] | None = None  # per-row draft counts (the Engine's rows)
        # rows with a sampler of their own (Engine.add: own sampling parameters, grammar or token healing)
        self.row_samplers: dict[int, Sampler] = {}
        self.row_params: dict[int, dict] = {}  # rows with parameters of their own (a mixed Engine's methods)
        self._pending = list(range(len(prompts)))  # rows not yet admitted by the method
        self._views: dict[int, RowContext] = {}

    def add_row(self, prompt: list[int], generator: torch.Generator | None, max_new_tokens: int) -> int:
        """A new row joins; the method admits it between two steps. Returns its row index."""
        b = len(self.prompts)
        self.prompts.append(prompt)
        self.out.append([])
        self.max_new.append(max_new_tokens)
        self.done.append(False)
        self.candidates.append([])
        self.log_z.append([])
        if self.generators is not None:
            self.generators.append(generator)
        self._pending.append(b)
        return b

    def admit(self) -> list[int]:
        """The rows added since the last call (all rows, the first time)."""
        new, self._pending = self._pending, []
        return new

    def sampler_of(self, b: int) -> Sampler:
        """Row b's sampler: its own when it brought sampling parameters, else the batch's."""
        return self.row_samplers.get(b, self.sampler)

    def row_sampler(self, b: int) -> Sampler:
        """Row b's sampler for row b's history alone: a view of the batch's (its row b), or of the row's
        own (`row_samplers`, made for that row alone: its row 0)."""
        own = self.row_samplers.get(b)
        if own is not None:
            return own.for_row(0, len(self.prompts[b]))
        return self.sampler.for_row(b, len(self.prompts[b]))

    def release(self, b: int) -> None:
        """Row b has left the batch for good: drop what it holds (a long-running server adds rows forever)."""
        self._views.pop(b, None)
        self.row_samplers.pop(b, None)
        self.row_params.pop(b, None)
        if self.open:  # a long-running Engine adds rows forever: keep nothing of the rows that left
            self.prompts[b], self.out[b], self.log_z[b] = [], [], []
            if self.generators is not None:
                self.generators[b] = None

    def kept_log_z(self, b: int, n: int) -> list[float] | None:
        """log Z_t of row b's first n tokens (Stats.log_z); None unless the sampler drew every one."""
        return self.log_z[b][:n] if len(self.log_z[b]) >= n else None

    def row(self, b: int) -> "RowContext":
        """Row b's narrow view: what a proposer needs of one sequence in a batch (one per row)."""
        if b not in self._views:
            self._views[b] = RowContext(self, b)
        return self._views[b]

    @property
    def batch_size(self) -> int:
        return len(self.prompts)

    def ids(self, row: int = 0) -> list[int]:
        """Prompt + tokens emitted so far for one row."""
        return self.prompts[row] + self.out[row]

    def remaining(self, row: int = 0) -> int:
        """Tokens this row may still emit: the lesser of its max_new_tokens and its context left."""
        return min(self.max_new[row], self.lm.max_length - len(self.prompts[row])) - len(self.out[row])

    def session(self, lm: LM | None = None, role: str = "target", batch_size: int | None = None) -> Session:
        return (lm or self.lm).session(batch_size or self.batch_size, stats=self.stats, role=role)

    def padded(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[R, L] left-padded prompt ids of these rows and their [R, L] pad mask (None when equal lengths)."""
        prompts = [self.prompts[b] for b in rows]
        width = max(len(p) for p in prompts)
        if all(len(p) == width for p in prompts):
            return torch.tensor(prompts, dtype=torch.long), None
        pad = self.lm.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
        return ids, mask

    @cached_property
    def padded_prompts(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, L] left-padded prompt ids and the [B, L] pad mask (None when all rows are equal length).

        Built once per generation: penalties read it through `history()` at every step."""
        return self.padded(list(range(self.batch_size)))

    def history(self) -> torch.Tensor:
        """[B, L] padded prompt + generated ids: the input_ids processors see."""
        ids, _ = self.padded_prompts
        width = max(len(o) for o in self.out)  # finished rows stop growing: pad them on the right
        out = [o + [self.lm.pad_token_id] * (width - len(o)) for o in self.out]
        gen = torch.tensor(out, dtype=torch.long).reshape(self.batch_size, -1)
        return torch.cat([ids, gen], dim=1)


class RowContext:
    """One row of a batch seen as a batch of one (the same names as `Context`), for per-row proposers.

    Its token list is the batch's own (`out[0]` is the parent's `out[b]`), its generator the row's own,
    and `session()` makes single-row sessions (a proposer's draft cache)."""

    def __init__(self, parent: Context, b: int):
        self.parent, self.b = parent, b
        self.lm, self.stats = parent.lm, parent.stats
        self.params = parent.row_params.get(b, parent.params)  # its method's parameters (a mixed batch)
        self.sampler = parent.row_sampler(b)  # row b's own, for its unpadded history
        self.max_new_tokens = parent.max_new[b]
        self.prompts, self.out = [parent.prompts[b]], [parent.out[b]]
        self.generator = parent.generators[b] if parent.generators else None
        self.generators = [self.generator] if self.generator is not None else None
        self.row_samplers: dict = {}  # a row's view has one sampler: its own
        self.batch_size = 1

    def sampler_of(self, row: int = 0) -> Sampler:
        return self.sampler

    def ids(self, row: int = 0) -> list[int]:
        return self.parent.ids(self.b)

    def remaining(self, row: int = 0) -> int:
        return self.parent.remaining(self.b)

    def history(self) -> torch.Tensor:
        return torch.tensor([self.ids()], dtype=torch.long)

    @property
    def padded_prompts(self) -> tuple[torch.Tensor, None]:
        return torch.tensor(self.prompts, dtype=torch.long), None

    def session(self, lm: LM | None = None, role: str = "target") -> Session:
        return (lm or self.lm).session(1, stats=self.stats, role=role)


class _WithParams:
    """A context seen with other parameters: a mixed Engine builds each method's proposers through one."""

    def __init__(self, ctx: Context, params: dict):
        self._ctx, self.params = ctx, params

    def __getattr__(self, name: str):
        return getattr(self._ctx, name)


class _IncrementalText:
    """Text of an append-only token list, decoding only the tail since the last clean anchor.

    The tail is decoded together with the token before it and that token's own text is cut off, so
    tokenizers that drop a leading space at the start of a decode (SentencePiece) stay exact.
    """

    def __init__(self, lm: LM):
        self.lm = lm
        self.anchor, self.anchor_text = 0, ""

    def of(self, tokens: list[int]) -> str:
        a = self.anchor
        if a == 0:
            text = self.lm.decode(tokens)
        else:
            head = self.lm.decode(tokens[a - 1 : a])
            text = self.anchor_text + self.lm.decode(tokens[a - 1 :])[len(head):]
        if len(tokens) - a >= 16 and not text.endswith("\ufffd"):
            self.anchor, self.anchor_text = len(tokens), text
        return text


class _RowState:
    """Per-row stop detection: EOS, stop strings, length, and the end of the row's grammar."""

    def __init__(self, lm: LM, stop: list[str], constraint=None, healed: str = ""):
        self.lm, self.stop = lm, stop
        self.constraint = constraint  # the row's constraints.RowConstraint, or None
        self.skip = len(healed)  # token healing: the prompt text the first token re-covers is not output
        self._decoder = _IncrementalText(lm)
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0  # characters of text already streamed
        self.unsent: list[int] = []  # tokens not yet carried by an event (their text is held back)
        self.finish: str | None = None
        self.ended_by_eos = self.grammar_done = False
        self.error: str | None = None  # the grammar engine's message when a constrained row failed

    def add(self, tokens: list[int], remaining: int) -> list[int]:
        """Append tokens up to the first stop condition; return the ones kept."""
        kept = []
        for t in tokens:
            if self.finish:
                break
            kept.append(t)
            self.tokens.append(t)
            if t in self.lm.eos_token_ids:
                self.finish = "eos" if self.constraint is None else "stop"
                self.ended_by_eos = self.grammar_done = True  # under a grammar EOS is allowed only when complete
            elif self.constraint is not None and self._grammar_ended():
                self.finish = "stop"
                self.text = self._text()
            elif self._hit_stop():
                self.finish = "stop"
            elif len(kept) >= remaining:
                self.finish = "length"
        if not self.finish or self.finish == "length":
            self.text = self._text()
        return kept

    def _text(self) -> str:
        return self._decoder.of(self.tokens)[self.skip :]

    def _grammar_ended(self) -> bool:
        """The grammar is complete after these tokens (or its matcher failed: stop with the reason)."""
        row = self.constraint
        if not row.seek(self.tokens) or row.error:
            self.error = row.error or f"token {self.tokens[-1]} is not allowed by the constraint"
            return True
        self.grammar_done = row.stopped
        return self.grammar_done

    def _hit_stop(self) -> bool:
        if not self.stop:
            return False
        text = self._text()
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut < 0:
            self.text = text
            return False
        self.text = text[:cut]
        return True

    def visible_text(self) -> str:
        """Text that is final: holds back a possible partial stop string and a partial UTF-8 char."""
        text = self.text
        if self.finish:
            return text
        end = len(text)
        while end > 0 and text[end - 1] == "\ufffd":  # drop a partial character first, then hold back
            end -= 1
        end -= max((len(s) - 1 for s in self.stop), default=0)
        return text[: max(end, self.sent)]


def _per_row_only(params: dict) -> None:
    """A grammar or token healing belongs to one row of an Engine (`Engine.add`), not to the Engine."""
    given = [k for k in ROW_OPTIONS if k in params]
    if given:
        raise UserError(f"an Engine takes {given[0]} per row: pass it to Engine.add")


ROW_OPTIONS = ("constraint", "token_healing")  # Engine.add's per-row options besides sampling parameters


def fast_forwards(info, mixed: bool) -> bool:
    """Does an Engine of this method (mixed or not) run the propose → verify loop, which feeds a row's
    grammar-forced tokens at once (constraints/fastforward.py)? Every speculative method's does, and a mixed
    Engine's; a plain greedy or sample Engine's loop decodes one token per step."""
    from .methods.autoregressive import no_draft

    return mixed or info.proposers is not no_draft


def run_method(info, lm: LM, prompts: list[list[int]], params: dict, max_new_tokens: int,
               seed: int | None, stop: list[str], grammar=None, token_healing: bool = False) -> Iterator[Event]:
    """Drive one method over a batch of prompts, yielding events; the last per row carries a Generation.

    `grammar` (a validated `constraints.Grammar`) masks every row with its own grammar state;
    `token_healing` backs each prompt up by one token that the first generated token must re-cover."""
    info.refuse(constraint=grammar is not None, token_healing=token_healing)
    stats = Stats()
    from .constraints import row_processors

    unhealed = prompts
    prompts, mask, healer, healed = row_processors(lm, prompts, grammar, token_healing)
    width = max(len(p) for p in prompts)
    sampler = Sampler(params, prompt_len=width, constraint=mask, healing=healer)
    generators = None if sampler.greedy else row_generators(seed, len(prompts))
    ctx = Context(lm, prompts, params, sampler, generators[0] if generators else None, max_new_tokens, stats)
    ctx.generators = generators
    ctx.seed, ctx.stop = seed, stop  # meta-generation re-runs an inner method with them
    ctx.grammar, ctx.token_healing, ctx.unhealed = grammar, token_healing, unhealed
    rows = [_RowState(lm, stop, mask.rows[b] if mask else None, healed[b]) for b in range(len(prompts))]
    t0 = time.perf_counter()
    steps = info.run(ctx)
    try:
        for i, emitted in enumerate(steps):
            kept_before = sum(len(r.tokens) for r in rows)
            yield from _absorb(ctx, rows, emitted)
            if i > 0:
                stats.record_step((sum(len(r.tokens) for r in rows) - kept_before) / len(rows))
            if all(r.finish for r in rows):
                break
    finally:
        steps.close()
    stats.wall_time_s = time.perf_counter() - t0
    stats.new_tokens = sum(len(r.tokens) for r in rows)
    stats.batch_size = len(rows)
    for b, row in enumerate(rows):
        row_stats = stats if len(rows) == 1 else replace(
            stats, new_tokens=len(row.tokens), drafted=list(stats.drafted), accepted=list(stats.accepted))
        row_stats.log_z = ctx.kept_log_z(b, len(row.tokens))
        gen = _generation(lm, row, row_stats, info.name, params)
        if mask is not None:
            gen.incomplete, gen.error = not row.grammar_done, row.error
        gen.candidates = [_candidate(lm, stop, healed[b], t, s) for t, s in ctx.candidates[b]]
        yield Event(gen.text[row.sent:], row.unsent, b, gen)


def _candidate(lm: LM, stop: list[str], healed: str, tokens: list[int], score: float) -> Candidate:
    """A ranked alternative cut as the returned text is: tokens up to EOS or a stop string, text without them."""
    row = _RowState(lm, stop, healed=healed)
    row.add(list(tokens), len(tokens))
    return Candidate(_final_text(lm, row), row.tokens, float(score))


def _generation(lm: LM, row: "_RowState", stats: Stats, method: str, params: dict) -> Generation:
    return Generation(_final_text(lm, row), row.tokens, row.finish or "length", stats, method, params)


class Engine:
    """Continuous batching: one method over a live batch that rows join and leave between steps.

    Orca's iteration-level scheduling (Yu et al., OSDI 2022): every `step()` runs one batched target
    forward over the rows alive now; a row added with `add()` is prefilled and merged into the batch
    before the next step (`Session.merge`), and a finished or cancelled row leaves at once. Rows share the
    method and its own parameters (a draft, widths …); each has its own prompt, seed, `max_new_tokens`,
    stop strings and, when given, sampling parameters, grammar and token healing, and its tokens are those
    it would get alone with the same seed and parameters (tests/methods/test_engine_continuous.py,
    tests/methods/test_engine_constrained.py).

        engine = Engine(lm, "pld")
        row = engine.add(lm.encode("def f(x):"), max_new_tokens=64, seed=0)
        while engine.busy:
            for event in engine.step():   # event.row, event.text; event.generation when the row ends
                ...
    """

    def __init__(self, lm: LM, method: str = "greedy", *, mixed: bool = False, **params):
        from .methods import get

        self.info = get(method)
        _per_row_only(params)
        if not self.info.continuous:
            users = ", ".join(sorted(n for n, m in _methods().items() if m.continuous))
            raise UserError(f"method {method!r} cannot take rows into a running batch; continuous methods: {users}")
        self.mixed = bool(mixed)
        self.lm, self.params = lm, self.info.check_params(params)
        self._given = dict(params)  # what rows that bring their own sampling parameters start from
        self.stats = Stats()
        sampler = Sampler(self.params, prompt_len=0)
        self.ctx = Context(lm, [], self.params, sampler, None, 0, self.stats)
        self.ctx.open = True
        self.ctx.generators = []  # one per row (None for a greedy row)
        self.rows: dict[int, _RowState] = {}
        self._started: dict[int, tuple] = {}  # row → (time added, batch target and draft forward passes then)
        self.ctx.row_stats = {}
        self._scorers: dict = {}  # rows that asked for logprobs → their logprobs.Scorer
        self._row_params: dict[int, dict] = {}  # rows with their own sampling parameters
        self._row_method: dict[int, str] = {}  # a mixed engine's rows of another method
        if self.mixed:  # every row drafts with its own method's proposer, all verified in one forward
            from .methods.loop import batched_loop

            self._factories: dict[tuple, Callable] = {}
            self._steps = batched_loop(self.ctx, self._proposer)
        else:
            self._steps = self.info.run(self.ctx)

    @property
    def busy(self) -> bool:
        """Some row is still generating."""
        return bool(self.rows)

    def add(self, prompt: str | list[int], *, max_new_tokens: int = 64, seed: int | None = None,
            stop: str | list[str] | None = None, logprobs: int | None = None, method: str | None = None,
            constraint: dict | None = None, token_healing: bool = False, **sampling) -> int:
        """A new row (text or token ids); it joins the batch at the next step. Returns its row id.

        `logprobs=k`: its Generation carries each token's log p and k alternatives (decodelab/logprobs.py).
        `**sampling` (temperature, top_p, … — SamplingParams names): this row's own sampling parameters;
        rows with different ones share the batch, each verified and drawn under its own.
        `constraint=` (docs/CONSTRAINTS.md) and `token_healing=True`: this row's own grammar and healing,
        with the tokens (same seed: the same text) `generate` gives it alone; a grammar needs an Engine
        whose loop verifies drafts (`fast_forwards`: a speculative method's, or any Engine made with
        `mixed=True`), which feeds grammar-forced tokens at once as `generate` does.
        `method=` (an Engine made with `mixed=True`): this row's own method, with its own parameters among
        `**sampling` — greedy, sample and the speculative methods share one batch, each row drafting with
        its own proposer and all rows verified in one forward per step."""
        from .inputs import check_common, check_seed, prompt_ids
        from .logprobs import check_top
        from .processors import SAMPLING_DEFAULTS

        _per_row_only(sampling)
        stop = check_common(max_new_tokens, stop)
        check_seed(seed)
        top = check_top(logprobs)
        mixed = method is not None and method != self.info.name or self.mixed and bool(sampling)
        if mixed:
            params = self._mixed_params(method or self.info.name, sampling)
        else:
            own = sorted(set(sampling) - set(SAMPLING_DEFAULTS))
            if own:
                raise UserError(f"Engine.add takes sampling parameters only; {own[0]!r} is the method's, set "
                                "when the Engine is made")
            params = self.info.check_params({**self._given, **sampling}) if sampling else None
        grammar = self._grammar(constraint, token_healing, top)
        ids = prompt_ids(self.lm, prompt)
        from .constraints import row_processors

        (healed_ids,), mask, healer, (healed,) = row_processors(self.lm, [ids], grammar, token_healing)
        own_sampler = params is not None or mask is not None or healer is not None
        sampler = Sampler(params or self.params, prompt_len=len(healed_ids), constraint=mask,
                          healing=healer) if own_sampler else self.ctx.sampler
        generator = None if sampler.greedy else row_generators(seed, 1)[0]
        b = self.ctx.add_row(healed_ids, generator, max_new_tokens)
        if own_sampler:
            self.ctx.row_samplers[b] = sampler
        if params is not None:
            self._row_params[b] = params
        if mixed:
            self.ctx.row_params[b] = params
            self._row_method[b] = method or self.info.name
        self.rows[b] = _RowState(self.lm, stop, mask.rows[0] if mask is not None else None, healed)
        self.ctx.row_stats[b] = Stats()
        if top is not None:
            from .logprobs import Scorer

            self._scorers[b] = Scorer(self.lm, ids, top)
        self._started[b] = (time.perf_counter(), self.stats.forward_passes, self.stats.draft_forward_passes)
        return b

    def _mixed_params(self, method: str, given: dict) -> dict:
        """A row's own method and parameters in a mixed engine (each checked by that method)."""
        from .methods import get

        if not self.mixed:
            raise UserError(f"this Engine runs {self.info.name!r}; make it with mixed=True to take rows of "
                            f"other methods ({method!r})")
        info = get(method)
        if info.proposers is None:
            users = ", ".join(sorted(n for n, m in _methods().items() if m.proposers is not None))
            raise UserError(f"method {method!r} cannot share a batch with other methods; these can: {users}")
        return info.check_params({**(self._given if method == self.info.name else {}), **given})

    def _grammar(self, constraint, token_healing, top: int | None):
        """A row's compiled grammar (None when it has none), after checking its per-row options."""
        from .constraints import compile_constraint
        from .inputs import check_healing
        from .logprobs import refuse_healed

        refuse_healed(top, check_healing(token_healing))
        if constraint is None:
            return None
        if not fast_forwards(self.info, self.mixed):
            raise UserError(f"a constrained row needs an Engine that verifies drafts: Engine(lm, {self.info.name!r}, "
                            "mixed=True) feeds grammar-forced tokens at once as generate does")
        try:
            return compile_constraint(self.lm, constraint)
        except UserError:
            raise
        except ValueError as exc:  # the grammar compiler's own check: still the input's fault
            raise UserError(str(exc)) from None

    def _proposer(self, view):
        """Row view → its proposer, from its method's factory (one factory per method and parameters, so
        rows of the same method and draft share a batch drafter)."""
        from .methods import get

        b = view.b
        method = self._row_method.get(b, self.info.name)
        info = get(method)
        own = {k: v for k, v in view.params.items() if k in info.specs}
        key = (method, json.dumps(own, sort_keys=True, default=str))
        if key not in self._factories:
            self._factories[key] = info.proposers(_WithParams(self.ctx, view.params))
        return self._factories[key](view)

    def cancel(self, b: int) -> None:
        """Row b leaves the batch before its next step (a client went away); no event follows."""
        if self.rows.pop(b, None) is not None:
            self.ctx.done[b] = True
            self._started.pop(b, None)
            self.ctx.row_stats.pop(b, None)
            self._row_params.pop(b, None)
            self._row_method.pop(b, None)
            self._scorers.pop(b, None)

    def step(self) -> list[Event]:
        """One step over the live batch: new text per row, and a last event with its Generation."""
        if not self.rows:
            return []
        emitted = next(self._steps)
        before = {b: len(r.tokens) for b, r in self.rows.items()}
        events = list(_absorb(self.ctx, self.rows, emitted))
        grown = {b: len(self.rows[b].tokens) - n for b, n in before.items() if n and b < len(emitted) and emitted[b]}
        for b, n in grown.items():  # a decoding step of a row already running (its first token is prefill's)
            self.ctx.row_stats[b].record_step(n)
        if grown:
            self.stats.record_step(sum(grown.values()) / len(grown))
        live = len(self.rows)  # the batch this step ran
        for b in [b for b, row in self.rows.items() if row.finish]:
            events.append(self._finish(b, live))
        for event in events:
            scorer = self._scorers.get(event.row)
            if scorer is not None:
                event.logprobs, event.top_logprobs = scorer.score(event.token_ids)
                if event.generation is not None:
                    event.generation.logprobs, event.generation.top_logprobs = scorer.logprobs, scorer.alternatives
                    del self._scorers[event.row]
        return events

    def _finish(self, b: int, live: int) -> Event:
        row = self.rows.pop(b)
        t0, passes, draft_passes = self._started.pop(b)
        stats = self.ctx.row_stats.pop(b)  # its steps and drafts; forward passes are the batch's in its lifetime
        stats.new_tokens, stats.forward_passes = len(row.tokens), self.stats.forward_passes - passes
        stats.draft_forward_passes = self.stats.draft_forward_passes - draft_passes
        stats.wall_time_s, stats.batch_size = time.perf_counter() - t0, live
        stats.log_z = self.ctx.kept_log_z(b, len(row.tokens))
        method = self._row_method.pop(b, self.info.name)
        gen = _generation(self.lm, row, stats, method, self._row_params.pop(b, self.params))
        if row.constraint is not None:
            gen.incomplete, gen.error = not row.grammar_done, row.error
        return Event(gen.text[row.sent:], row.unsent, b, gen)  # step() adds its logprobs

    def close(self) -> None:
        self._steps.close()


def _methods():
    from .methods import methods

    return methods()


def row_generators(seed: int | list[int] | None, n: int) -> list[torch.Generator]:
    """One torch.Generator per row: row i uses seed s + i (or seeds[i]), so a row's samples do not
    depend on the other rows in the batch (the same seed gives the same row as a batch of one)."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed + i for i in range(n)]
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


def _absorb(ctx: Context, rows, emitted: list[list[int]]) -> Iterator[Event]:
    """Row b's emitted tokens into its _RowState (rows: a list, or the Engine's dict of live rows)."""
    for b, tokens in enumerate(emitted):
        row = rows.get(b) if isinstance(rows, dict) else rows[b] if b < len(rows) else None
        if row is None or row.finish or not tokens:
            continue
        kept = row.add(tokens, ctx.remaining(b))
        if row.finish:
            ctx.done[b] = True
        ctx.out[b].extend(kept)
        row.unsent.extend(kept)
        visible = row.visible_text()
        if row.unsent and len(visible) > row.sent:
            yield Event(visible[row.sent:], row.unsent, b)
            row.sent, row.unsent = len(visible), []


def _final_text(lm: LM, row: _RowState) -> str:
    if row.ended_by_eos:
        return lm.decode(row.tokens[:-1])[row.skip :]
    return row.text
