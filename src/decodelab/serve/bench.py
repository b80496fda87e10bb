"""Load benchmark of `decodelab serve` on loopback: throughput, time to first token, latency percentiles.

    python -m decodelab.serve.bench --model builtin:pyco --method greedy --concurrency 1,4,16 --requests 8

Starts the server (a `decodelab serve` subprocess by default, or in this process with `--server
inprocess`, or uses a running loopback server given by `--url`), then for each concurrency level C
runs C client threads that each send `--requests` streamed `/v1/completions` requests one after the
other (prompts from a bench suite, cycled; request i uses seed `--seed + i`). A level is bounded in
count (C × requests) and in time (`--time-limit`: no request starts after it, and a request still
running then is cut off by its socket timeout). Reported per level, as vLLM's `benchmark_serving`
does: aggregate output tokens/s, requests/s, time to first token (TTFT), time per output token after
the first (TPOT), inter-chunk latency (ITL) and end-to-end latency, each as mean / p50 / p90 / p99,
plus failures with their messages. `--baseline` also runs the c = 1 requests in-process
(`decodelab.generate`, same prompts, seeds and parameters) for the HTTP layer's overhead per token
and checks the outputs are the same text. CPU time per output token is recorded apart for the server
process (every thread, the model's included; `--baseline` records the same for in-process generation) and
for the benchmark's clients, so what the HTTP layer costs on each side can be told apart. The machine's load is recorded around each level
(decodelab.bench.machine; the server subprocess's own CPU time is not counted as another process's).
Writes results.json and report.md to `--out`. Only loopback addresses are ever contacted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import UserError
from .protocol import CONSTRAINT_KIND

LOOPBACK = ("127.0.0.1", "localhost", "::1")
clock = time.perf_counter


@dataclass
class Target:
    """Where the requests go, and how to stop the server afterwards."""

    host: str
    port: int
    server_pid: int | None = None  # its CPU time is excluded from "other processes" in the load record
    stop: object = None  # callable, or None for a server we did not start
    api_key: str | None = None
    log: list[str] = field(default_factory=list)


# ---- one request ----

def request_body(args, index: int, prompts: list[str]) -> dict:
    method = request_method(args, index)
    body = {"prompt": prompts[index % len(prompts)], "max_tokens": args.max_tokens, "temperature": args.temperature,
            "seed": args.seed + index, "method": method, "stream": not args.no_stream}
    if params_for(args, method):
        body["method_params"] = params_for(args, method)
    constraint = constraint_of(args, index)
    if constraint is not None:  # a suite prompt's grammar (the json suite), as vLLM's structured_outputs
        (kind, value), = constraint.items()
        body["structured_outputs"] = {STRUCTURED[kind]: value}
    if not args.no_stream:
        body["stream_options"] = {"include_usage": True}
    return body


STRUCTURED = {kind: key for key, kind in CONSTRAINT_KIND.items()}  # constraint kind → structured_outputs key


def constraint_of(args, index: int) -> dict | None:
    """Request i's constraint: that of its suite prompt (cycled like the prompts), or None."""
    constraints = getattr(args, "constraints", None) or [None]
    return constraints[index % len(constraints)]


def request_method(args, index: int) -> str:
    """Request i's method: `--method a,b,c` is cycled over the requests (a, b, c, a, …)."""
    return args.methods[index % len(args.methods)]


def params_for(args, method: str) -> dict:
    """`-p KEY=VALUE` applies to every method, `-p METHOD.KEY=VALUE` to that method only."""
    return {**args.method_params.get("", {}), **args.method_params.get(method, {})}


def send(target: Target, body: dict, timeout: float) -> dict:
    """POST one completion; a record with ok, status, error, times (s from the request's start), tokens, text."""
    t0 = clock()
    conn = http.client.HTTPConnection(target.host, target.port, timeout=max(timeout, 0.1))
    headers = {"Content-Type": "application/json"}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            return _failed(t0, resp.status, _error_message(resp.read()))
        return _read_stream(resp, t0) if body["stream"] else _read_json(resp, t0)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return _failed(t0, None, f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def _failed(t0: float, status: int | None, message: str) -> dict:
    return {"ok": False, "status": status, "error": message[:300], "e2e_s": clock() - t0}


def _error_message(raw: bytes) -> str:
    try:
        return json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return raw[:300].decode(errors="replace")


def _read_stream(resp, t0: float) -> dict:
    """Server-sent events: text pieces as they arrive, the usage chunk, then `data: [DONE]`."""
    text, arrivals, usage, done = [], [], None, False
    while line := resp.readline():
        if not line.startswith(b"data: "):
            continue
        payload = line[6:].strip()
        if payload == b"[DONE]":
            done = True
            break
        chunk = json.loads(payload)
        if "error" in chunk:
            return _failed(t0, 200, f"stream error: {chunk['error'].get('message')}")
        piece = "".join(c.get("text", "") for c in chunk.get("choices", []))
        if piece:
            text.append(piece)
            arrivals.append(clock() - t0)
        usage = chunk.get("usage") or usage
    end = clock() - t0
    if not done or usage is None:
        return _failed(t0, 200, "stream ended without its usage chunk and [DONE]")
    return _record(end, arrivals[0] if arrivals else None, arrivals, usage, "".join(text))


def _read_json(resp, t0: float) -> dict:
    body = json.loads(resp.read())
    end = clock() - t0
    ttft = (body.get("decodelab") or {}).get("time_to_first_token_s")  # the server's own figure
    return _record(end, ttft, [], body["usage"], "".join(c["text"] for c in body["choices"]))


def _record(end: float, ttft: float | None, arrivals: list[float], usage: dict, text: str) -> dict:
    tokens = usage["completion_tokens"]
    tpot = (end - ttft) / (tokens - 1) if ttft is not None and tokens > 1 else None
    return {"ok": True, "status": 200, "e2e_s": end, "ttft_s": ttft, "tpot_s": tpot,
            "itl_s": [b - a for a, b in zip(arrivals, arrivals[1:])], "chunks": len(arrivals),
            "prompt_tokens": usage["prompt_tokens"], "completion_tokens": tokens, "text": text}


# ---- one concurrency level ----

def run_level(target: Target, args, prompts: list[str], concurrency: int, first_index: int = 0) -> dict:
    """`concurrency` clients × `args.requests` requests each, none started after `args.time_limit` s."""
    from ..bench import machine

    records: list[dict] = []
    lock = threading.Lock()
    before = machine.snapshot()  # 1 s of the machine alone, before the clock starts
    cpu0, server0, client0 = machine.sample(), _proc_cpu_s(target.server_pid), _own_cpu_s()
    start = clock()
    deadline = start + args.time_limit

    def client(k: int) -> None:
        for j in range(args.requests):
            if clock() >= deadline:
                return
            index, began = first_index + k * args.requests + j, clock()
            rec = send(target, request_body(args, index, prompts), deadline - began + args.request_slack)
            with lock:
                records.append({"client": k, "index": index, "start_s": round(began - start, 6), **rec})

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall, client1, server1 = clock() - start, _own_cpu_s(), _proc_cpu_s(target.server_pid)
    during = _others_share(cpu0, machine.sample(), server0, server1)
    load = machine.report(before, during, machine.snapshot())
    cpu = {"server_s": None if server0 is None or server1 is None else round(server1 - server0, 3),
           "client_s": None if args.server == "inprocess" and not args.url else round(client1 - client0, 3)}
    return summarize(concurrency, concurrency * args.requests, records, wall, load, cpu)


def summarize(concurrency: int, planned: int, records: list[dict], wall: float, load: dict | None,
              cpu: dict | None = None) -> dict:
    """A level's figures. `cpu`: CPU seconds of the server process (all its threads: the model too) and of
    the benchmark's clients during the level (None where not measurable: an in-process or a --url server;
    clients sharing the server's process), also per output token."""
    ok = [r for r in records if r["ok"]]
    tokens = sum(r["completion_tokens"] for r in ok)
    errors = sorted({f"{r['status']}: {r['error']}" for r in records if not r["ok"]})
    cpu = dict(cpu or {})
    for who in ("server", "client"):
        s = cpu.get(f"{who}_s")
        cpu[f"{who}_ms_per_token"] = round(1e3 * s / tokens, 4) if s is not None and tokens else None
    return {"concurrency": concurrency, "planned": planned, "completed": len(ok),
            "failed": len(records) - len(ok), "not_started": planned - len(records), "errors": errors[:5],
            "wall_s": round(wall, 6), "output_tokens": tokens,
            "prompt_tokens": sum(r["prompt_tokens"] for r in ok),
            "throughput_tok_s": round(tokens / wall, 3) if wall > 0 else None,
            "requests_per_s": round(len(ok) / wall, 4) if wall > 0 else None,
            "ttft_s": dist([r["ttft_s"] for r in ok]), "tpot_s": dist([r["tpot_s"] for r in ok]),
            "itl_s": dist([x for r in ok for x in r["itl_s"]]), "e2e_s": dist([r["e2e_s"] for r in ok]),
            "load": load, "cpu": cpu, "requests": [{k: v for k, v in r.items() if k != "itl_s"} for r in records]}


def dist(xs: list[float | None]) -> dict | None:
    """mean / p50 / p90 / p99 of the values that exist (None when there are none)."""
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    cuts = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) > 1 else [xs[0]] * 99
    return {"n": len(xs), "mean": round(statistics.fmean(xs), 6), "p50": round(cuts[49], 6),
            "p90": round(cuts[89], 6), "p99": round(cuts[98], 6)}


# ---- machine load without the server counted as a neighbour ----

def _proc_cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system, children included) of process `pid`, from /proc; None if unknown."""
    if pid is None or pid == os.getpid():
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def _own_cpu_s() -> float:
    """CPU seconds (user + system) of this process: the benchmark's clients while a level runs."""
    t = os.times()
    return t.user + t.system


def _others_share(a, b, server_a: float | None, server_b: float | None) -> float | None:
    from ..bench import machine

    share = machine.others_share(a, b)
    if share is None or server_a is None or server_b is None:
        return share
    capacity = (b.total - a.total) / os.sysconf("SC_CLK_TCK")
    return max(0.0, share - (server_b - server_a) / capacity)


# ---- servers ----

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_subprocess(args, out: Path) -> Target:
    """`decodelab serve` in a child process on a free loopback port; waits for /health."""
    port = free_port()
    cmd = [sys.executable, "-m", "decodelab.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--max-batch", str(args.max_batch), "--max-queue", str(args.max_queue),
           "--stream-interval", str(args.stream_interval), "--loop", args.loop, "--http", args.http] + \
        (["--no-mix"] if args.no_mix else [])
    for flag in ("model", "draft", "backend", "dtype", "device", "api_key"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    log = open(out / "server.log", "w")  # noqa: SIM115 - closed by stop()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

    target = Target("127.0.0.1", port, proc.pid, stop, args.api_key, cmd)
    _wait_ready(target, args.startup_timeout, proc, out / "server.log")
    return target


def start_inprocess(args, lm) -> Target:
    """The FastAPI app on uvicorn in a thread of this process (the clients share its CPU)."""
    import uvicorn

    from .app import create_app

    app = create_app(lm, draft=args.draft, api_key=args.api_key, max_batch=args.max_batch, max_queue=args.max_queue,
                     stream_interval=args.stream_interval, mix_methods=not args.no_mix)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", loop=args.loop, http=args.http))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()

    target = Target("127.0.0.1", sock.getsockname()[1], None, stop, args.api_key)
    _wait_ready(target, args.startup_timeout, None, None)
    return target


def _wait_ready(target: Target, timeout: float, proc, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            target.stop()
            tail = log.read_text().strip().splitlines()[-1:] if log else []
            raise UserError(f"the server exited with status {proc.returncode}: {' '.join(tail) or 'no output'}")
        if _health(target) == 200:
            return
        time.sleep(0.2)
    target.stop()
    raise UserError(f"the server was not healthy within {timeout:g} s (--startup-timeout)")


def _health(target: Target) -> int | None:
    conn = http.client.HTTPConnection(target.host, target.port, timeout=5)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _loopback(url: str):
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK or parts.port is None:
        raise UserError(f"--url must be http://127.0.0.1:PORT (loopback only), got {url!r}")
    return parts


def url_target(url: str, api_key: str | None, server_pid: int | None = None) -> Target:
    """A running loopback server; `server_pid` (its process) keeps its CPU time out of the load record."""
    parts = _loopback(url)
    target = Target(parts.hostname, parts.port, server_pid, None, api_key)
    if _health(target) != 200:
        raise UserError(f"no healthy decodelab server at {url} (GET /health)")
    return target


# ---- in-process baseline ----

def baseline(lm, args, prompts: list[str], n: int, responses: list[dict]) -> dict:
    """The same first `n` requests through `decodelab.generate`, one after the other (after one warm-up
    call, as the server had its warm-up request); the HTTP overhead per token is c = 1's end-to-end time
    per token over this one, minus 1."""
    from .. import generate

    for method in args.methods:  # warm-up, as the server had its warm-up request
        generate(lm, prompts[0], method=method, max_new_tokens=args.max_tokens, seed=args.seed,
                 temperature=args.temperature, constraint=constraint_of(args, 0), **params_for(args, method))
    t0, cpu0, tokens, same = clock(), _own_cpu_s(), 0, 0
    texts = {r["index"]: r["text"] for r in responses if r["ok"]}
    for i in range(n):
        method = request_method(args, i)
        g = generate(lm, prompts[i % len(prompts)], method=method, max_new_tokens=args.max_tokens,
                     seed=args.seed + i, temperature=args.temperature, constraint=constraint_of(args, i),
                     **params_for(args, method))
        tokens += len(g.token_ids)
        same += texts.get(i) == g.text
    wall, cpu = clock() - t0, _own_cpu_s() - cpu0
    http_ok = [r for r in responses if r["ok"]]
    http_s_per_token = sum(r["e2e_s"] for r in http_ok) / max(1, sum(r["completion_tokens"] for r in http_ok))
    inproc = wall / tokens if tokens else None
    return {"requests": n, "output_tokens": tokens, "wall_s": round(wall, 4),
            "s_per_token": round(inproc, 6) if inproc else None,
            "http_s_per_token_c1": round(http_s_per_token, 6),
            "http_overhead": round(http_s_per_token / inproc - 1, 4) if inproc else None,
            "cpu_ms_per_token": round(1e3 * cpu / tokens, 4) if tokens else None,  # all of this process's threads
            "same_text": f"{same}/{n}"}


def paired(target: Target, lm, args, prompts: list[str]) -> dict:
    """`--paired`: `--requests` requests at c = 1 again, each sent to the server and run in-process
    (`decodelab.generate`, same parameters) next to it, so both sides see the same machine: slow drift
    between a whole HTTP phase and a whole in-process phase cannot bias the ratio. The pair's order
    alternates (even requests over HTTP first, odd ones in-process first), so whatever the first run of a
    pair leaves behind — caches, a CPU still spinning up or winding down on a VM — falls on both sides
    alike. The overhead is the HTTP end-to-end time over the in-process time (sums), the median of the
    per-request ratios, and their middle half (quartiles: how far single requests spread on this machine)."""
    from .. import generate

    http_s, local_s, tokens, same, ratios, order = 0.0, 0.0, 0, 0, [], []

    def over_http(i: int) -> dict:
        rec = send(target, request_body(args, i, prompts), args.time_limit + args.request_slack)
        if not rec["ok"]:
            raise UserError(f"paired request {i} failed: {rec['status']} {rec['error']}")
        order.append("http")
        return rec

    def in_process(i: int):
        method = request_method(args, i)
        t0 = clock()
        g = generate(lm, prompts[i % len(prompts)], method=method, max_new_tokens=args.max_tokens, seed=args.seed + i,
                     temperature=args.temperature, constraint=constraint_of(args, i), **params_for(args, method))
        order.append("in-process")
        return g, clock() - t0

    for i in range(args.requests):
        if i % 2 == 0:
            rec = over_http(i)
            g, local = in_process(i)
        else:
            g, local = in_process(i)
            rec = over_http(i)
        http_s, local_s, tokens = http_s + rec["e2e_s"], local_s + local, tokens + len(g.token_ids)
        same += rec["text"] == g.text
        ratios.append(rec["e2e_s"] / local)
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"requests": args.requests, "output_tokens": tokens, "http_s_per_token": round(http_s / tokens, 6),
            "inprocess_s_per_token": round(local_s / tokens, 6), "http_overhead": round(http_s / local_s - 1, 4),
            "http_overhead_median": round(statistics.median(ratios) - 1, 4),
            "http_overhead_quartiles": [round(quartiles[0] - 1, 4), round(quartiles[2] - 1, 4)],
            "order": order, "same_text": f"{same}/{args.requests}"}


# ---- command line ----

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m decodelab.serve.bench", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model for the server (default builtin:pyco)")
    p.add_argument("--draft", default=None)
    p.add_argument("--backend", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--method", default="greedy", help="a method, or several (a,b,c) cycled over the requests")
    p.add_argument("-p", "--param", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                   help="method_params entry (METHOD. scopes it to that method's requests)")
    p.add_argument("--no-mix", action="store_true",
                   help="the server's --no-mix: requests of different methods never share a step")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated concurrency levels")
    p.add_argument("--requests", type=int, default=8, help="requests per client at each level")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds per level after which no request starts")
    p.add_argument("--request-slack", type=float, default=30.0, help="seconds a request may run past the time limit")
    p.add_argument("--suite", default="code", help="bench suite whose prompts are sent (cycled)")
    p.add_argument("--prompt-chars", type=int, default=800,
                   help="keep each prompt's last N characters (prompt + max tokens must fit the context)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--server", choices=("subprocess", "inprocess"), default="subprocess")
    p.add_argument("--url", default=None, help="benchmark a running server at http://127.0.0.1:PORT instead")
    p.add_argument("--server-pid", type=int, default=None,
                   help="with --url: the server's process id, so its CPU time does not count as the machine's load")
    p.add_argument("--api-key", default=None)
    p.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch (1 = one request at a time)")
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--stream-interval", type=int, default=1, help="the server's --stream-interval (tokens per chunk)")
    p.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                   help="the server's event loop (decodelab serve --loop; auto: uvloop when installed)")
    p.add_argument("--http", choices=("auto", "httptools", "h11"), default="auto",
                   help="the server's HTTP parser (decodelab serve --http; auto: httptools when installed)")
    p.add_argument("--no-stream", action="store_true", help="non-streamed requests (TTFT: the server's own figure)")
    p.add_argument("--baseline", action="store_true", help="also run the c=1 requests in-process (HTTP overhead)")
    p.add_argument("--paired", action="store_true",
                   help="also alternate --requests c = 1 requests over HTTP and in-process, one pair at a time "
                        "(the HTTP overhead without drift between two phases)")
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--out", default="serve-bench-out")
    p.add_argument("--json", action="store_true", help="end stdout with one JSON summary object")
    args = p.parse_args(argv)
    _check(args)
    return args


def _check(args) -> None:
    try:
        args.levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        raise UserError(f"--concurrency must be comma-separated integers, got {args.concurrency!r}") from None
    for name, value in (("--requests", args.requests), ("--max-tokens", args.max_tokens),
                        ("--prompt-chars", args.prompt_chars),
                        ("--max-batch", args.max_batch), ("--max-queue", args.max_queue),
                        ("--stream-interval", args.stream_interval)):
        if value < 1:
            raise UserError(f"{name} must be ≥ 1, got {value}")
    if not args.levels or min(args.levels) < 1 or args.time_limit <= 0:
        raise UserError("--concurrency levels must be ≥ 1 and --time-limit > 0")
    if args.url is not None:
        _loopback(args.url)
    from .cli import check_stack

    check_stack(args.loop, args.http)
    if args.temperature < 0:
        raise UserError(f"--temperature must be ≥ 0, got {args.temperature}")
    args.methods = [m.strip() for m in args.method.split(",") if m.strip()]
    if not args.methods:
        raise UserError("--method needs at least one method name")
    args.method_params = {}
    for pair in args.param:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"-p expects KEY=VALUE, got {pair!r}")
        method, _, key = key.rpartition(".")
        if method and method not in args.methods:
            raise UserError(f"-p {pair!r}: {method!r} is not one of --method {args.method}")
        args.method_params.setdefault(method, {})[key] = _typed(value)


def _typed(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


def run(args) -> dict:
    from ..bench.suites import load_suite

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suite = load_suite(args.suite).prompts
    prompts = [p.text[-args.prompt_chars:] for p in suite]
    args.constraints = [p.constraint for p in suite]  # the json suite's schemas go with their prompts
    lm = _load(args) if (args.server == "inprocess" and not args.url) or args.baseline or args.paired else None
    if args.url:
        target = url_target(args.url, args.api_key, args.server_pid)
    else:
        target = start_inprocess(args, lm) if args.server == "inprocess" else start_subprocess(args, out)
    try:
        warm = send(target, request_body(args, 0, prompts), args.startup_timeout)
        if not warm["ok"]:
            raise UserError(f"the warm-up request failed: {warm['status']} {warm['error']}")
        levels = [run_level(target, args, prompts, c) for c in args.levels]
        pairs = paired(target, lm, args, prompts) if args.paired else None
    finally:
        if target.stop:
            target.stop()
    results = {"schema": "decodelab.serve-bench/1", "machine": machine_info(args), "config": _config(args, target),
               "levels": levels}
    if pairs is not None:
        results["paired"] = pairs
    c1 = next((lv for lv in levels if lv["concurrency"] == 1), None)
    if args.baseline and c1 is not None:
        results["baseline"] = baseline(lm, args, prompts, len(c1["requests"]), c1["requests"])
    write(results, out)
    return results


def _load(args):
    from .. import load

    kwargs = {k: getattr(args, k) for k in ("backend", "dtype", "device") if getattr(args, k) is not None}
    return load(args.model, **kwargs)


def _config(args, target: Target) -> dict:
    keys = ("model", "draft", "backend", "dtype", "device", "method", "method_params", "temperature", "max_tokens",
            "levels", "requests", "time_limit", "suite", "prompt_chars", "seed", "server", "url", "max_batch", "max_queue", "no_stream",
            "stream_interval", "no_mix", "loop", "http", "paired")
    return {"command": "python -m decodelab.serve.bench " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("bench.py")
            else "decodelab.serve.bench (API)", "server_command": target.log or None,
            **{k: getattr(args, k) for k in keys}, "stream": not args.no_stream}


def machine_info(args) -> dict:
    import torch

    from .. import __version__

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "decodelab": __version__, "device": args.device or "cpu"}
    if (args.device or "").startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write(results: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "report.md").write_text(markdown(results) + "\n")


def _cell(d: dict | None) -> str:
    """mean / p50 / p99 in ms."""
    return "—" if d is None else " / ".join(f"{1e3 * d[k]:.1f}" for k in ("mean", "p50", "p99"))


def markdown(results: dict) -> str:
    c, m = results["config"], results["machine"]
    gpu = f", {m['gpu']}" if "gpu" in m else ""
    lines = [f"# decodelab serve benchmark — {c['model'] or 'builtin:pyco'}, method {c['method']}", "",
             f"Machine: {m['processor']}, {m['cpu_count']} cores, {m['device']}{gpu}; torch {m['torch']}, "
             f"decodelab {m['decodelab']}.", f"Command: `{c['command']}`", "",
             f"Each level: C clients × {c['requests']} {'streamed ' if c['stream'] else ''}requests of {c['max_tokens']} "
             f"tokens at most (temperature {c['temperature']}), server --max-batch {c['max_batch']}. Throughput = "
             "output tokens ÷ the level's wall time. Latencies in ms: mean / p50 / p99.", "",
             "| C | done | failed | tok/s | × C=1 | req/s | TTFT | TPOT | ITL | end-to-end | machine |",
             "|---:|---:|---:|---:|---:|---:|---|---|---|---|---|"]
    one = next((lv["throughput_tok_s"] for lv in results["levels"] if lv["concurrency"] == 1), None)
    for lv in results["levels"]:
        busy = "busy" if lv["load"] and lv["load"]["busy"] else "idle"
        ratio = f"{lv['throughput_tok_s'] / one:.2f}×" if one else "—"
        lines.append(f"| {lv['concurrency']} | {lv['completed']}/{lv['planned']} | {lv['failed']} | "
                     f"{lv['throughput_tok_s']:.1f} | {ratio} | {lv['requests_per_s']:.2f} | {_cell(lv['ttft_s'])} | "
                     f"{_cell(lv['tpot_s'])} | {_cell(lv['itl_s'])} | {_cell(lv['e2e_s'])} | {busy} |")
    if (b := results.get("baseline")) and b["s_per_token"]:
        lines += ["", f"In-process baseline (the c = 1 requests through `decodelab.generate`): "
                      f"{1e3 * b['s_per_token']:.2f} ms/token vs {1e3 * b['http_s_per_token_c1']:.2f} over HTTP "
                      f"(overhead {b['http_overhead']:+.1%}); same text {b['same_text']}."]
        c1 = next((lv["cpu"] for lv in results["levels"] if lv["concurrency"] == 1), None) or {}
        if c1.get("server_ms_per_token") is not None and b.get("cpu_ms_per_token"):
            client = c1.get("client_ms_per_token")
            lines += [f"CPU time per token at c = 1 (every thread, the model's included): server process "
                      f"{1e3 * c1['server_ms_per_token']:.0f} µs against {1e3 * b['cpu_ms_per_token']:.0f} µs "
                      f"in-process (the HTTP layer: {1e3 * (c1['server_ms_per_token'] - b['cpu_ms_per_token']):+.0f}"
                      f" µs); the benchmark's client "
                      f"{'—' if client is None else f'{1e3 * client:.0f} µs'}."]
    if p := results.get("paired"):
        spread = p.get("http_overhead_quartiles")
        lines += ["", f"Paired (each of {p['requests']} requests over HTTP and in-process next to it, the order "
                      f"alternating): {1e3 * p['inprocess_s_per_token']:.2f} ms/token in-process vs "
                      f"{1e3 * p['http_s_per_token']:.2f} over HTTP (overhead {p['http_overhead']:+.1%}, median per "
                      f"request {p['http_overhead_median']:+.1%}"
                      + (f", middle half of the requests {spread[0]:+.1%} to {spread[1]:+.1%}" if spread else "")
                      + f"); same text {p['same_text']}."]
    return "\n".join(lines)


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        results = run(args)
    except ValueError as exc:
        print(f"decodelab.serve.bench: {exc}", file=sys.stderr)
        return 2
    print(markdown(results))
    if args.json:
        print(json.dumps({"out": args.out, "levels": [{k: v for k, v in lv.items() if k != "requests"}
                                                       for lv in results["levels"]],
                          "baseline": results.get("baseline"), "paired": results.get("paired")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
