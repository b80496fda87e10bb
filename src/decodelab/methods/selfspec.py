"""`selfspec`: self-speculative decoding — the target's first ℓ layers draft, the full model verifies.

LayerSkip (Elhoushi et al., arXiv:2404.16710) with DEL's online choice of the exit layer and draft
length (Zarch et al., "DEL: Context-Aware Dynamic Exit Layer for Efficient Self-Speculative Decoding",
arXiv:2504.05598). Needs no second model: the draft shares the target's weight tensors.
"""

from __future__ import annotations

from ..proposers.self_draft import SelfDraft
from .registry import Param, register


@register("selfspec", lossless=True,
          description="Self-speculative decoding: the target's first layers draft (LayerSkip); "
                      "DEL picks the exit layer and draft length online.",
          paper="LayerSkip (arXiv:2404.16710); DEL: Context-Aware Dynamic Exit Layer for Efficient "
                "Self-Speculative Decoding (arXiv:2504.05598)",
          params={"exit_layer": Param(0, 0, 1024, help="draft with the first ℓ layers; 0 = chosen online by DEL"),
                  "num_draft_tokens": Param(6, 1, 64, help="maximum draft length (the fixed length when "
                                            "exit_layer > 0)")}, batched=True, continuous=True, proposers=True)
def selfspec(ctx):
    return lambda c: SelfDraft(c, c.params["exit_layer"], c.params["num_draft_tokens"])
