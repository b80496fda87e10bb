"""Helpers for the server tests: a tiny model with a tiny chat template, and a live uvicorn on loopback."""

from __future__ import annotations

import copy
import socket
import threading
import time
from contextlib import contextmanager

from fakes import tiny_lm

# role-tagged lines, then the assistant's tag: enough to exercise apply_chat_template end to end
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def chat_lm(seed: int = 0):
    """A tiny random Llama whose (copied) byte tokenizer has CHAT_TEMPLATE."""
    lm = tiny_lm("llama", seed=seed)
    lm.tokenizer = copy.deepcopy(lm.tokenizer)
    lm.tokenizer.chat_template = CHAT_TEMPLATE
    return lm


@contextmanager
def live_server(app):
    """Run `app` with uvicorn in a thread on a free loopback port; yield the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
