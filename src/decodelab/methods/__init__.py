"""Decoding methods, one file each, registered by name (see registry.py)."""

from .registry import MethodInfo, Param, get, methods, register

__all__ = ["MethodInfo", "Param", "get", "methods", "register"]
