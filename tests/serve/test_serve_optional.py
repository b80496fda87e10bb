"""The server's dependencies are an extra: without FastAPI / uvicorn the rest of the CLI still works,
and `decodelab serve` says in one line which extra to install."""

import subprocess
import sys

BLOCK = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('fastapi', 'uvicorn', 'starlette', 'prometheus_client'):
            raise ImportError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Block())
from decodelab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run(*args):
    return subprocess.run([sys.executable, "-c", BLOCK, *args], capture_output=True, text=True, timeout=120)


def test_cli_works_without_the_serve_extra():
    r = _run("methods", "--json")
    assert r.returncode == 0, r.stderr
    assert '"pld"' in r.stdout


def test_serve_without_the_extra_is_one_line():
    r = _run("serve", "--port", "8765")
    assert r.returncode != 0
    lines = [line for line in r.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and "decodelab[serve]" in lines[0] and "Traceback" not in r.stderr
