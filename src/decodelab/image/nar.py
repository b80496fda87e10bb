"""NAR: anti-diagonal ("next-neighbour") decoding with a horizontal and a vertical head.

Neighboring Autoregressive Modeling for Efficient Visual Generation (He et al., arXiv 2503.10696).
Step d feeds the tokens of diagonal d-1 (all of diagonals ≤ d-1 are context under the
distance mask of layouts.py) and samples every token of diagonal d at once, each from the mean of
the horizontal head's logits at its left neighbour and the vertical head's at the one above:
2n-1 forward passes for an n×n grid. The model (builtin/digits/nar) is trained with that mask
and those averaged logits. Deviation from the paper: the vertical head is a second linear
read-out of the shared trunk (extra output rows of the same Llama), not an extra transformer
block, so the directory stays a standard Hugging Face Llama.
"""

from __future__ import annotations

import torch

from . import layouts
from .methods import _stats, register, sample
from .model import ImageModel


def nar_step_logits(model: ImageModel, labels: torch.Tensor, tokens: torch.Tensor, d: int) -> torch.Tensor:
    """tokens [B, N] (undecoded = placeholders) → guided, processed probs [B, N, K], right on
    diagonal d. Cached: feeds only diagonal d-1 (the class token for d = 0) — its tokens see no
    later diagonal, so their cached states never go stale."""
    spec = model.spec
    b, n = tokens.shape
    ids = torch.cat([tokens.new_zeros(b, 1), tokens], dim=1)
    mask = layouts.nar_mask(spec.height, spec.width)
    if model.kv_cache:
        dist = torch.cat([torch.tensor([-1]), layouts.diagonals(spec.height, spec.width)])
        fed = torch.nonzero(dist == d - 1).flatten()
        slots = fed.expand(b, -1)
        attend = torch.cat([mask[fed], torch.zeros(len(fed), 1, dtype=torch.bool)], dim=1).expand(b, -1, -1)
        outs = model.cached_forward(labels, ids[:, fed], slots, torch.ones_like(slots, dtype=torch.bool), attend)
        cond, uncond = (None if out is None else out.new_zeros(b, n + 1, out.shape[-1]).index_copy(1, fed, out)
                        for out in outs)
    else:
        positions = torch.arange(n + 1).expand(b, -1)
        cond, uncond = model.guided_forward(labels, ids, positions, mask.expand(b, -1, -1))

    def combine(out):
        return layouts.nar_logits(out, spec.levels, spec.vertical_offset, spec.height, spec.width)

    return model.processing.probs(combine(cond), None if uncond is None else combine(uncond))


@register("nar", description="NAR: all tokens of one anti-diagonal per pass (2n-1 passes), two heads",
          exact=False, paper="Neighboring Autoregressive Modeling for Efficient Visual Generation (arXiv 2503.10696)",
          variant="nar")
def nar(model: ImageModel, labels: torch.Tensor, gens: list[torch.Generator]) -> tuple[torch.Tensor, list[dict]]:
    spec = model.spec
    dist = layouts.diagonals(spec.height, spec.width)
    tokens = torch.zeros(len(labels), spec.n, dtype=torch.long)
    steps = int(dist.max()) + 1
    for d in range(steps):
        probs = nar_step_logits(model, labels, tokens, d)
        for p in torch.nonzero(dist == d).flatten().tolist():
            tokens[:, p] = sample(probs[:, p], gens)
    return tokens, [_stats(steps, steps=steps) for _ in range(len(labels))]
