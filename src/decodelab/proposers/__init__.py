"""Proposers: anything that proposes draft tokens. Each has `propose(ctx, limit) -> Draft` and
`observe(ctx, draft, verdict, logits)`; none of them verifies anything (verify.py does)."""
