"""Property test against /openapi.json (as vLLM tests its server): no generated request gets a 5xx,
and every response matches the schema the server publishes. Bounded: a fixed number of examples per
operation, generated with a fixed seed (hypothesis derandomised) so a failure reproduces."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from decodelab.serve import create_app  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(served_lm):
    app = create_app(served_lm, max_tokens=4, max_queue=8)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors_and_responses_match_the_schema(api_schema, mode):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/completions", "POST /v1/chat/completions",
                                               "GET /v1/models", "GET /health", "GET /metrics"}
    for op in operations:
        if mode is GenerationMode.NEGATIVE and op.method.upper() == "GET":
            continue  # nothing to negate: the GET routes take no parameters

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=20, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            case.call_and_validate(checks=CHECKS)

        run()


def test_schema_forbids_unknown_fields(api_schema):
    raw = api_schema.raw_schema
    body = raw["components"]["schemas"]["CompletionRequest"]
    assert body.get("additionalProperties") is False
    assert {"method", "method_params", "top_k", "min_p", "stream_options"} <= set(body["properties"])
    for path in raw["paths"].values():
        for op in path.values():
            assert "422" not in op["responses"]  # validation errors are 400, as documented
