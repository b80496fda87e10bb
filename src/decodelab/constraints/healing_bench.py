"""How much token healing changes quality for prompts that end in whitespace (issue 13's measurement).

`python -m decodelab.constraints.healing_bench --out docs/constraints`: the `code` suite's 12 held-out
function headers, each ended two ways a user might type them — with a newline, and with a newline plus the
body's indentation — completed by greedy with and without `token_healing=True`. A prompt that ends inside
what the tokenizer would merge (`\\n` + spaces is one token in pyco's vocabulary) leaves the model at a
boundary it rarely saw in training; healing backs the prompt up by its last token and lets the first
generated token re-cover it. Scored as in docs/SEARCH.md: the completed function parses (`ast`), and
token edit similarity of its body to the held-out body (decodelab.search.compare). Counts, not timings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ENDINGS = {"newline": "\n", "newline+indent": "\n    "}


def run(model: str | None = None, max_new_tokens: int = 64, limit: int | None = None) -> list[dict]:
    from .. import generate, load
    from ..bench.suites import load_suite
    from ..search.compare import body_similarity, syntax_valid

    lm = load(model)
    prompts = [p.text for p in load_suite("code").prompts][:limit]
    rows = []
    for ending, tail in ENDINGS.items():
        for healing in (False, True):
            valid = sim = changed = 0.0
            for prompt in prompts:
                text = prompt + tail
                g = generate(lm, text, max_new_tokens=max_new_tokens, token_healing=healing)
                plain = g if not healing else generate(lm, text, max_new_tokens=max_new_tokens)
                valid += syntax_valid(text, g.text)
                sim += body_similarity(lm, text, g.text)
                changed += g.text != plain.text
            n = len(prompts)
            rows.append({"ending": ending, "token_healing": healing, "prompts": n, "syntax_valid": valid / n,
                         "edit_similarity": round(sim / n, 4), "changed_vs_plain": changed / n})
    return rows


def markdown(rows: list[dict], command: str) -> str:
    lines = [f"Command: `{command}`", "", "| prompt ends with | token healing | parses | body edit similarity | "
             "output differs from plain greedy |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['ending']} | {'on' if r['token_healing'] else 'off'} | "
                     f"{r['syntax_valid'] * r['prompts']:.0f}/{r['prompts']} | {r['edit_similarity']:.3f} | "
                     f"{r['changed_vs_plain'] * r['prompts']:.0f}/{r['prompts']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m decodelab.constraints.healing_bench", description=__doc__)
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None, help="prompts of the code suite (default all 12)")
    ap.add_argument("--out", default=None, help="directory for healing.json and healing.md")
    args = ap.parse_args(argv)
    rows = run(args.model, args.max_new_tokens, args.limit)
    import sys

    command = "python -m decodelab.constraints.healing_bench " + " ".join(sys.argv[1:] if argv is None else argv)
    print(markdown(rows, command.strip()))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "healing.json").write_text(json.dumps({"command": command.strip(), "rows": rows}, indent=1))
        (out / "healing.md").write_text(markdown(rows, command.strip()))
    return rows


if __name__ == "__main__":  # pragma: no cover
    main()
