"""Errors users see: one line each, naming the problem."""


class DecodelabError(Exception):
    """Base class: the CLI prints the message on one line and exits non-zero."""


class ModelError(DecodelabError):
    """A model could not be loaded or does not support what was asked of it."""


class UserError(DecodelabError, ValueError):
    """Bad input from the user — a parameter, a prompt, a path: the CLI prints it on one line (exit 2),
    the server answers 400. Anything else that escapes is a bug (exit 3, HTTP 500)."""
