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


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One line and the offending field for pydantic's first error."""
    if not errors:
        return "invalid request", None
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    field = ".".join(loc) or None
    if err.get("type") == "extra_forbidden":
        return f"unknown field {field!r}: this server does not accept it (see /openapi.json)", field
    if err.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if err.get("type") == "missing":
        return f"missing required field {field!r}", field
    where = f"{field}: " if field else ""
    return f"{where}{err.get('msg', 'invalid value')}", field
