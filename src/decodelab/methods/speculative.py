"""`speculative`: a draft model proposes a chain, the target verifies it in one pass.

Leviathan et al., "Fast Inference from Transformers via Speculative Decoding" (arXiv:2211.17192),
with SpecDec++'s threshold rule for the draft length (arXiv:2405.19715).
"""

from __future__ import annotations

from ..proposers.draft_model import BatchDrafter, DraftModel, resolve_draft
from .registry import Param, register


@register("speculative", lossless=True,
          description="Speculative decoding with a draft model (same tokenizer) and adaptive draft length.",
          paper="Fast Inference from Transformers via Speculative Decoding (arXiv:2211.17192); "
                "SpecDec++ (arXiv:2405.19715)",
          params={"draft": Param("auto", help="draft model: builtin name, directory or Hub id"),
                  "num_draft_tokens": Param(6, 1, 64, help="maximum draft length"),
                  "stop_threshold": Param(0.8, 0.0, 1.0, help="stop drafting when the draft's estimate of "
                                          "P(some draft rejected) exceeds this; 1 = fixed length")}, batched=True, continuous=True, proposers=True)
def speculative(ctx):
    draft = resolve_draft(ctx.lm, ctx.params["draft"])
    p = ctx.params
    if (ctx.batch_size > 1 or ctx.open) and draft.backend in ("native", "transformers"):
        shared = BatchDrafter(ctx, draft, p["num_draft_tokens"], p["stop_threshold"])  # one draft forward per step
        return shared.row
    return lambda c: DraftModel(c, draft, p["num_draft_tokens"], p["stop_threshold"])
