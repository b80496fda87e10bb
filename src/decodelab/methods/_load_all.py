"""Importing this module registers every built-in method."""

from . import autoregressive  # noqa: F401
