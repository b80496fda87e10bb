"""The target's own first ℓ layers draft a chain, with DEL's online choice of ℓ and the draft length d.

LayerSkip (Elhoushi et al., arXiv:2404.16710) drafts with an early exit of the target and verifies with
the full model. DEL (Zarch et al., "DEL: Context-Aware Dynamic Exit Layer for Efficient Self-Speculative
Decoding", arXiv:2504.05598) picks ℓ and d before each round by maximising tokens per loaded layer,

    TPL(ℓ, d) = [(1 − α_ℓ^{d+1}) / (1 − α_ℓ)] / (d·ℓ + L),

where α_ℓ, the acceptance rate of drafts from layer ℓ, is estimated for every layer at once from
"shadow tokens": the verify forward's hidden state after layer ℓ, sent through the final norm + LM
head, at the positions whose target token is now known (the pending token and the accepted drafts).
α_ℓ is an exponential moving average of [shadow token == emitted token], starting from the prior
α_ℓ = 0.5·ℓ/L. With a fixed exit layer the draft length is fixed too (LayerSkip's static setting).

KV cache: LayerSkip shares one cache between draft and verify — layers < ℓ compute the same keys and
values for the same tokens either way, so the verify pass reuses the draft's and starts at layer ℓ.
On the native backend this is what happens (`SharedExit` below): drafts go into the target's own cache
and the verify pass starts at layer ℓ for every drafted token. On the transformers adapter each exit
layer keeps its own cache (a `DraftModel` session): reusing the target's cache would need a forward that
skips the first ℓ layers for some positions, which transformers' model classes do not offer without
patching them. There the first ℓ layers run twice over accepted tokens, and a newly chosen ℓ prefills
the context through its layers once; at most `MAX_SESSIONS` exits keep their caches (least recently
used dropped).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from ..errors import ModelError, UserError
from ..model.early_exit import early_exit_lm, exit_tokens, num_layers
from ..verify import Draft, Verdict
from .draft_model import DraftModel

MAX_SESSIONS = 4
SMOOTHING = 0.1  # weight of one shadow-token observation in the moving average α_ℓ


def tokens_per_layer(alpha: float, layer: int, d: int, total: int) -> float:
    """DEL's TPL(ℓ, d): expected emitted tokens per round ÷ layers run per round (d·ℓ draft + L verify)."""
    expected = d + 1.0 if alpha >= 1.0 else (1.0 - alpha ** (d + 1)) / (1.0 - alpha)
    return expected / (d * layer + total)


def best_plan(alphas: dict[int, float], total: int, max_draft: int) -> tuple[int, int]:
    """(ℓ, d) maximising TPL over ℓ in alphas and d ∈ 1..max_draft (ties: shallower ℓ, shorter d)."""
    plans = [(layer, d) for layer in sorted(alphas) for d in range(1, max_draft + 1)]
    return max(plans, key=lambda ld: tokens_per_layer(alphas[ld[0]], ld[0], ld[1], total))


class SelfDraft:
    """Drafts with an early exit of the target; exit_layer = 0 lets DEL choose ℓ and d every round."""

    def __init__(self, ctx, exit_layer: int, num_draft_tokens: int):
        self.total = num_layers(ctx.lm)
        if exit_layer > self.total:
            raise UserError(f"exit_layer must be in 1..{self.total} for {ctx.lm.name} (0 = chosen by DEL)")
        if exit_layer == 0 and self.total < 2:
            raise ModelError(f"{ctx.lm.name}: one layer leaves no earlier exit to draft with")
        self.exit_layer = exit_layer
        self.max_draft = num_draft_tokens
        self.wants_hidden = exit_layer == 0  # the loop then passes the verify forward's hidden states
        self.layers = list(range(1, self.total))  # DEL's candidate exits
        self.alpha = torch.tensor([0.5 * ell / self.total for ell in self.layers], dtype=torch.float64)
        self.drafters: OrderedDict[int, DraftModel] = OrderedDict()

    def plan(self) -> tuple[int, int]:
        """(ℓ, d) for the next round."""
        if self.exit_layer:
            return self.exit_layer, self.max_draft
        return best_plan(dict(zip(self.layers, self.alpha.tolist())), self.total, self.max_draft)

    def propose(self, ctx, limit: int) -> Draft:
        layer, d = self.plan()
        drafter = self._drafter(ctx, layer)
        drafter.num_draft_tokens = d
        return drafter.propose(ctx, limit)

    def _drafter(self, ctx, layer: int) -> DraftModel:
        if layer not in self.drafters:
            exit_lm = early_exit_lm(ctx.lm, layer)
            target = getattr(ctx, "target_session", None)
            shared = SharedExit(target, exit_lm, layer) if hasattr(target, "exit_forward") else None
            self.drafters[layer] = DraftModel(ctx, exit_lm, self.max_draft, stop_threshold=1.0, session=shared)
            if len(self.drafters) > MAX_SESSIONS:
                self.drafters.popitem(last=False)
        self.drafters.move_to_end(layer)
        return self.drafters[layer]

    def observe(self, ctx, draft: Draft, verdict: Verdict, logits: torch.Tensor,
                hidden: tuple[torch.Tensor, ...] | None = None) -> None:
        """Update every α_ℓ from the shadow tokens at the pending position and the accepted drafts."""
        if hidden is None:
            return
        rows = [0] + [1 + i for i in verdict.path]  # verify positions whose target token is known
        shadow = exit_tokens(ctx.lm, hidden, self.layers, rows)  # [L − 1, n]
        match = (shadow.cpu() == torch.tensor(verdict.tokens)).to(torch.float64)
        n = len(rows)
        decay = (1.0 - SMOOTHING) ** torch.arange(n - 1, -1, -1, dtype=torch.float64)  # oldest weighs least
        self.alpha = (1.0 - SMOOTHING) ** n * self.alpha + SMOOTHING * (match @ decay)


class SharedExit:
    """The draft session of an early exit that drafts into the *target's* cache (native backend).

    LayerSkip's shared KV cache: the first ℓ layers' keys and values written while drafting are the ones
    the verify pass would compute, so `NativeSession.exit_forward` keeps them and the verifying forward
    runs layers < ℓ only for the token no draft step fed. No second cache, no re-prefill when ℓ changes.
    """

    def __init__(self, target, exit_lm, layer: int):
        self.target, self.lm, self.layer = target, exit_lm, layer

    def sync(self, context: list[int]) -> list[int]:
        """What the target's cache lacks of `context` (nothing, by the speculative loop's invariant)."""
        return context[self.target.length:]

    def forward(self, feed: list[int], last_only: bool = True) -> torch.Tensor:
        for token in feed:
            logits = self.target.exit_forward(token, self.layer)
        return logits  # [1, 1, V] after the last fed token
