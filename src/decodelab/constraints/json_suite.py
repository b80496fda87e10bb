"""The `json` benchmark suite: Python-code prompts that continue with a JSON document, each with the
JSON schema that document must satisfy (`decodelab bench --suites json`, docs/BENCHMARKS.md).

The schemas have the shapes JSONSchemaBench ("JSONSchemaBench: A Rigorous Benchmark of Structured
Outputs for Language Models", arXiv:2501.10868) collects from real APIs and configuration files:
nested objects, enums, arrays with item bounds, string patterns, optional fields, `$ref`, `anyOf`,
arrays of objects and of arrays. Strings carry a `maxLength` and numbers a range: a small model
would otherwise write one string or fraction forever, and an output cut at `max_new_tokens` is
counted invalid. Each prompt ends inside a Python string that `json.loads` parses, where
builtin:pyco (a Python model) expects JSON text to start; `EXAMPLES[i]` is a document that
satisfies `CASES[i]`'s schema (the tests check both, so every schema is satisfiable).
"""

from __future__ import annotations

VERSION = 1
MAX_NEW_TOKENS = 160


def _obj(required: dict, optional: dict | None = None, **extra) -> dict:
    """An object schema with these required and optional properties and nothing else."""
    return {"type": "object", "properties": {**required, **(optional or {})}, "required": list(required),
            "additionalProperties": False, **extra}


def _str(n: int, **extra) -> dict:
    return {"type": "string", "maxLength": n, **extra}


def _int(lo: int, hi: int) -> dict:
    return {"type": "integer", "minimum": lo, "maximum": hi}


ADDRESS = _obj({"street": _str(20), "city": _str(16)}, {"zip": _str(5, pattern="^[0-9]{5}$")})

# (id, prompt, schema, example)
CASES: list[tuple[str, str, dict, object]] = [
    ("json/user", 'def test_create_user(client):\n    user = json.loads(\'',
     _obj({"name": _str(16), "age": _int(0, 120), "active": {"type": "boolean"}},
          {"email": _str(32, pattern="^[a-z0-9._]+@[a-z0-9.]+$")}),
     {"name": "Ada", "age": 36, "active": True, "email": "ada@example.org"}),
    ("json/config", "# default settings for the worker\nCONFIG = json.loads('",
     _obj({"debug": {"type": "boolean"}, "level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
           "retries": _int(0, 10), "hosts": {"type": "array", "items": _str(20), "minItems": 1, "maxItems": 3}}),
     {"debug": False, "level": "INFO", "retries": 3, "hosts": ["localhost"]}),
    ("json/points", "def parse_polygon(text):\n    \"\"\"Vertices as a list of points.\"\"\"\n"
                    "    points = json.loads('",
     {"type": "array", "items": _obj({"x": _int(-100, 100), "y": _int(-100, 100)}), "minItems": 1, "maxItems": 4},
     [{"x": 0, "y": 0}, {"x": 3, "y": 4}]),
    ("json/service", "class ServiceConfig:\n    defaults = json.loads('",
     _obj({"server": _obj({"host": _str(20), "port": _int(1, 65535)}),
           "database": _obj({"name": _str(16), "pool_size": _int(1, 64)}, {"timeout": _int(1, 300)})}),
     {"server": {"host": "0.0.0.0", "port": 8080}, "database": {"name": "main", "pool_size": 8}}),
    ("json/response", "def test_not_found(self):\n    expected = json.loads('",
     _obj({"status": {"enum": [200, 201, 400, 404, 500]},
           "headers": _obj({"content-type": {"enum": ["application/json", "text/plain", "text/html"]}}),
           "body": _obj({"ok": {"type": "boolean"}, "message": _str(24)})}),
     {"status": 404, "headers": {"content-type": "application/json"}, "body": {"ok": False, "message": "not found"}}),
    ("json/package", "def load_metadata():\n    # package metadata, as in setup.py\n    meta = json.loads('",
     _obj({"name": _str(16, pattern="^[a-z][a-z0-9_]*$"),
           "version": _str(12, pattern="^[0-9]{1,3}[.][0-9]{1,3}[.][0-9]{1,3}$"),
           "license": {"enum": ["MIT", "BSD", "Apache-2.0", "GPL-3.0"]},
           "dependencies": {"type": "array", "items": _str(16), "maxItems": 3}}),
     {"name": "requests", "version": "2.31.0", "license": "Apache-2.0", "dependencies": ["urllib3"]}),
    ("json/event", "def track(event):\n    \"\"\"Send one analytics event.\"\"\"\n    payload = json.loads('",
     _obj({"event": {"enum": ["click", "view", "purchase", "signup"]}, "user_id": _int(1, 10**6),
           "timestamp": _int(0, 2**31 - 1)},
          {"properties": _obj({}, {"page": _str(24), "amount": _int(0, 10**4)})}),
     {"event": "purchase", "user_id": 42, "timestamp": 1700000000, "properties": {"amount": 12}}),
    ("json/matrix", "def test_identity():\n    m = json.loads('",
     _obj({"rows": _int(1, 4), "cols": _int(1, 4),
           "data": {"type": "array", "maxItems": 4,
                    "items": {"type": "array", "items": _int(-9, 9), "minItems": 1, "maxItems": 4}}}),
     {"rows": 2, "cols": 2, "data": [[1, 0], [0, 1]]}),
    ("json/result", "def handle(reply):\n    # either a value or an error\n    result = json.loads('",
     {"anyOf": [_obj({"ok": {"const": True}, "value": _int(-1000, 1000)}),
                _obj({"ok": {"const": False}, "error": _str(24)})]},
     {"ok": False, "error": "timeout"}),
    ("json/contacts", "def test_addresses(self):\n    person = json.loads('",
     {"$defs": {"address": ADDRESS}, **_obj({"name": _str(16), "home": {"$ref": "#/$defs/address"}},
                                             {"work": {"$ref": "#/$defs/address"}})},
     {"name": "Bob", "home": {"street": "1 Main St", "city": "Springfield", "zip": "12345"}}),
    ("json/todos", "def seed_tasks(db):\n    tasks = json.loads('",
     {"type": "array", "minItems": 1, "maxItems": 3,
      "items": _obj({"id": _int(1, 999), "title": _str(24), "done": {"type": "boolean"},
                     "priority": {"enum": ["low", "medium", "high"]}})},
     [{"id": 1, "title": "write tests", "done": False, "priority": "high"}]),
    ("json/tool_call", "def dispatch(message):\n    \"\"\"Run the tool the assistant asked for.\"\"\"\n"
                       "    call = json.loads('",
     _obj({"name": {"enum": ["get_weather", "search", "add"]},
           "arguments": _obj({}, {"city": _str(16), "query": _str(24), "a": _int(-999, 999), "b": _int(-999, 999)})}),
     {"name": "add", "arguments": {"a": 2, "b": 3}}),
]
EXAMPLES = [c[3] for c in CASES]


def prompts(constrained: bool = True):
    """The suite's prompts (bench/suites.py `Prompt`s), each carrying its `{"json_schema": …}` constraint
    and MAX_NEW_TOKENS (with `constrained=False`: the `json-unconstrained` suite, the same prompts without
    constraint or length, so `--max-new-tokens` sets it — unconstrained, nothing stops at the JSON's end)."""
    from ..bench.suites import Prompt

    if not constrained:
        return [Prompt(pid, text) for pid, text, _, _ in CASES]
    return [Prompt(pid, text, MAX_NEW_TOKENS, {"json_schema": schema}) for pid, text, schema, _ in CASES]
