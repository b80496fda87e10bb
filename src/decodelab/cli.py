"""The `decodelab` command line: generate, methods, bench, train, corpus."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .constraints.cli import add_constraint_flags, constraint_params
from .errors import UserError


def _typed(value: str, default):
    """Convert a -p value to the type of the parameter's default."""
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        return value  # a non-bool choice (beam's early_stopping="never"): the method's Param names the allowed values
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
            raise UserError(f"parameter {pair!r} is not KEY=VALUE")
        key, value = pair.split("=", 1)
        key = key.strip()
        try:
            out[key] = _typed(value, defaults[key]) if key in defaults else _guess(value)
        except ValueError:
            raise UserError(f"parameter {key}: cannot read {value!r} as {type(defaults[key]).__name__}") from None
    return out


def _guess(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


SAMPLING_FLAGS = {"temperature": float, "top_p": float, "top_k": int, "min_p": float, "repetition_penalty": float}


def _load_options(args) -> dict:
    return {"allow_pickle": args.allow_pickle, "trust_remote_code": args.trust_remote_code}


def _flag_params(args, params: dict) -> None:
    """--temperature etc. into params; the same key given twice with different values is an error."""
    for key in SAMPLING_FLAGS:
        value = getattr(args, key, None)
        if value is None:
            continue
        if params.get(key, value) != value:
            raise UserError(f"--{key.replace('_', '-')} {value} and -p {key}={params[key]} disagree; give one")
        params[key] = value


def _generate_params(args, info) -> dict:
    """-p pairs and --draft → the method's checked parameters (before the slow model load)."""
    params = parse_params(args.param or [], info.params)
    _flag_params(args, params)
    if args.draft is not None:
        if "draft" not in info.specs:
            from . import methods

            users = sorted(n for n, m in methods().items() if "draft" in m.specs)
            raise UserError(f"--draft: method {info.name!r} uses no draft model; methods with a draft: "
                             f"{', '.join(users)}")
        if params.get("draft", args.draft) != args.draft:
            raise UserError(f"--draft {args.draft!r} and -p draft={params['draft']!r} disagree; give one")
        params["draft"] = args.draft
    info.check_params(params)  # user errors first, before the (slow, chatty) model load
    if args.max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be an integer ≥ 1, got {args.max_new_tokens}")
    return {**params, **constraint_params(args)}  # constraint= and token_healing= from their flags


def _baseline_params(args, params: dict):
    """The --compare method and the user's parameters it accepts (sampling ones, not the method's own)."""
    from . import methods

    if args.compare is None:
        return None, {}
    base = methods().get(args.compare)
    if base is None:
        raise UserError(f"--compare: unknown method {args.compare!r}; available: {', '.join(sorted(methods()))}")
    shared = {k: v for k, v in params.items()
              if (k in base.params and k not in base.specs) or k in ("constraint", "token_healing")}
    if base.name == "greedy":  # argmax: the sampled method is compared with greedy's text and speed
        shared.pop("temperature", None)
    return base, shared


def _read_prompt(args) -> str:
    if args.prompt != "-":
        if args.prompt is None:
            raise UserError("no prompt: give PROMPT or - to read stdin")
        return args.prompt
    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:  # a text stream (tests, embedding)
        return sys.stdin.read()
    data = raw.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"stdin is not UTF-8 text: byte {data[exc.start]:#04x} at offset {exc.start}") from None


def cmd_generate(args) -> None:
    from . import batch_cli, generate, methods

    info = methods().get(args.method)
    if info is None:
        raise UserError(f"unknown method {args.method!r}; available: {', '.join(sorted(methods()))}")
    batch_cli.check(args)
    params = _generate_params(args, info)
    if args.prompts_file is not None:
        batch_cli.run(_load_for(args, params), args, params)
        return
    base, base_params = _baseline_params(args, params)
    prompt = _read_prompt(args)
    if not prompt:
        raise UserError("prompt is empty: give at least one token")
    lm = _load_for(args, params)
    run = dict(max_new_tokens=args.max_new_tokens, seed=args.seed, stop=args.stop)
    if base is not None:  # warm both up (first-call costs) so the timed runs compare like with like
        generate(lm, prompt, method=args.method, **{**run, "max_new_tokens": min(8, args.max_new_tokens)}, **params)
        generate(lm, prompt, method=base.name, **{**run, "max_new_tokens": min(8, args.max_new_tokens)}, **base_params)
    gen = _stream_text(lm, prompt, args, run, params)
    ref = generate(lm, prompt, method=base.name, **run, **base_params) if base is not None else None
    if args.json:
        out = gen.to_dict()
        if ref is not None:
            out["compare"] = {**_comparison(gen, ref), "text": ref.text, "token_ids": ref.token_ids,
                              "stats": ref.stats.to_dict()}
        print(json.dumps(out))
        return
    print(f"\n[{gen.finish_reason}] {_stats_line(gen.stats)}", file=sys.stderr)
    if ref is not None:
        print(f"{ref.method}: {_stats_line(ref.stats)}", file=sys.stderr)
        print(_comparison_line(gen, ref, info), file=sys.stderr)


def _load_for(args, params: dict):
    """The model (and the draft the parameters name, checked against its vocabulary now)."""
    from . import load

    lm = load(args.model, device=args.device, dtype=args.dtype, backend=args.backend, **_load_options(args))
    if "draft" in params:  # load it now, with the user's load options, and check the vocabulary
        from .proposers.draft_model import resolve_draft

        resolve_draft(lm, params["draft"], **_load_options(args))
    return lm


def _stream_text(lm, prompt, args, run, params):
    from . import stream

    gen = None
    for event in stream(lm, prompt, method=args.method, **run, **params):
        if not args.json and event.text:
            sys.stdout.write(event.text)
            sys.stdout.flush()
        gen = event.generation or gen
    return gen


def _stats_line(s) -> str:
    line = (f"{s.new_tokens} tokens, {s.tokens_per_s:.1f} tok/s, τ={s.mean_accepted:.2f}, "
            f"{s.forward_passes} forward passes ({s.forward_passes_per_token:.2f} per token)")
    if s.draft_forward_passes:
        line += f", {s.draft_forward_passes} draft forward passes"
    if s.acceptance_rate is not None:
        line += f", acceptance rate {s.acceptance_rate:.0%} ({sum(s.accepted)}/{sum(s.drafted)} drafted tokens)"
    return line


def _comparison(gen, ref) -> dict:
    """Same tokens? first difference, and the speed-up measured in this run (tokens/s ratio)."""
    from .bench.runner import first_mismatch

    diff = first_mismatch(gen.token_ids, ref.token_ids)
    speed = gen.stats.tokens_per_s / ref.stats.tokens_per_s if ref.stats.tokens_per_s > 0 else None
    return {"method": ref.method, "identical": diff is None, "first_difference": diff,
            "speedup": None if speed is None else round(speed, 3)}


def _comparison_line(gen, ref, info) -> str:
    c = _comparison(gen, ref)
    if c["identical"]:
        same = f"same text as {ref.method} ({len(gen.token_ids)} tokens identical)"
    else:
        why = ("expected when sampling: a lossless method keeps the distribution, not the text"
               if gen.params.get("temperature", 0) > 0 else
               f"{info.name} is not lossless" if not info.lossless else "unexpected for a lossless method")
        same = f"text differs from {ref.method} at token {c['first_difference']} ({why})"
    speed = "speed-up not measurable" if c["speedup"] is None else f"{c['speedup']:.2f}× {ref.method}'s speed"
    return f"{info.name} vs {ref.method}: {same}; {speed}, measured in this run"


def cmd_demo(args) -> None:
    """generate --compare on a prompt from a benchmark suite (the corpus's test split, never trained on)."""
    from .bench.suites import load_suite

    suite = load_suite(args.suite)
    if not 0 <= args.index < len(suite.prompts):
        raise UserError(f"--index must be in [0, {len(suite.prompts)}) for suite {suite.name!r}")
    prompt = suite.prompts[args.index]
    if not args.json:
        print(f"# prompt {prompt.id} (suite {suite.name}: {suite.description})\n{prompt.text}", flush=True)
    args.prompt = prompt.text
    cmd_generate(args)


def cmd_methods(args) -> None:
    from . import methods

    table = methods()
    if args.json:
        print(json.dumps({n: {"description": m.description, "params": m.params, "lossless": m.lossless,
                                  "family": m.family,
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


def add_load_flags(p: argparse.ArgumentParser) -> None:
    """--allow-pickle / --trust-remote-code: the two ways loading a model can run someone else's code."""
    p.add_argument("--allow-pickle", action="store_true",
                   help="load pickle weights (*.bin / *.pt) when a model has no safetensors; RISK: unpickling "
                        "runs arbitrary code from the file — only for models you trust")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the Python code a model directory or Hub repo ships (auto_map); RISK: that code "
                        "runs with your permissions — only for models you trust")


def add_backend_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", choices=("auto", "native", "transformers", "llamacpp"),
                   help="native (decodelab's Llama-family forward), transformers, llamacpp (llama.cpp's forward, "
                        "needs the llamacpp extra), or auto (native where supported)")
    p.add_argument("--dtype", default=None, help="float32 (default on CPU), float16 or bfloat16")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): every user error is one line on stderr."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="decodelab", description=__doc__)
    p.add_argument("--version", action="version", version=f"decodelab {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text with any method")
    g.add_argument("prompt", nargs="?", help="prompt text, or - to read stdin")
    g.add_argument("--model", default=None, help="builtin:NAME, a local HF directory or a Hub id (default builtin:pyco)")
    g.add_argument("--method", default="greedy")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps … (default cpu)")
    g.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="method or sampling parameter")
    g.add_argument("--draft", default=None, metavar="MODEL",
                   help="draft model for speculative / tree: builtin:NAME, a local HF directory or a Hub id; "
                        "it must map the same strings to the same token ids as the target")
    g.add_argument("--compare", default=None, metavar="METHOD",
                   help="also run METHOD (e.g. greedy) on the same prompt and report whether the texts are "
                        "identical and the speed-up measured in this run")
    for key, kind in SAMPLING_FLAGS.items():
        g.add_argument(f"--{key.replace('_', '-')}", type=kind, default=None, metavar="X",
                       help=f"sampling parameter {key} (the same as -p {key}=X)")
    add_backend_flags(g)
    add_load_flags(g)
    add_constraint_flags(g)
    g.add_argument("--prompts-file", default=None, metavar="FILE",
                   help="generate for every prompt of a JSON-lines file (- for stdin): a JSON string, or "
                        '{"prompt": …, "constraint": …} per line; one JSON object per row on stdout')
    g.add_argument("--n", type=int, default=1, help="with --prompts-file: samples per prompt (row i: seed + i)")
    g.add_argument("--max-batch", type=int, default=None,
                   help="with --prompts-file: rows generated at once (default 8)")
    g.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser("demo", help="the fastest CPU method vs greedy on a held-out prompt: same text, speed-up")
    d.add_argument("--method", default="pld", help="method to show (default pld, the fastest on a CPU: "
                   "docs/BENCHMARKS.md)")
    d.add_argument("--compare", default="greedy", metavar="METHOD", help="baseline run in the same process")
    d.add_argument("--suite", default="code", help="benchmark suite the prompt comes from (default code)")
    d.add_argument("--index", type=int, default=0, help="which prompt of the suite (default 0)")
    d.add_argument("--model", default=None, help="default builtin:pyco")
    d.add_argument("--max-new-tokens", type=int, default=128)
    d.add_argument("--device", default="cpu")
    add_backend_flags(d)
    d.add_argument("--json", action="store_true", help="end stdout with one JSON object")
    d.set_defaults(func=cmd_demo, seed=None, stop=None, param=None, draft=None, allow_pickle=False,
                   trust_remote_code=False, prompts_file=None, n=1, max_batch=None)

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

    from .bench import decode_cost

    dc = sub.add_parser("decode-cost", help="ms per decode step on every backend side by side (native, transformers)")
    decode_cost.add_arguments(dc)
    dc.set_defaults(func=decode_cost.run)

    mc = sub.add_parser("model-card", help="validation CE, draft agreement and samples of the embedded models")
    mc.add_argument("--target", default="builtin:pyco")
    mc.add_argument("--draft", default="builtin:pyco-draft")
    mc.add_argument("--windows", type=int, default=32, help="512-token validation windows to score")
    mc.set_defaults(func=cmd_model_card)

    from .bench.cli import add_arguments

    add_arguments(sub.add_parser("bench", help="benchmark methods side by side"))
    from .serve.cli import add_parser as add_serve_parser

    add_serve_parser(sub)
    from .image.cli import add_parser as add_image_parser

    add_image_parser(sub)
    from .diffusion.bench import add_parser as add_diffusion_bench_parser

    add_diffusion_bench_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .errors import DecodelabError

    parser = build_parser()
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stderr carries only our own one-line messages
    hf_logging.set_verbosity_error()
    try:
        args.func(args)
    except (DecodelabError, OSError) as exc:  # the user's input (UserError, ModelError), a file: one line
        print(f"decodelab: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug, not a user error; still one line, and says so
        print(f"decodelab: internal error: {type(exc).__name__}: {_one_line(exc)} — please report it "
              "with the command line", file=sys.stderr)
        return 3
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
