"""`pld`: prompt lookup decoding — drafts copied from earlier in the context (Saxena, 2023)."""

from __future__ import annotations

from ..proposers.lookup import PromptLookup, check_ngram_sizes
from .registry import Param, register


@register("pld", lossless=True,
          description="Prompt lookup: the tokens that followed the last n-gram's earlier occurrence.",
          paper="Prompt Lookup Decoding (Saxena, 2023; no arXiv id)",
          params={"max_ngram_size": Param(3, 1, 16), "num_draft_tokens": Param(10, 1, 64),
                  "min_ngram_size": Param(1, 1, 16)}, batched=True, continuous=True, proposers=True,
          check=lambda p: check_ngram_sizes(p["min_ngram_size"], p["max_ngram_size"]))
def pld(ctx):
    return lambda c: PromptLookup(c.params["max_ngram_size"], c.params["num_draft_tokens"], c.params["min_ngram_size"])
