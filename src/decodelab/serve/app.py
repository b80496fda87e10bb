"""The FastAPI app: OpenAI-compatible routes, server-sent events, auth, and error handling.

Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics,
GET /openapi.json. Streaming follows OpenAI's server-sent events: `data: {chunk}` lines, a final
usage chunk when `stream_options.include_usage` is true, then `data: [DONE]`. A client that goes
away cancels its job: the worker closes the row's `decodelab.stream` generator before the next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..methods import methods
from .errors import ApiError, error_response, validation_message
from .protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelList,
)
from .scheduler import Job, QueueFull, RowEvent
from .service import (
    DEFAULT_COMPLETION_TOKENS,
    Limits,
    Server,
    finish_reason,
    logprobs_block,
    new_id,
    row_event_error,
    row_stats,
)
from .sse import Chunks, Sink

log = logging.getLogger("decodelab.serve")
DISCONNECT_POLL_S = 0.25


def create_app(lm=None, *, model_name: str | None = None, draft: str | None = None, api_key: str | None = None,
               max_batch: int = 8, max_queue: int = 64, max_tokens: int | None = None,
               max_body_bytes: int = 1 << 20, stream_interval: int = 1, mix_methods: bool = True) -> FastAPI:
    """An app serving `lm` (or nothing yet: `app.state.server.set_model(lm)` later; 503 until then).

    `stream_interval`: a streamed row's new text goes out once it holds that many tokens (and at the
    row's end) — fewer, larger chunks, for less per-token work beside the model (docs/SERVING.md).
    `mix_methods=False`: requests of different methods never share a step (one engine per method, stepped
    in turn) — for measuring what mixing gains (docs/SERVING.md)."""
    server = Server(lm, model_name=model_name, draft=draft, max_batch=max_batch, max_queue=max_queue,
                    limits=Limits(max_tokens, max_body_bytes), stream_interval=stream_interval,
                    mix_methods=mix_methods)

    @asynccontextmanager
    async def lifespan(app):
        server.start()  # again, when a previous lifespan stopped it
        yield
        server.stop()

    app = FastAPI(title="decodelab", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible server for every decodelab decoding method.")
    app.state.server = server
    _add_error_handlers(app)
    _add_body_limit(app, max_body_bytes)
    auth = _auth(api_key)
    _add_routes(app, server, auth)
    app.openapi = _openapi(app)
    return app


# ---- routes ----

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429, 503)}
# each server-sent event (OpenAPI 3.1 reading: `schema` describes one event); `data` holds a JSON chunk
# (the response's shape with `delta` / `text` pieces, `usage` on the last) or `[DONE]`
SSE = {"text/event-stream": {"schema": {"type": "object", "required": ["data"],
                                        "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}}}


def _add_routes(app: FastAPI, server: Server, auth) -> None:
    v1 = [Depends(auth)]

    @app.post("/v1/completions", dependencies=v1, response_model=None,
              responses={200: {"model": CompletionResponse, "content": SSE}, **ERRORS})
    async def completions(req: CompletionRequest, request: Request):
        server.require_ready(req.model)
        prompts = server.completion_prompts(req)
        echo = [server.lm.decode(p) for p in prompts] if req.echo else None
        return await _serve(server, request, req, prompts,
                            req.max_tokens or min(DEFAULT_COMPLETION_TOKENS, server.max_tokens),
                            _CompletionShape(echo, req.n))

    @app.post("/v1/chat/completions", dependencies=v1, response_model=None,
              responses={200: {"model": ChatCompletionResponse, "content": SSE}, **ERRORS})
    async def chat(req: ChatCompletionRequest, request: Request):
        server.require_ready(req.model)
        prompt = server.chat_prompt(req)
        return await _serve(server, request, req, [prompt], req.max_completion_tokens or req.max_tokens,
                            _ChatShape())

    @app.get("/v1/models", dependencies=v1, response_model=ModelList, responses=ERRORS)
    async def models():
        server.require_ready()
        table = {name: {"description": m.description, "lossless": m.lossless, "batched": m.batched,
                        "params": {k: v for k, v in m.params.items() if k != "draft"}, "paper": m.paper}
                 for name, m in methods().items() if name in server.usable_methods()}
        return {"object": "list", "data": [{"id": server.model_name, "object": "model", "created": server.created,
                                            "owned_by": "decodelab", "max_model_len": server.lm.max_length,
                                            "methods": table}]}

    @app.get("/health", responses={503: {"model": ErrorResponse}})
    async def health():
        server.require_ready()
        return {"status": "ok"}

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}, 503: {}})
    async def metrics():
        server.require_ready()
        return Response(server.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")


class _CompletionShape:
    object, chunk_object = "text_completion", "text_completion"

    def __init__(self, echo: list[str] | None, n: int):
        self.echo, self.n = echo, n

    def prefix(self, index: int) -> str:
        return self.echo[index // self.n] if self.echo else ""

    def choice(self, index: int, text: str, finish: str | None) -> dict:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}

    def full(self, index: int, text: str, finish: str | None) -> dict:
        return self.choice(index, self.prefix(index) + text, finish)

    def opening(self, indices) -> list[dict]:
        return [self.choice(i, self.prefix(i), None) for i in indices if self.prefix(i)]


class _ChatShape:
    object, chunk_object, n = "chat.completion", "chat.completion.chunk", 1

    def choice(self, index: int, text: str, finish: str | None) -> dict:
        return {"index": index, "delta": {"content": text} if text else {}, "logprobs": None,
                "finish_reason": finish}

    def full(self, index: int, text: str, finish: str | None) -> dict:
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish}

    def opening(self, indices) -> list[dict]:
        return [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                 "finish_reason": None} for i in indices]


async def _serve(server: Server, request: Request, req, prompts, max_new_tokens, shape):
    sink = server.events.sink()  # the worker's events for this request (serve/sse.py)
    job = server.job(req, prompts, max_new_tokens, sink.put)
    try:
        server.scheduler.submit(job)
    except QueueFull as exc:
        raise ApiError(429, str(exc)) from None
    head = {"id": new_id("cmpl" if shape.object == "text_completion" else "chatcmpl"),
            "created": int(time.time()), "model": server.model_name}
    if req.stream:
        first = await _first_events(server, request, job, sink, req.n)  # an early failure is still a 400
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_sse(server, job, first, sink, Chunks(head, shape), include_usage, req.n),
                                 media_type="text/event-stream")
    gens = await _collect(server, request, job, sink, req.n)
    choices = [shape.full(i, g.text, finish_reason(g)) for i, g in sorted(gens.items())]
    for choice, (i, g) in zip(choices, sorted(gens.items())):
        choice["logprobs"] = logprobs_block(server.lm, g.token_ids, g.logprobs, g.top_logprobs,
                                            shape.object == "chat.completion",
                                            len(shape.prefix(i)) if hasattr(shape, "prefix") else 0)
    # a Response, so FastAPI does not walk the body with jsonable_encoder (plain JSON types already: the same bytes)
    return JSONResponse({**head, "object": shape.object, "choices": choices, "usage": server.usage(job, gens, req.n),
                         "decodelab": server.info_block(job, gens)})


async def _next_events(request: Request, sink: Sink) -> list[RowEvent]:
    """The job's waiting events (at least one), watching for the client going away while it waits."""
    while True:
        try:
            return await asyncio.wait_for(sink.get(), DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                raise ApiError(499, "client disconnected") from None


async def _first_events(server: Server, request: Request, job: Job, sink: Sink, n: int) -> list[RowEvent]:
    try:
        events = await _next_events(request, sink)
        if events[0].error is not None:
            raise row_event_error(events[0])
    except BaseException:
        job.cancelled.set()
        server.finish(job, {}, n)
        raise
    return events


async def _collect(server: Server, request: Request, job: Job, sink: Sink, n: int) -> dict:
    gens: dict = {}
    try:
        while len(gens) < len(job.rows):
            for event in await _next_events(request, sink):
                if event.error is not None:
                    raise row_event_error(event)
                if event.generation is not None:
                    gens[event.index] = event.generation
    finally:
        job.cancelled.set()  # no-op when done; stops the rows that are left otherwise
        server.finish(job, gens, n)
    return gens


async def _sse(server: Server, job: Job, events: list[RowEvent], sink: Sink, chunks: Chunks,
               include_usage: bool, n: int) -> AsyncIterator[str]:
    """The stream's SSE lines: one chunk per event; the events waiting together go out in one write."""
    shape = chunks.shape
    gens: dict = {}
    offsets: dict[int, int] = {}  # per choice: characters streamed so far (completions' text_offset)
    out: list[str] = []
    try:
        if opening := shape.opening(r.index for r in job.rows):
            out.append(chunks.line(opening))
        while True:
            failed = _lines(server, chunks, events, gens, offsets, out)
            if failed or len(gens) == len(job.rows):
                break
            if out:
                yield "".join(out)
                out = []
            events = await sink.get()
        if include_usage and len(gens) == len(job.rows):
            out.append(chunks.line([], usage=server.usage(job, gens, n), decodelab=server.info_block(job, gens)))
        out.append("data: [DONE]\n\n")
        yield "".join(out)
    finally:  # also reached when the client disconnects (the response task is cancelled)
        job.cancelled.set()
        server.finish(job, gens, n)


def _lines(server: Server, chunks: Chunks, events: list[RowEvent], gens: dict, offsets: dict[int, int],
           out: list[str]) -> bool:
    """Append the events' chunks to `out` and the finished rows to `gens`; True after an error (its chunk
    is the last)."""
    for event in events:
        if event.error is not None:
            err = row_event_error(event)
            out.append("data: " + json.dumps({"error": {"message": err.message, "code": err.status}}) + "\n\n")
            return True
        if event.generation is None and event.logprobs is None:
            if event.text:  # the per-token chunk: a template around the text
                out.append(chunks.text(event.index, event.text))
            continue
        if event.text or event.generation is not None or event.logprobs:
            out.append(_event_line(server, chunks, event, offsets))
        if event.generation is not None:
            gens[event.index] = event.generation
    return False


def _event_line(server: Server, chunks: Chunks, event: RowEvent, offsets: dict[int, int]) -> str:
    """The chunk of an event with a finish reason (and the choice's decodelab entry) or logprobs."""
    shape = chunks.shape
    finish = None if event.generation is None else finish_reason(event.generation)
    extra = {"decodelab": row_stats(event.index, event.generation)} if finish else {}
    choice = shape.choice(event.index, event.text, finish)
    if event.logprobs is not None:  # this chunk's tokens (the continuous engine scores as it streams)
        chat = shape.chunk_object != "text_completion"
        start = offsets.get(event.index, 0 if chat else len(shape.prefix(event.index)))
        block = logprobs_block(server.lm, event.token_ids, event.logprobs, event.top_logprobs, chat, start)
        choice["logprobs"] = block
        offsets[event.index] = start + (0 if chat else sum(len(t) for t in block["tokens"]))
    return chunks.line([choice], **extra)


# ---- auth, limits, errors, schema ----

def _auth(api_key: str | None):
    async def check(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')")
    return check


class _BodyLimit:
    """Pure ASGI middleware (BaseHTTPMiddleware gets in the way of streaming and disconnects): reads the
    body first, answering 413 once it passes the limit (declared Content-Length or chunked), then
    replays it to the app; later `receive` calls (the disconnect) go to the server as usual."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        size = dict(scope["headers"]).get(b"content-length")
        if size is not None and (not size.isdigit() or int(size) > self.limit):
            return await self._too_large(scope, receive, send)
        body, seen = deque(), 0
        while True:
            message = await receive()
            body.append(message)
            seen += len(message.get("body", b""))
            if seen > self.limit:
                return await self._too_large(scope, receive, send)
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay():
            return body.popleft() if body else await receive()
        await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send) -> None:
        await error_response(413, f"request body larger than {self.limit} bytes")(scope, receive, send)


def _add_body_limit(app: FastAPI, limit: int) -> None:
    app.add_middleware(_BodyLimit, limit=limit)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.param)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        return error_response(400, *validation_message(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); the server goes on serving")


def _openapi(app: FastAPI):
    """FastAPI's schema with its 422 replaced by the 400 this server really sends."""
    def build() -> dict:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            for path in schema.get("paths", {}).values():
                for op in path.values():
                    op.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema
    return build

