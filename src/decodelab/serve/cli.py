"""`decodelab serve`: load a model and run the OpenAI-compatible server with uvicorn."""

from __future__ import annotations

import argparse
import sys
import threading

from ..errors import UserError


def add_parser(subparsers) -> argparse.ArgumentParser:
    s = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server (docs/SERVING.md)")
    s.add_argument("--model", default=None, help="builtin:NAME, a local HF directory or a Hub id (default builtin:pyco)")
    s.add_argument("--draft", default=None, help="draft model for speculative/tree (default: the model's own, if any)")
    s.add_argument("--backend", default=None, help="native, transformers or auto (decodelab.load)")
    s.add_argument("--dtype", default=None, help="float32, float16 or bfloat16")
    s.add_argument("--device", default="cpu")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    s.add_argument("--max-batch", type=int, default=8, help="rows per batched generate call")
    s.add_argument("--max-queue", type=int, default=64, help="waiting requests before HTTP 429")
    s.add_argument("--max-tokens", type=int, default=None, help="largest max_tokens a request may ask (default: context)")
    s.add_argument("--stream-interval", type=int, default=1,
                   help="streamed rows: send new text once every N tokens (and at the end); 1 = every step")
    s.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                   help="uvicorn's event loop (auto: uvloop when installed)")
    s.add_argument("--http", choices=("auto", "httptools", "h11"), default="auto",
                   help="uvicorn's HTTP parser (auto: httptools when installed)")
    s.add_argument("--no-mix", action="store_true",
                   help="never put rows of different methods in one step (one engine per method, in turn)")
    from ..cli import add_load_flags

    add_load_flags(s)  # --allow-pickle / --trust-remote-code, as for generate
    s.set_defaults(func=cmd_serve)
    return s


def _check(args) -> None:
    for name in ("max_batch", "max_queue", "max_tokens", "stream_interval"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be ≥ 1, got {value}")
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    check_stack(args.loop, args.http)


def check_stack(loop: str, http: str) -> None:
    """`--loop uvloop` / `--http httptools` need those packages (the serve extra)."""
    from importlib.util import find_spec

    for flag, name in (("--loop", loop), ("--http", http)):
        if name in ("uvloop", "httptools") and find_spec(name) is None:
            raise UserError(f"{flag} {name} needs the {name} package: pip install 'decodelab[serve]'")


def _warm_draft(lm, draft: str | None) -> None:
    """Load (and check) the draft model now, so that no request waits for it: the one given, else
    the model's own default draft when it has one (e.g. builtin:pyco-draft for builtin:pyco)."""
    from .. import generate, methods

    if getattr(lm, "kind", "causal") != "causal" or "speculative" not in methods():
        return
    try:
        generate(lm, "a", method="speculative", draft=draft or "auto", max_new_tokens=1)
    except ValueError:
        if draft is not None:
            raise  # the user's --draft is wrong; without one, "no default draft" is fine


def cmd_serve(args) -> None:
    """Open the port at once (503 while the model loads), load in the background, then serve.

    A model that fails to load stops the server and is reported as the command's one-line error."""
    _check(args)
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise UserError(f"decodelab serve needs the 'serve' extra ({exc.name} is missing): "
                         "pip install 'decodelab[serve]'") from None
    app = create_app(None, draft=args.draft, api_key=args.api_key, max_batch=args.max_batch,
                     max_queue=args.max_queue, max_tokens=args.max_tokens, stream_interval=args.stream_interval,
                     mix_methods=not args.no_mix)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           loop=args.loop, http=args.http))
    failed: list[BaseException] = []
    loader = threading.Thread(target=_load_into, args=(args, app, server, failed), daemon=True)
    loader.start()
    server.run()
    loader.join(timeout=1)
    if failed:
        raise failed[0]


def _load_into(args, app, server, failed: list) -> None:
    from .. import load

    kwargs = {"device": args.device, "dtype": args.dtype, "allow_pickle": args.allow_pickle,
              "trust_remote_code": args.trust_remote_code}
    if args.backend is not None:
        kwargs["backend"] = args.backend
    try:
        lm = load(args.model, **kwargs)
        _warm_draft(lm, args.draft)
        app.state.server.set_model(lm)
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which reports it in one line
        failed.append(exc)
        server.should_exit = True
        return
    print(f"decodelab: serving {lm.name} on http://{args.host}:{args.port}/v1 ({_stack(args)})", file=sys.stderr)


def _stack(args) -> str:
    """The event loop and HTTP parser uvicorn runs: with "auto", uvloop and httptools when installed (the
    serve extra), else asyncio and h11 — the former cost about half the CPU per streamed chunk (docs/SERVING.md)."""
    from importlib.util import find_spec

    loop, http = args.loop, args.http
    if loop == "auto":
        loop = "uvloop" if find_spec("uvloop") is not None and sys.platform != "win32" else "asyncio"
    if http == "auto":
        http = "httptools" if find_spec("httptools") is not None else "h11"
    return f"{loop} event loop, {http} HTTP parser"
