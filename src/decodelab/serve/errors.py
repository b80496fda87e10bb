"""Errors in OpenAI's error-object shape: `{"error": {"message", "type", "param", "code"}}`.

Every message is one line; no stack trace ever reaches a client (500 says only "internal error").
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, one_line(message), param


def one_line(message: str) -> str:
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    return " ".join(lines)[:1000] or "error"


def error_body(status: int, message: str, param: str | None = None) -> dict:
    return {"error": {"message": one_line(message), "type": _TYPES.get(status, "server_error"),
                      "param": param, "code": status}}


def error_response(status: int, message: str, param: str | None = None, headers=None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _path(loc) -> list[str]:
    """A pydantic error location without `body` and without union-member tags like `list[int]`."""
    return [str(p) for p in loc if p != "body" and not (isinstance(p, str) and (
        p in _TYPE_TAGS or any(c in p for c in "[-(")))]


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One line and the offending field for pydantic's first error.

    A union field (`prompt`, `stop`, …) fails once per member: the deepest failures are the most
    specific (`stop.0: String should have at least 1 character`), and ties are joined."""
    if not errors:
        return "invalid request", None
    first = errors[0]
    field = ".".join(_path(first.get("loc", ()))) or None
    if first.get("type") == "extra_forbidden":
        return f"unknown field {field!r}: this server does not accept it (see /openapi.json)", field
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if first.get("type") == "missing":
        return f"missing required field {field!r}", field
    top = _path(first.get("loc", ()))[:1]
    same = [(_path(e.get("loc", ())), e.get("msg", "invalid value")) for e in errors]
    same = [(p, m) for p, m in same if p[:1] == top]
    depth = max(len(p) for p, _ in same)
    deepest = [(p, m) for p, m in same if len(p) == depth]
    field = ".".join(deepest[0][0]) or None
    msgs = list(dict.fromkeys(m for _, m in deepest))
    lead = "Input should be "
    if len(msgs) > 1 and all(m.startswith(lead) for m in msgs):
        msgs = [lead + " or ".join(m[len(lead):] for m in msgs)]
    where = f"{field}: " if field else ""
    return where + " or ".join(msgs), field
