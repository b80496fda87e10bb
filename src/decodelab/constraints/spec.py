"""Constraint specifications → validated llguidance grammars, and the per-model tokenizer conversion.

A constraint is one of `{"json_schema": dict}`, `{"regex": str}`, `{"lark": str}` or
`{"choice": [str, ...]}` (docs/CONSTRAINTS.md). Every one is compiled and validated against the model's
tokenizer before generation starts, so a bad schema / regex / grammar is a one-line `ValueError`
carrying llguidance's own message, and an unknown key is an error, never ignored.

The grammar engine is llguidance (guidance-ai/llguidance: an Earley parser over a derivative-based
regex lexer); see "JSONSchemaBench: A Rigorous Benchmark of Structured Outputs for Language Models"
(arXiv:2501.10868) for how it compares with xgrammar, outlines and llama.cpp grammars.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import UserError

KINDS = ("json_schema", "regex", "lark", "choice")
# JSON layout: Python's json.dumps separators and no free whitespace, so a model cannot pad the output
# with blanks forever; a schema's own "x-guidance" options override these.
JSON_DEFAULTS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class Grammar:
    """A validated llguidance grammar for one model's tokenizer."""

    kind: str
    source: object  # what the user gave (schema dict, regex, Lark text or the list of choices)
    text: str  # the llguidance grammar definition
    tokenizer: object  # llguidance.LLTokenizer


def llg_tokenizer(lm):
    """The model's tokenizer converted for llguidance, made once per loaded model (~0.1–1 s)."""
    if "llguidance_tokenizer" not in lm.state:
        import llguidance.hf

        try:
            tok = llguidance.hf.from_tokenizer(lm.tokenizer, n_vocab=lm.vocab_size,
                                               eos_token=sorted(lm.eos_token_ids) or None)
        except Exception as exc:  # noqa: BLE001 - slow tokenizers, exotic vocabularies
            raise UserError(f"constraints need a tokenizer llguidance can convert (a fast byte-level BPE or "
                            f"SentencePiece one); {lm.name}'s: {_one_line(str(exc))}") from None
        lm.state["llguidance_tokenizer"] = tok
    return lm.state["llguidance_tokenizer"]


def _one_line(message: str) -> str:
    """llguidance's multi-line message (source excerpt, caret lines) as one line."""
    keep = []
    for line in message.splitlines():
        s = line.strip()
        if not s or set(s) <= set("^~ ") or s.split("|")[0].strip().isdigit():
            continue
        keep.append(s)
    return " ".join(keep)[:400] or "invalid grammar"


def _grammar_text(kind: str, value) -> str:
    from llguidance import LLMatcher, grammar_from

    if kind == "json_schema":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise UserError(f"constraint json_schema: not valid JSON ({exc})") from None
        if not isinstance(value, (dict, bool)):
            raise UserError("constraint json_schema must be a JSON schema object (a dict)")
        try:
            return LLMatcher.grammar_from_json_schema(value, defaults=JSON_DEFAULTS)
        except Exception as exc:  # noqa: BLE001 - llguidance raises ValueError or its own types
            raise UserError(f"invalid json_schema: {_one_line(str(exc))}") from None
    if kind == "choice":
        if (not isinstance(value, (list, tuple)) or not value
                or any(not isinstance(c, str) or not c for c in value)):
            raise UserError("constraint choice must be a non-empty list of non-empty strings")
        return grammar_from("choice", list(value))
    if not isinstance(value, str) or not value:
        raise UserError(f"constraint {kind} must be a non-empty string")
    return grammar_from(kind, value)


def compile_constraint(lm, spec) -> Grammar | None:
    """The validated grammar for `spec` (None → None). ValueError, one line, for anything invalid."""
    if spec is None:
        return None
    if isinstance(spec, Grammar):
        return spec
    if not isinstance(spec, dict) or len(spec) != 1:
        raise UserError(f"constraint must be a dict with exactly one of the keys {', '.join(KINDS)}; "
                         f"got {spec!r}"[:300])
    (kind, value), = spec.items()
    if kind not in KINDS:
        raise UserError(f"unknown constraint key {kind!r}; allowed: {', '.join(KINDS)}")
    from llguidance import LLMatcher

    text = _grammar_text(kind, value)
    tokenizer = llg_tokenizer(lm)
    error = LLMatcher.validate_grammar(text, tokenizer)
    if error and not error.startswith("WARNING"):
        raise UserError(f"invalid {kind} constraint: {_one_line(error)}")
    return Grammar(kind, value, text, tokenizer)
