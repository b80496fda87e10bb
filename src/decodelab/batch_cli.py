"""`decodelab generate --prompts-file FILE`: a dataset of prompts through `generate_batch`, JSON lines out.

FILE (or `-` for stdin) holds one prompt per line as JSON: a string, or an object with `"prompt"` and,
optionally, its own `"constraint"` (docs/CONSTRAINTS.md; it overrides the `--json-schema` / `--regex` …
flag for that line). Every row runs under the same method and parameters, at most `--max-batch` rows at
once (`generate_batch(max_batch=…)`: a finished row's place goes to the next prompt at once, on the
continuous Engine for the methods that take joining rows), `--n` samples per prompt, row i with seed
`--seed + i`. Results go to stdout as one JSON object per row, in input order (prompt-major), written as
each block of rows finishes, so a long file shows progress and a stopped run keeps what it wrote; a summary
goes to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .errors import UserError

BLOCK_BATCHES = 16  # rows per block written to stdout: this many × --max-batch


def read_prompts(path: str) -> list[tuple[str, dict | None]]:
    """(prompt, its own constraint or None) per non-empty line of a JSON-lines file (`-`: stdin)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--prompts-file: cannot read {path!r} ({getattr(exc, 'strerror', None) or exc})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"--prompts-file line {number}: not JSON ({exc.msg}); give a JSON string or "
                            '{"prompt": …, "constraint": …}') from None
        if isinstance(item, dict):
            unknown = sorted(set(item) - {"prompt", "constraint"})
            if unknown:
                raise UserError(f"--prompts-file line {number}: unknown key {unknown[0]!r}; keys: prompt, constraint")
            item, constraint = item.get("prompt"), item.get("constraint")
        else:
            constraint = None
        if not isinstance(item, str) or not item:
            raise UserError(f"--prompts-file line {number}: the prompt must be a non-empty string")
        rows.append((item, constraint))
    if not rows:
        raise UserError(f"--prompts-file {path!r} holds no prompt")
    return rows


def constraints_for(rows: list[tuple[str, dict | None]], default: dict | None) -> dict | list[dict] | None:
    """The `constraint=` of generate_batch: one for all rows, or one per prompt (a line's own wins)."""
    per_row = [own if own is not None else default for _, own in rows]
    if all(c is None for c in per_row):
        return None
    missing = next((i for i, c in enumerate(per_row) if c is None), None)
    if missing is not None:
        raise UserError(f"--prompts-file: prompt {missing + 1} has no constraint while others have one; give every "
                        "line its own or a default with --json-schema / --regex / --grammar / --choice")
    return per_row[0] if all(c == per_row[0] for c in per_row) else per_row


def run(lm, args, params: dict) -> None:
    """Generate for every prompt of `args.prompts_file`, writing JSON lines to stdout block by block."""
    from . import generate_batch

    rows = read_prompts(args.prompts_file)
    given = params.pop("constraint", None)
    constraint = constraints_for(rows, given)
    prompts = [p for p, _ in rows]
    block = BLOCK_BATCHES * args.max_batch
    t0, tokens = time.perf_counter(), 0
    for lo in range(0, len(prompts), block):
        part = prompts[lo : lo + block]
        kw = dict(params)
        if constraint is not None:
            kw["constraint"] = constraint[lo : lo + block] if isinstance(constraint, list) else constraint
        seed = None if args.seed is None else [args.seed + (lo + i) * args.n + j
                                               for i in range(len(part)) for j in range(args.n)]
        gens = generate_batch(lm, part, method=args.method, max_new_tokens=args.max_new_tokens, n=args.n,
                              seed=seed, stop=args.stop, max_batch=args.max_batch, **kw)
        for k, gen in enumerate(gens):
            i, j = divmod(k, args.n)
            print(json.dumps({"index": lo + i, "sample": j, **gen.to_dict()}))
            tokens += len(gen.token_ids)
        sys.stdout.flush()
    wall = time.perf_counter() - t0
    print(f"{len(prompts) * args.n} rows ({len(prompts)} prompts × n={args.n}), {tokens} tokens in {wall:.1f} s "
          f"({tokens / wall if wall > 0 else 0:.1f} tok/s), method {args.method}, at most {args.max_batch} rows at once",
          file=sys.stderr)


def check(args) -> None:
    """The flag combinations a prompts file cannot take (one line each, before the model loads)."""
    if args.prompts_file is None:
        for flag, value in (("--n", args.n != 1), ("--max-batch", args.max_batch is not None)):
            if value:
                raise UserError(f"{flag} needs --prompts-file (one prompt generates one row)")
        return
    if args.prompt is not None:
        raise UserError("give a PROMPT or --prompts-file, not both")
    if args.compare is not None:
        raise UserError("--compare runs one prompt; with --prompts-file use `decodelab bench` for comparisons")
    if args.n < 1:
        raise UserError(f"--n must be ≥ 1, got {args.n}")
    if args.max_batch is None:
        args.max_batch = 8
    if args.max_batch < 1:
        raise UserError(f"--max-batch must be ≥ 1, got {args.max_batch}")
