"""Fixtures for the server tests (helpers in serve_utils.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_utils import chat_lm, live_server  # noqa: E402


@pytest.fixture(scope="session")
def served_lm():
    return chat_lm()


@pytest.fixture(scope="module")
def live(served_lm):
    """A live server (no API key) and an `openai.OpenAI` client pointed at it."""
    openai = pytest.importorskip("openai")
    from decodelab.serve import create_app

    app = create_app(served_lm, max_tokens=64)
    with live_server(app) as url:
        yield url, openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
