"""Importing this module registers every built-in method (each module in this package)."""

import importlib
import pkgutil

_SKIP = {"registry", "loop", "_load_all"}

for _mod in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
    if _mod.name not in _SKIP:
        importlib.import_module(f"{__package__}.{_mod.name}")
