"""Argument parsing for `decodelab bench` (the runner lives in runner.py)."""


def add_arguments(p) -> None:
    p.add_argument("--model", default=None)
    p.add_argument("--list", action="store_true", help="list suites and exit")
    p.set_defaults(func=lambda args: run(args))


def run(args) -> None:
    raise ValueError("decodelab bench is not implemented yet")
