"""`decodelab serve`: an OpenAI-compatible HTTP server for every decodelab method (docs/SERVING.md).

`create_app(lm, ...)` builds the FastAPI app; `decodelab serve` (serve/cli.py) runs it with uvicorn.
"""

from .app import create_app

__all__ = ["create_app"]
