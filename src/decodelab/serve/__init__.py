"""`decodelab serve`: an OpenAI-compatible HTTP server for every decodelab method (docs/SERVING.md).

`create_app(lm, ...)` builds the FastAPI app; `decodelab serve` (serve/cli.py) runs it with uvicorn.
FastAPI is an optional dependency (the `serve` extra), imported only when the server is used, so the
rest of the command line works without it.
"""

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
