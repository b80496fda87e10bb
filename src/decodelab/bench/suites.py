"""Benchmark suites: named, versioned prompt sets with a task type, or a user's JSONL file.

Built-in suites are drawn from the stdlib corpus *test* split (never trained on), deterministically:
- `code`  (v2): complete a function from its header and docstring;
- `edit`  (v2): a function, then the start of a near-copy of it (renamed) — copy-heavy, the
               analogue of Spec-Bench's RAG / summarisation tasks;
- `long`  (v2): continue a file from its first lines for many tokens;
- `quick` (v2): three short prompts of the above kinds, for smoke tests and CI;
- `json`  (v1): Python code continuing with a JSON document, each prompt with the JSON schema it must
               satisfy; every method runs under that constraint (constraints/json_suite.py);
  `json-unconstrained` (v1): the same prompts without the schemas, for the unconstrained speed-ups.
v2 prompts end at the last non-blank character, *without* the trailing newline (v1 kept it). The byte-level BPE merges a
newline with the next line's indentation (`"\n    "` is one token), so a prompt ending in a bare
`"\n"` is a token boundary the model never saw in training and sends it off course (the
prompt-boundary problem); ending before the newline lets the model emit newline + indentation itself.
A JSONL suite has one object per line: {"prompt": str, "id"?: str, "max_new_tokens"?: int,
"constraint"?: {"json_schema" | "regex" | "lark" | "choice": …}} (docs/CONSTRAINTS.md).
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..training.corpus import load_split

MAX_PROMPT_CHARS = 1200


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    max_new_tokens: int | None = None
    constraint: dict | None = None  # every method generates under it (docs/CONSTRAINTS.md)


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    task: str
    description: str
    prompts: tuple[Prompt, ...]


def _functions(limit_lines: int = 40):
    """(file, FunctionDef, lines) for test-split functions with a docstring, in corpus order."""
    for f in load_split("test"):
        try:
            tree = ast.parse(f.text)
        except SyntaxError:
            continue
        lines = f.text.splitlines(keepends=True)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and ast.get_docstring(node) and node.body[1:]:
                if 6 <= node.end_lineno - node.lineno <= limit_lines:
                    yield f.relpath, node, lines


def _code_prompts(n: int) -> list[Prompt]:
    out = []
    for rel, node, lines in _functions():
        doc_end = node.body[0].end_lineno
        text = "".join(lines[node.lineno - 1 - len(node.decorator_list): doc_end]).rstrip()
        if len(text) <= MAX_PROMPT_CHARS:
            out.append(Prompt(f"code/{rel}:{node.name}", text))
        if len(out) == n:
            break
    return out


def _edit_prompts(n: int) -> list[Prompt]:
    out = []
    for rel, node, lines in _functions(limit_lines=25):
        src = "".join(lines[node.lineno - 1: node.end_lineno])
        if len(src) > MAX_PROMPT_CHARS // 2 or f"def {node.name}(" not in src:
            continue
        copy = src.replace(f"def {node.name}(", f"def {node.name}_v2(", 1)
        head = "".join(copy.splitlines(keepends=True)[:2]).rstrip()
        out.append(Prompt(f"edit/{rel}:{node.name}", f"{src}\n\n{head}"))
        if len(out) == n:
            break
    return out


def _long_prompts(n: int) -> list[Prompt]:
    out = []
    for f in load_split("test"):
        if len(f.text) > 3000:
            out.append(Prompt(f"long/{f.relpath}", f.text[:600].rsplit("\n", 1)[0].rstrip(), 256))
        if len(out) == n:
            break
    return out


BUILTIN = {
    "code": (2, "code", "complete a function from its header and docstring", lambda: _code_prompts(12)),
    "edit": (2, "copy-heavy", "a function, then the start of a renamed near-copy", lambda: _edit_prompts(12)),
    "long": (2, "long", "continue a file for 256 tokens", lambda: _long_prompts(6)),
    "quick": (2, "smoke", "three short prompts (code, edit, long) for CI",
              lambda: (_code_prompts(1) + _edit_prompts(1) + _long_prompts(1))),
    "json": (1, "json", "Python code continuing with JSON, under each prompt's JSON schema", lambda: _json_prompts()),
    "json-unconstrained": (1, "json", "the json suite's prompts without their schemas (the speed-ups to compare with)",
                           lambda: _json_prompts(constrained=False)),
}


def _json_prompts(constrained: bool = True) -> list[Prompt]:
    from ..constraints.json_suite import prompts

    return prompts(constrained)


def list_suites() -> dict[str, str]:
    image = {"digits": "v1 [image] every image method on builtin:digits / --model builtin:digits16 "
                       "(decodelab.image.bench; --limit = images per class)"}
    return {**{name: f"v{v} [{task}] {desc}" for name, (v, task, desc, _) in BUILTIN.items()}, **image}


def load_suite(name: str) -> Suite:
    """A built-in suite by name, or a JSONL file of prompts."""
    if name in BUILTIN:
        version, task, desc, make = BUILTIN[name]
        return Suite(name, version, task, desc, tuple(make()))
    path = Path(name)
    if path.suffix == ".jsonl" or path.exists():
        return _load_jsonl(path)
    raise UserError(f"unknown suite {name!r}; built-in suites: {', '.join(BUILTIN)} (or a .jsonl file)")


def _load_jsonl(path: Path) -> Suite:
    if not path.is_file():
        raise UserError(f"suite file {str(path)!r} does not exist")
    prompts = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        prompts.append(_parse_line(path, lineno, line))
    if not prompts:
        raise UserError(f"{path}: no prompts")
    return Suite(path.stem, 1, "user", f"user prompts from {path}", tuple(prompts))


def _parse_line(path: Path, lineno: int, line: str) -> Prompt:
    where = f"{path}:{lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"]:
        raise UserError(f'{where}: expected an object with a non-empty string "prompt"')
    mnt = obj.get("max_new_tokens")
    if mnt is not None and (not isinstance(mnt, int) or isinstance(mnt, bool) or mnt < 1):
        raise UserError(f"{where}: max_new_tokens must be a positive integer")
    constraint = obj.get("constraint")
    if constraint is not None and not isinstance(constraint, dict):
        raise UserError(f'{where}: "constraint" must be an object such as {{"regex": "[0-9]+"}}')
    return Prompt(str(obj.get("id", f"{path.stem}/{lineno}")), obj["prompt"], mnt, constraint)
