"""Constraint flags of `decodelab generate`: --json-schema FILE, --regex R, --grammar FILE, --choice a,b,c."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def add_constraint_flags(parser) -> None:
    group = parser.add_argument_group("constraints (at most one; output is forced to match it)")
    group.add_argument("--json-schema", metavar="FILE", default=None, help="JSON schema file the output must satisfy")
    group.add_argument("--regex", metavar="R", default=None, help="regular expression the output must match")
    group.add_argument("--grammar", metavar="FILE", default=None, help="Lark grammar file (llguidance syntax)")
    group.add_argument("--choice", metavar="A,B,C", default=None, help="comma-separated strings: output one of them")
    parser.add_argument("--heal", action="store_true", help="token healing: back the prompt up by its last token "
                        "and let the first generated token re-cover it (any method, constrained or not)")


def constraint_params(args) -> dict:
    """The generate() keywords the flags ask for: `constraint` and `token_healing` when given."""
    out = {}
    constraint = constraint_from_args(args)
    if constraint is not None:
        out["constraint"] = constraint
    if getattr(args, "heal", False):
        out["token_healing"] = True
    return out


def _read(flag: str, path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise UserError(f"{flag}: cannot read {path!r} ({exc.strerror or exc})") from None


def constraint_from_args(args) -> dict | None:
    """The `constraint=` dict the flags describe (None without one); ValueError for two or a bad file."""
    given = {flag: value for flag, value in (("--json-schema", getattr(args, "json_schema", None)),
                                              ("--regex", getattr(args, "regex", None)),
                                              ("--grammar", getattr(args, "grammar", None)),
                                              ("--choice", getattr(args, "choice", None))) if value is not None}
    if len(given) > 1:
        raise UserError(f"give at most one constraint flag, got {', '.join(given)}")
    if not given:
        return None
    (flag, value), = given.items()
    if flag == "--json-schema":
        try:
            return {"json_schema": json.loads(_read(flag, value))}
        except json.JSONDecodeError as exc:
            raise UserError(f"--json-schema: {value!r} is not JSON ({exc})") from None
    if flag == "--grammar":
        return {"lark": _read(flag, value)}
    if flag == "--choice":
        return {"choice": [c for c in value.split(",")]}
    return {"regex": value}
