"""Fast-forward for plain greedy and sampling under a constraint: the speculative loop with no proposer.

Where the grammar forces the next tokens (a JSON key, the rest of a choice), `_draft` in
methods/loop.py feeds them as the step's draft; with `NoDraft`, a proposer that never drafts, every
other step is a plain one-token step. Exactness is the verifier's (verify.py, "Fast Inference from
Transformers via Speculative Decoding", arXiv:2211.17192): any draft is verified against the masked p,
so at temperature 0 the tokens are constrained greedy's and when sampling the output distribution is
constrained `sample`'s (a forced token has p = 1 under the mask and is accepted; should the mask ever
admit another tokenization, verification still decides exactly). The batched loop
(`batched_loop`) keeps one generator per row and each row's draws depend only on its own history, so
a row's output does not depend on the batch it is in.

What it changes: which text a given seed yields once a forced run has occurred (the plain loop draws
one multinomial per token, the verifier one uniform per forced draft token) — the distribution is the
same — and steps go through the verify path. The hook for methods/autoregressive.py is one line in
`greedy` / `sample`: `if ctx.sampler.constraint is not None: return fast_forward_loop(ctx)`.
"""

from __future__ import annotations

from ..verify import Draft


class NoDraft:
    """A proposer that never proposes: the loop's own fast-forward is the only draft."""

    def propose(self, ctx, limit: int) -> Draft:
        return Draft()

    def observe(self, ctx, draft, verdict, logits, **extra) -> None:
        return None


def fast_forward_loop(ctx):
    """Plain decoding (greedy or sampling, per `ctx.sampler`) that feeds grammar-forced tokens at once."""
    from ..methods.autoregressive import no_draft
    from ..methods.loop import speculative_loop

    return speculative_loop(ctx, no_draft(ctx))
