"""What a proposer is, and the shared base for proposers that learn nothing from verification.

A proposer drafts for one row (`methods/loop.py` runs one per row of a batch):

- `propose(ctx, limit) -> Draft`: a chain or tree of depth ≤ limit continuing `ctx.ids()` (whose last
  token is the pending one), with the draft distribution q per node when it samples;
- `observe(ctx, draft, verdict, logits)`: learn from the verify step (logits [1 + nodes, V]); a proposer
  with `wants_hidden = True` also gets `hidden=`, the verify forward's hidden states.
"""

from __future__ import annotations


class Stateless:
    def observe(self, ctx, draft, verdict, logits) -> None:
        return None
