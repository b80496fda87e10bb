"""MuLo-SD: multi-scale speculative decoding — a low-resolution draft, up-sampled, verified with a
relaxed neighbourhood test, rejected islands resampled locally. Lossy by design.

Multi-scale Local Speculative Decoding for Image Generation (Qualcomm, arXiv 2601.05149; no public
code — the cycle follows a secondary summary). One cycle on our toy:
1. the drafter M_q (a raster model on the 2×2-pooled, re-quantised grid: builtin/digits/drafter
   for 8×8, builtin:digits for 16×16) samples one whole low-resolution row given the pooled
   accepted prefix;
2. nearest-neighbour ×2 up-sampling (the training-free up-sampler) gives two target rows;
3. the target M_p scores all of them in one pass; token x̃_i is accepted iff
   Σ_{x ∈ B_k(x̃_i)} p_i(x) ≥ τ, B_k = the k gray levels nearest x̃_i;
4. the rejected set grows by Chebyshev radius l (inside the new rows only), splits into
   8-connected islands, and the islands are resampled by the target concurrently, one token per
   island per pass, in raster order, each token conditioned on the accepted tokens before it.
Target passes = Σ_cycles (1 + largest island); drafter passes are counted separately.

With `kv_cache=True` (default) both models feed the slot cache (cache.py) and each pass refeeds
only from the first slot whose input or visibility changed since it was fed: the drafter from the
low-resolution row the new pooled prefix replaced, the target's verify pass from the first slot
after the previous cycle's first rejected token, each island pass from the cycle's first rejected
token to the furthest island head (later accepted tokens must not see rejected drafts). Same
passes and the same tokens as recomputing the sequence (`kv_cache=False`; tested).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from ..methods.registry import Param
from .cache import window_probs
from .data import dequantise, pool_pixels, quantise
from .methods import register, sample
from .model import ImageModel


def accepted_mask(p: torch.Tensor, draft: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    """p [M, K], draft [M] → bool [M]: the probability of the k levels nearest the draft ≥ τ."""
    levels = torch.arange(p.shape[-1])
    dist = (levels[None, :] - draft[:, None]).abs().float() + levels[None, :] * 1e-3  # ties: lower level
    nearest = dist.topk(k, dim=-1, largest=False).indices  # [M, k]
    return p.gather(-1, nearest).sum(-1) >= tau


def expand_islands(rejected: np.ndarray, radius: int) -> list[list[tuple[int, int]]]:
    """rejected [h, W] bool → 8-connected islands of the rejected set grown by Chebyshev `radius`,
    each a raster-ordered list of (row, col)."""
    h, w = rejected.shape
    grown = np.zeros_like(rejected)
    for i, j in zip(*np.nonzero(rejected)):
        grown[max(0, i - radius):i + radius + 1, max(0, j - radius):j + radius + 1] = True
    seen, islands = np.zeros_like(grown), []
    for i, j in zip(*np.nonzero(grown)):
        if seen[i, j]:
            continue
        stack, island = [(i, j)], []
        seen[i, j] = True
        while stack:
            a, b = stack.pop()
            island.append((int(a), int(b)))
            for da in (-1, 0, 1):
                for db in (-1, 0, 1):
                    x, y = a + da, b + db
                    if 0 <= x < h and 0 <= y < w and grown[x, y] and not seen[x, y]:
                        seen[x, y] = True
                        stack.append((x, y))
        islands.append(sorted(island))
    return islands


def _downsample(tokens: torch.Tensor, rows: int, width: int, levels: int) -> torch.Tensor:
    """The first `rows` (even) target rows [B, rows·W] → pooled, re-quantised tokens [B, rows/2 · W/2]."""
    pixels = dequantise(tokens[:, : rows * width].reshape(len(tokens), rows, width).numpy(), levels)
    return torch.from_numpy(quantise(pool_pixels(pixels), levels)).reshape(len(tokens), -1)


def draft_row(drafter: ImageModel, labels, prefix: torch.Tensor, row: int, gens) -> torch.Tensor:
    """Sample low-resolution row `row` [B, w] given the pooled prefix rows (raster, one pass a token).
    Cached: the first pass refeeds from low-resolution row `row`-1's first token on (the drafter fed
    its own draft there; the pooled accepted rows replace it)."""
    w, b = drafter.spec.width, len(labels)
    tokens = torch.zeros(b, drafter.spec.n, dtype=torch.long)
    tokens[:, : row * w] = prefix
    start = max(0, (row - 1) * w + 1)
    for p in range(row * w, (row + 1) * w):
        tokens[:, p] = sample(window_probs(drafter, labels, tokens, [start] * b, [p + 1] * b)[:, p], gens)
        start = p + 1
    return tokens[:, row * w:(row + 1) * w]


def resample_islands(model: ImageModel, labels, tokens, known, islands: list[list[list[int]]], gens) -> None:
    """Resample every row's islands (raster positions), one token per island per pass; a row alone
    would need 1 + its largest island's size passes per cycle (what its stats count). Cached: each
    pass refeeds a row's slots from its first island token to its furthest island head."""
    queues = [[list(island) for island in row_islands] for row_islands in islands]
    first = [min((p for island in row for p in island), default=0) for row in islands]
    while any(q for row in queues for q in row):
        heads = [[island[0] for island in row if island] for row in queues]
        ends = [max(h) + 1 if h else 0 for h in heads]
        probs = window_probs(model, labels, tokens, [f if e else 0 for f, e in zip(first, ends)], ends, known)
        for b, row in enumerate(queues):
            for island in row:
                if island:
                    p = island.pop(0)
                    tokens[b, p] = sample(probs[b, p][None], [gens[b]])[0]
                    known[b, p] = True


@register("mulo", description="MuLo-SD: low-res draft rows, ×2 up-sampling, relaxed neighbourhood "
          "acceptance, local resampling of rejected islands (lossy)", exact=False,
          paper="Multi-scale Local Speculative Decoding for Image Generation (arXiv 2601.05149)",
          tau=Param(0.3, 0.0, 1.0, help="acceptance threshold on the neighbourhood probability"),
          neighbours=Param(2, 1, 256, help="k: gray levels in the neighbourhood B_k"),
          radius=Param(1, 0, 64, help="l: Chebyshev growth of the rejected set"),
          drafter=Param("auto", help="drafter model (auto: the one trained beside the target)"))
def mulo(model: ImageModel, labels: torch.Tensor, gens: list[torch.Generator], tau: float = 0.3,
         neighbours: int = 2, radius: int = 1, drafter: str = "auto", lm=None) -> tuple[torch.Tensor, list[dict]]:
    spec = model.spec
    h, w, k = spec.height, spec.width, spec.levels
    draft_model = ImageModel(_drafter(lm or model.lm, drafter), model.processing, kv_cache=model.kv_cache)
    if (draft_model.spec.height * 2, draft_model.spec.width * 2) != (h, w):
        raise UserError(f"drafter grid {draft_model.spec.height}×{draft_model.spec.width} is not half of {h}×{w}")
    b = len(labels)
    tokens = torch.zeros(b, spec.n, dtype=torch.long)
    known = torch.zeros(b, spec.n, dtype=torch.bool)
    rows_stats = [{"forward_passes": 0, "accepted": 0, "resampled": 0,
                   "draft_forward_passes": draft_model.spec.n} for _ in range(b)]
    stale = [0] * b  # per image: the first target slot whose cached state may differ from recomputation
    for r in range(h // 2):
        low = draft_row(draft_model, labels, _downsample(tokens, 2 * r, w, k), r, gens)  # [B, w/2]
        block = slice(2 * r * w, (2 * r + 2) * w)
        tokens[:, block] = low.repeat_interleave(2, dim=1).repeat(1, 2)  # nearest ×2 up-sampling
        p = window_probs(model, labels, tokens, stale, [(2 * r + 2) * w] * b)[:, block]
        ok = accepted_mask(p.reshape(-1, k), tokens[:, block].reshape(-1), min(neighbours, k), tau).view(b, 2, w)
        islands = []
        for row in range(b):
            found = expand_islands(~ok[row].numpy(), radius)
            islands.append([[(2 * r + i) * w + j for i, j in island] for island in found])
            redo = {p for island in islands[-1] for p in island}
            rows_stats[row]["resampled"] += len(redo)
            rows_stats[row]["forward_passes"] += 1 + max(map(len, islands[-1]), default=0)
            rows_stats[row]["accepted"] += 2 * w - len(redo)
            stale[row] = min(redo) + 1 if redo else (2 * r + 2) * w
        known[:, block] = True
        for row, row_islands in enumerate(islands):
            for island in row_islands:
                known[row, island] = False
        resample_islands(model, labels, tokens, known, islands, gens)
        known[:, block] = True
    return tokens, rows_stats


def _drafter(lm, name: str):
    from .generate import companion

    if name != "auto":
        from ..model import load

        return load(name)
    if lm.name == "builtin:digits16":
        from ..model import load

        return load("builtin:digits")
    return companion(lm, "drafter")
