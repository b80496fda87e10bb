"""`tree`: a draft model proposes a token tree (top-b branches, greedy chains), verified in one pass.

SpecInfer (arXiv:2305.09781) tree verification with multi-step speculative sampling; the draft is
sped up by a second, n-gram stage as in staged speculative decoding (arXiv:2308.04623).
"""

from __future__ import annotations

from ..proposers.draft_model import resolve_draft
from ..proposers.draft_tree import DraftTree
from .registry import Param, register


@register("tree", lossless=True,
          description="Tree speculation: the draft's top-b next tokens, each extended greedily; the draft "
                      "itself sped up by prompt lookup.",
          paper="SpecInfer (arXiv:2305.09781); Accelerating LLM Inference with Staged Speculative "
                "Decoding (arXiv:2308.04623)",
          params={"draft": Param("auto", help="draft model: builtin name, directory or Hub id"),
                  "branching": Param(3, 1, 16, help="children of the pending token (the draft's top-b)"),
                  "depth": Param(5, 1, 32, help="tokens per branch: each child extended greedily"),
                  "ngram_stage": Param(True, choices=(True, False),
                                       help="let prompt lookup speculate for the draft (staged speculation)")}, batched=True, continuous=True, proposers=True)
def tree(ctx):
    draft = resolve_draft(ctx.lm, ctx.params["draft"])
    p = ctx.params
    return lambda c: DraftTree(c, draft, p["branching"], p["depth"], bool(p["ngram_stage"]))
