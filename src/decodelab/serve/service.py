"""Turning a validated HTTP body into a scheduler `Job`, and finished rows into OpenAI responses.

Everything a request can get wrong is checked here, before the job is queued, so a bad request is an
HTTP 400 that never reaches the worker: the method and its parameters (decodelab's own validation,
`MethodInfo.check_params`), prompt token ids and length, `max_tokens` against the server's limit,
and the chat template. A request can never name a model or a file: the draft model of `speculative`
and `tree` is the one the server started with (`--draft`).
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from dataclasses import dataclass

from ..engine import Generation
from ..errors import UserError
from ..logprobs import refuse_healed
from ..methods import methods
from .errors import ApiError
from .metrics import Metrics
from .protocol import CONSTRAINT_KIND, ChatCompletionRequest, CompletionRequest, SamplingRequest
from .scheduler import ContinuousScheduler, Job, Row, RowEvent
from .sse import EventPipe

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions (capped by the server's limit)
MAX_CHOICES = 64  # prompts × n in one request
CHECKED_CACHE = 256  # parameter sets whose check is remembered (Server._check_params)


@dataclass
class Limits:
    max_tokens: int | None = None  # None: the model's context
    max_body_bytes: int = 1 << 20


class Server:
    """The served model, its scheduler and metrics; `lm=None` until `set_model` (HTTP 503 meanwhile)."""

    def __init__(self, lm=None, *, model_name: str | None = None, draft: str | None = None,
                 max_batch: int = 8, max_queue: int = 64, limits: Limits | None = None, stream_interval: int = 1,
                 mix_methods: bool = True):
        self.lm, self.draft = None, draft
        self.model_name = model_name
        self.max_batch, self.max_queue, self.stream_interval = max_batch, max_queue, stream_interval
        self.mix_methods = mix_methods
        self.limits = limits or Limits()
        self.created = int(time.time())
        self.scheduler: ContinuousScheduler | None = None
        self.metrics: Metrics | None = None
        self._lock = threading.Lock()
        self._usable: tuple = (None, [])  # (model, registry size) → usable method names
        self._checked: dict[tuple[str, str], dict] = {}  # (method, parameters as JSON) → check_params' result
        self.events = EventPipe()  # worker → event loop (serve/sse.py): the scheduler flushes it after each step
        if lm is not None:
            self.set_model(lm)

    def set_model(self, lm) -> None:
        with self._lock:
            self.model_name = self.model_name or lm.name
            self.metrics = Metrics(self.model_name)
            self.scheduler = ContinuousScheduler(lm, max_batch=self.max_batch, max_queue=self.max_queue,
                                               observer=self.metrics, stream_interval=self.stream_interval,
                                               mix_methods=self.mix_methods, flush=self.events.flush)
            self.metrics.track(self.scheduler)
            self.scheduler.start()
            self.lm = lm

    def start(self) -> None:
        if self.scheduler is not None:
            self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()

    @property
    def ready(self) -> bool:
        return self.lm is not None and self.scheduler is not None and self.scheduler.alive

    def require_ready(self, model: str | None = None) -> None:
        if not self.ready:
            raise ApiError(503, "the model is loading or the worker stopped; retry later")
        if model is not None and model != self.model_name:
            raise ApiError(404, f"model {model!r} not found; this server serves {self.model_name!r}", "model")

    @property
    def max_tokens(self) -> int:
        return min(self.limits.max_tokens or self.lm.max_length, self.lm.max_length)

    def usable_methods(self) -> list[str]:
        """The registered methods for this model's kind (causal or diffusion); computed once per model and
        registry size (every request asks)."""
        table, kind = methods(), model_kind(self.lm)
        key = (id(self.lm), len(table))
        if self._usable[0] != key:
            self._usable = (key, sorted(n for n, m in table.items() if getattr(m, "kind", "causal") == kind))
        return self._usable[1]

    # ---- building jobs ----

    def completion_prompts(self, req: CompletionRequest) -> list[list[int]]:
        p = req.prompt
        many = isinstance(p, list) and p and not isinstance(p[0], int)
        prompts = [self.prompt_ids(x) for x in p] if many else [self.prompt_ids(p)]
        if not prompts:
            raise ApiError(400, "prompt is empty: give at least one prompt", "prompt")
        return prompts

    def chat_prompt(self, req: ChatCompletionRequest) -> list[int]:
        template = getattr(self.lm.tokenizer, "chat_template", None)
        if not template:
            raise ApiError(400, f"model {self.model_name!r} has no chat template; use /v1/completions "
                                "with a plain prompt", "messages")
        messages = [{"role": m.role, "content": m.content if isinstance(m.content, str)
                     else "".join(part.text for part in m.content)} for m in req.messages]
        try:
            text = self.lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # noqa: BLE001 - a template's own error (e.g. roles must alternate)
            raise ApiError(400, f"chat template failed: {exc}", "messages") from None
        return self.prompt_ids(text)

    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        ids = self.lm.encode(prompt) if isinstance(prompt, str) else list(prompt)
        bad = next((t for t in ids if not 0 <= t < self.lm.vocab_size), None)
        if bad is not None:
            raise ApiError(400, f"prompt token id {bad} out of range [0, {self.lm.vocab_size})", "prompt")
        if not ids:
            raise ApiError(400, "prompt is empty: give at least one token", "prompt")
        if len(ids) >= self.lm.max_length:
            raise ApiError(400, f"prompt has {len(ids)} tokens; the model's maximum context is "
                                f"{self.lm.max_length}", "prompt")
        return ids

    def job(self, req: SamplingRequest, prompts: list[list[int]], max_new_tokens: int | None, emit) -> Job:
        """A validated Job with one row per (prompt, choice); raises ApiError(400) on bad input."""
        top = _logprobs(req)
        method, params = self._params(req)
        try:  # refused here, before the request is queued (decodelab.generate and Engine.add say the same)
            refuse_healed(top, req.token_healing)
        except UserError as exc:
            raise ApiError(400, str(exc), "logprobs") from None
        if top is not None and req.stream and not methods()[method].continuous:
            raise ApiError(400, f"streamed logprobs come from the continuous-batching engine: method {method!r} "
                                "needs stream=false for logprobs", "logprobs")
        checked = self._check_params(method, params)
        if (constraint := _constraint(req)) is not None:
            params["constraint"] = constraint
        if req.token_healing:  # decodelab checks it with the method (a refusal is a 400) before generating
            params["token_healing"] = True
        if max_new_tokens is None:
            max_new_tokens = min(self.max_tokens, self.lm.max_length - max(len(p) for p in prompts))
        if max_new_tokens > self.max_tokens:
            raise ApiError(400, f"max_tokens must be ≤ {self.max_tokens} on this server, got {max_new_tokens}",
                           "max_tokens")
        if len(prompts) * req.n > MAX_CHOICES:
            raise ApiError(400, f"{len(prompts)} prompts × n={req.n} asks for {len(prompts) * req.n} choices; "
                                f"at most {MAX_CHOICES} per request", "n")
        greedy = checked["temperature"] == 0
        seed = req.seed if req.seed is not None or greedy else random.getrandbits(62)  # drawn once: batchable
        rows = [Row(p, j * req.n + i, None if seed is None else seed + i)
                for j, p in enumerate(prompts) for i in range(req.n)]
        return Job(method, params, max_new_tokens, req.stop or [], rows, req.stream,
                   greedy=greedy, batched=methods()[method].batched, emit=emit, logprobs=top)

    def _check_params(self, method: str, params: dict) -> dict:
        """`MethodInfo.check_params` (ApiError 400 on a bad value), remembered for the parameters already
        seen (at most CHECKED_CACHE sets): clients send the same few again and again, and the check builds
        a full SamplingParams each time. Only valid parameters are remembered."""
        try:
            key = (method, json.dumps(params, sort_keys=True))
        except (TypeError, ValueError):
            key = None
        if key is not None and key in self._checked:
            return self._checked[key]
        try:
            checked = methods()[method].check_params(params)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        if key is not None:
            if len(self._checked) >= CHECKED_CACHE:
                self._checked.pop(next(iter(self._checked)))
            self._checked[key] = checked
        return checked

    def _params(self, req: SamplingRequest) -> tuple[str, dict]:
        table = methods()
        if req.method is None:  # an OpenAI client sets only temperature: > 0 samples, as it expects
            req.method = "sample" if (req.temperature or 0) > 0 else "greedy"
        if req.method not in table:
            raise ApiError(400, f"unknown method {req.method!r}; available: {', '.join(sorted(table))}", "method")
        info = table[req.method]
        if req.method not in self.usable_methods():
            raise ApiError(400, f"method {req.method!r} does not decode this model ({self.model_name!r}, "
                                f"{model_kind(self.lm)}); use one of: {', '.join(self.usable_methods())}", "method")
        if "draft" in req.method_params:
            raise ApiError(400, "method_params.draft: a request cannot choose a model; the draft model is "
                                "set when the server starts (decodelab serve --draft)", "method_params")
        unknown = sorted(set(req.method_params) - set(info.specs))
        if unknown:
            own = ", ".join(sorted(k for k in info.specs if k != "draft")) or "none"
            raise ApiError(400, f"method_params: unknown parameter {unknown[0]!r} for method {req.method!r} "
                                f"(its parameters: {own}; sampling parameters go at the top level)",
                           "method_params")
        params = {**req.sampling_params(), **req.method_params}
        if "draft" in info.specs:
            params["draft"] = self.draft or "auto"
        return req.method, params

    # ---- responses ----

    def info_block(self, job: Job, gens: dict[int, Generation]) -> dict:
        end = max(job.last_token.values(), default=time.perf_counter())
        return {"method": job.method,
                "queue_time_s": round((job.started or job.created) - job.created, 6),
                "time_to_first_token_s": None if job.first_token is None else round(job.first_token - job.created, 6),
                "e2e_s": round(end - job.created, 6),
                "choices": [row_stats(i, gens[i]) for i in sorted(gens)]}

    def usage(self, job: Job, gens: dict[int, Generation], n: int) -> dict:
        prompt = sum(len(r.prompt) for r in job.rows[::n])
        completion = sum(len(g.token_ids) for g in gens.values())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def finish(self, job: Job, gens: dict[int, Generation], n: int) -> None:
        """Metrics for a request that ended; rows without a Generation were aborted."""
        reasons = [finish_reason(gens[r.index]) if r.index in gens else "abort"
                   for r in job.rows]
        self.metrics.on_request_done(job, sum(len(r.prompt) for r in job.rows[::n]), reasons, time.perf_counter())


def finish_reason(gen: Generation) -> str:
    """OpenAI's finish_reason: `length` when max_tokens (or the context) cut the text, else `stop`."""
    return "length" if gen.finish_reason == "length" else "stop"


def model_kind(lm) -> str:
    return getattr(lm, "kind", "causal")


def row_stats(index: int, gen: Generation) -> dict:
    """One choice's decodelab result: its token ids, decodelab's finish reason and its Stats."""
    s = gen.stats
    return {"index": index, "token_ids": gen.token_ids, "finish_reason": gen.finish_reason,
            "stats": {**s.to_dict(), "drafted_tokens": sum(s.drafted), "accepted_tokens": sum(s.accepted)}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _logprobs(req: SamplingRequest) -> int | None:
    """Alternatives per token the request asks for (completions: logprobs=k; chat: logprobs + top_logprobs),
    or None. Streamed responses do not carry them yet: 400 rather than silently leaving them out."""
    asked = getattr(req, "logprobs", None)
    top = getattr(req, "top_logprobs", None)
    if isinstance(asked, bool):  # chat
        if top is not None and not asked:
            raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        k = (top or 0) if asked else None
    else:
        k = asked
    return k


def logprobs_block(lm, token_ids: list[int], logprobs: list[float] | None, top_logprobs, chat: bool,
                   offset: int = 0) -> dict | None:
    """OpenAI's logprobs object of one choice or one streamed chunk (completions or chat shape), None when
    not asked."""
    if logprobs is None:
        return None
    texts = [lm.decode([t]) for t in token_ids]
    alts = [[(lm.decode([i]), lp) for i, lp in row] for row in top_logprobs]
    if chat:
        def item(text, lp):
            return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}
        return {"content": [{**item(t, lp), "top_logprobs": [item(a, alp) for a, alp in row]}
                            for t, lp, row in zip(texts, logprobs, alts)]}
    offsets = [offset + sum(len(x) for x in texts[:i]) for i in range(len(texts))]
    return {"tokens": texts, "token_logprobs": logprobs,
            "top_logprobs": [_by_text(row) for row in alts] if any(alts) else None, "text_offset": offsets}


def _by_text(row: list[tuple[str, float]]) -> dict[str, float]:
    """Alternatives keyed by text (OpenAI's completions shape): two tokens with one text keep the likelier."""
    out: dict[str, float] = {}
    for text, lp in row:
        out.setdefault(text, lp)
    return out


def _constraint(req: SamplingRequest) -> dict | None:
    """`response_format` / `structured_outputs` as decodelab's `constraint=` (docs/CONSTRAINTS.md)."""
    rf, so = req.response_format, req.structured_outputs
    if rf is not None and so is not None:
        raise ApiError(400, "give response_format or structured_outputs, not both", "structured_outputs")
    constraint = None
    if rf is not None and rf.type == "json_object":
        constraint = {"json_schema": {"type": "object"}}
    elif rf is not None and rf.type == "json_schema":
        if rf.json_schema is None:
            raise ApiError(400, "response_format.json_schema is required when type is 'json_schema'",
                           "response_format")
        constraint = {"json_schema": rf.json_schema.schema_}
    elif so is not None:
        given = {CONSTRAINT_KIND[k]: v for k, v in so.model_dump(by_alias=True, exclude_none=True).items()}
        if len(given) != 1:
            raise ApiError(400, "structured_outputs takes exactly one of json, regex, choice, grammar",
                           "structured_outputs")
        constraint = given
    return constraint  # decodelab validates it (ValueError → 400) before generating


def row_event_error(event: RowEvent) -> ApiError:
    """A worker-side failure as an HTTP error: decodelab's own errors are the request's fault (400)."""
    from ..errors import DecodelabError

    if isinstance(event.error, (ValueError, DecodelabError)):
        return ApiError(400, str(event.error))
    return ApiError(500, f"internal error ({type(event.error).__name__}); the server goes on serving")
