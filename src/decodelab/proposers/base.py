"""Shared base for proposers that learn nothing from verification."""

from __future__ import annotations


class Stateless:
    def observe(self, ctx, draft, verdict, logits) -> None:
        return None
