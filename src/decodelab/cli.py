"""The `decodelab` command line: generate, methods, bench, train, corpus."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__


def _typed(value: str, default):
    """Convert a -p value to the type of the parameter's default."""
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"expected true/false, got {value!r}")
    if isinstance(default, int):
        try:
            return int(value)
        except ValueError:
            return float(value)
    if isinstance(default, float):
        return float(value)
    return value


def parse_params(pairs: list[str], defaults: dict) -> dict:
    """`key=value` strings → typed dict (types from the method's declared defaults)."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"parameter {pair!r} is not KEY=VALUE")
        key, value = pair.split("=", 1)
        key = key.strip()
        try:
            out[key] = _typed(value, defaults[key]) if key in defaults else _guess(value)
        except ValueError:
            raise ValueError(f"parameter {key}: cannot read {value!r} as {type(defaults[key]).__name__}") from None
    return out


def _guess(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def cmd_generate(args) -> None:
    from . import load, methods, stream

    info = methods().get(args.method)
    if info is None:
        raise ValueError(f"unknown method {args.method!r}; available: {', '.join(sorted(methods()))}")
    params = parse_params(args.param or [], info.params)
    info.check_params(params)  # user errors first, before the (slow, chatty) model load
    if args.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer ≥ 1, got {args.max_new_tokens}")
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if prompt is None:
        raise ValueError("no prompt: give PROMPT or - to read stdin")
    if not prompt:
        raise ValueError("prompt is empty: give at least one token")
    lm = load(args.model, device=args.device)
    gen = None
    for event in stream(lm, prompt, method=args.method, max_new_tokens=args.max_new_tokens, seed=args.seed,
                        stop=args.stop, **params):
        if not args.json and event.text:
            sys.stdout.write(event.text)
            sys.stdout.flush()
        gen = event.generation or gen
    if args.json:
        print(json.dumps(gen.to_dict()))
    else:
        s = gen.stats
        print(f"\n[{gen.finish_reason}] {s.new_tokens} tokens, {s.tokens_per_s:.1f} tok/s, "
              f"τ={s.mean_accepted:.2f}, {s.forward_passes} forward passes", file=sys.stderr)


def cmd_methods(args) -> None:
    from . import methods

    table = methods()
    if args.json:
        print(json.dumps({n: {"description": m.description, "params": m.params, "lossless": m.lossless,
                              "paper": m.paper, "batched": m.batched} for n, m in table.items()}))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table("method", "lossless", "parameters (defaults)", "paper", show_lines=True)
    for name, m in table.items():
        own = ", ".join(f"{k}={p.default}" for k, p in m.specs.items()) or "—"
        t.add_row(name, "yes" if m.lossless else "no", f"{own}\ntemperature={m.temperature}", m.paper or "—")
    Console().print(t)


def cmd_train(args) -> None:
    from .training.train import train

    out = train(args.config, Path(args.out), Path(args.tokenizer) if args.tokenizer else None, steps=args.steps)
    print(f"model written to {out}")
    if args.export:
        import shutil

        shutil.copytree(out, args.export, dirs_exist_ok=True)
        print(f"exported to {args.export}")


def cmd_corpus(args) -> None:
    from .training.corpus import describe, stdlib_root

    stats = describe()
    print(json.dumps({"root": str(stdlib_root()), "splits": stats}, indent=None if args.json else 2))


def cmd_model_card(args) -> None:
    from .training.evaluate import model_card

    print(json.dumps(model_card(args.target, args.draft, args.windows), indent=1))


def cmd_bench(args) -> None:
    from .bench.cli import run as bench_run

    bench_run(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="decodelab", description=__doc__)
    p.add_argument("--version", action="version", version=f"decodelab {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text with any method")
    g.add_argument("prompt", nargs="?", help="prompt text, or - to read stdin")
    g.add_argument("--model", default=None, help="builtin:NAME, a local HF directory or a Hub id (default builtin:pyco)")
    g.add_argument("--method", default="greedy")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.add_argument("--device", default="cpu")
    g.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="method or sampling parameter")
    g.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    g.set_defaults(func=cmd_generate)

    m = sub.add_parser("methods", help="list decoding methods")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_methods)

    t = sub.add_parser("train", help="train an embedded model on the stdlib corpus")
    t.add_argument("--config", required=True, help="builtin config name (pyco, pyco-draft, tiny) or a JSON path")
    t.add_argument("--out", required=True, help="run directory (resumes from its checkpoint)")
    t.add_argument("--tokenizer", default=None, help="tokenizer directory to share (trained there if missing)")
    t.add_argument("--steps", type=int, default=None, help="override the config's step count")
    t.add_argument("--export", default=None, help="copy the finished model directory here")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("corpus", help="file and character counts of the stdlib corpus splits")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_corpus)

    mc = sub.add_parser("model-card", help="validation CE, draft agreement and samples of the embedded models")
    mc.add_argument("--target", default="builtin:pyco")
    mc.add_argument("--draft", default="builtin:pyco-draft")
    mc.add_argument("--windows", type=int, default=32, help="512-token validation windows to score")
    mc.set_defaults(func=cmd_model_card)

    from .bench.cli import add_arguments

    add_arguments(sub.add_parser("bench", help="benchmark methods side by side"))
    return p


def main(argv: list[str] | None = None) -> int:
    from .errors import DecodelabError

    parser = build_parser()
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stderr carries only our own one-line messages
    try:
        args.func(args)
    except (DecodelabError, ValueError, FileNotFoundError) as exc:
        print(f"decodelab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
