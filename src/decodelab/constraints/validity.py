"""Does a text satisfy a constraint? An independent check where one exists, llguidance's otherwise.

- JSON schema: the text must parse (`json.loads`) and validate against the schema with the
  `jsonschema` package when it is installed (the `test` extra; an implementation independent of the
  grammar that produced the text); without it, llguidance's own check below.
- regex: Python's `re.fullmatch` (llguidance's check if Python's `re` cannot compile the pattern).
- choice: membership.
- Lark, and the fallbacks: a fresh llguidance matcher of the grammar consumes the text's
  tokenization and must end in an accepting state.
"""

from __future__ import annotations

import json
import re


def json_validator() -> str:
    """Which validator JSON-schema checks use here: "jsonschema" or "llguidance"."""
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        return "llguidance"
    return "jsonschema"


def satisfied(constraint: dict, text: str, grammar=None) -> bool:
    """True when `text` satisfies `constraint`; `grammar` (a compiled `spec.Grammar`) is needed for
    the llguidance checks (Lark, and JSON without `jsonschema`)."""
    kind, value = next(iter(constraint.items()))
    if kind == "json_schema":
        return _json_ok(value, text, grammar)
    if kind == "choice":
        return text in value
    if kind == "regex":
        try:
            return re.fullmatch(value, text) is not None
        except re.error:
            pass
    return grammar_accepts(grammar, text)


def _json_ok(schema, text: str, grammar) -> bool:
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    if json_validator() == "llguidance":
        return grammar_accepts(grammar, text)
    import jsonschema

    schema = json.loads(schema) if isinstance(schema, str) else schema
    try:
        jsonschema.validate(doc, schema)
    except jsonschema.ValidationError:
        return False
    return True


def grammar_accepts(grammar, text: str) -> bool:
    """A fresh matcher consumes the tokenization of `text` and is then in an accepting state."""
    from llguidance import LLMatcher

    if grammar is None:
        raise ValueError("this check needs the compiled grammar (constraints.compile_constraint)")
    matcher = LLMatcher(grammar.tokenizer, grammar.text, log_level=0)
    tokens = grammar.tokenizer.tokenize_str(text)
    return matcher.try_consume_tokens(tokens) == len(tokens) and matcher.is_accepting()
