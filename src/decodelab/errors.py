"""Errors users see: one line each, naming the problem."""


class DecodelabError(Exception):
    """Base class: the CLI prints the message on one line and exits non-zero."""


class ModelError(DecodelabError):
    """A model could not be loaded or does not support what was asked of it."""
