"""LPD: locality-aware generation order, scheduled groups of tokens decoded in parallel.

Locality-aware Parallel Decoding for Efficient Autoregressive Image Generation (Zhang et al.,
arXiv 2507.01957). The model (builtin/digits/lpd) is trained over uniformly random orders and
group schedules with position queries (layouts.py); decoding feeds the decoded groups as context
and reads the position queries of the next group — one forward pass per group.

The order follows the authors' `orders/lpd_order.py`: group 0 is a random cell; for each later
group, every unselected cell is scored Σ 1/‖c - s‖₂ over the selected cells s in its
8-neighbourhood; candidates with score ≥ 1 are taken in descending score order (random ties)
unless within Chebyshev distance ≤ ρ of a cell already in this group; the rest of the group is
filled by farthest-point sampling from this group's members. Group sizes follow the
increasing-cosine schedule (layouts.group_sizes). Guidance: `cfg_schedule="constant"` (default)
uses cfg_scale for every token; `"linear"` is the authors' ramp, scale = 1 + (cfg - 1)·rank/N for
the token decoded rank-th (0-based, in group order then order inside the group).
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError
from ..methods.registry import Param
from . import layouts
from .methods import _stats, register, sample
from .model import ImageModel


def _neighbour_score(cell, selected: set, width: int) -> float:
    i, j = divmod(cell, width)
    return sum(1 / math.hypot(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)
               if (di or dj) and ((i + di) * width + j + dj) in selected and 0 <= j + dj < width)


def _chebyshev(a: int, b: int, width: int) -> int:
    return max(abs(a // width - b // width), abs(a % width - b % width))


def _farthest(pool: list[int], members: list[int], width: int, gen: torch.Generator) -> int:
    """The pool cell farthest (Euclidean) from this group's members (random among ties)."""
    if not members:
        return pool[int(torch.randint(len(pool), (), generator=gen))]
    def far(c):
        return min(math.hypot(c // width - m // width, c % width - m % width) for m in members)
    best = max(far(c) for c in pool)
    ties = [c for c in pool if far(c) == best]
    return ties[int(torch.randint(len(ties), (), generator=gen))]


def lpd_order(height: int, width: int, steps: int, rho: int, gen: torch.Generator,
              leads: list | None = None) -> list[list[int]]:
    """Groups of raster positions, in decoding order (sizes = layouts.group_sizes(N, steps)).
    `leads`, if given, receives how many members of each group came from the scored candidates."""
    n = height * width
    groups, selected = [], set()
    for size in layouts.group_sizes(n, steps):
        pool = [c for c in range(n) if c not in selected]
        noise = torch.rand(n, generator=gen)
        score = {c: round(_neighbour_score(c, selected, width), 9) for c in pool}
        candidates = sorted((c for c in pool if score[c] >= 1.0), key=lambda c: (-score[c], noise[c].item()))
        group = []
        for c in candidates:
            if len(group) < size and all(_chebyshev(c, m, width) > rho for m in group):
                group.append(c)
        if leads is not None:
            leads.append(len(group))
        while len(group) < size:
            group.append(_farthest([c for c in pool if c not in group], group, width, gen))
        groups.append(group)
        selected.update(group)
    return groups


def linear_cfg(orders: list[list[list[int]]], n: int, cfg_scale: float) -> torch.Tensor:
    """[B, N] guidance scale of every raster position: 1 + (cfg - 1)·rank/N, rank = its 0-based
    index in the decoding order (groups in order, members in group order)."""
    scale = torch.empty(len(orders), n)
    for row, groups in enumerate(orders):
        flat = torch.tensor([c for group in groups for c in group])
        scale[row, flat] = 1 + (cfg_scale - 1) * torch.arange(n, dtype=torch.float32) / n
    return scale


def _query_probs(model: ImageModel, labels, tokens, attend, gid, k: int,
                 scale: torch.Tensor | None = None) -> torch.Tensor:
    """Probabilities [B, N, K] read from the position queries, right at group k's positions
    (`scale` [B, N]: per-position guidance scales, or None for cfg_scale).
    Cached: feeds group k-1's tokens (the class token for k = 0) and group k's queries only — a
    context token sees no later group, so its cached state never goes stale."""
    b, n = tokens.shape
    ids, positions = layouts.lpd_inputs(tokens, model.spec.mask_id)
    if not model.kv_cache:
        cond, uncond = model.guided_forward(labels, ids, positions, attend)
        return model.gray_probs(cond[:, n + 1:], None if uncond is None else uncond[:, n + 1:], scale)
    fed = [torch.cat([torch.tensor([0]) if k == 0 else torch.nonzero(g == k - 1).flatten() + 1,
                      torch.nonzero(g == k).flatten() + n + 1]) for g in gid]
    slots = torch.stack(fed)  # [B, |g_{k-1}| + |g_k|]: the same group sizes in every row
    rows = torch.arange(b)[:, None]
    mask = torch.cat([attend[rows, slots], torch.zeros(*slots.shape, 1, dtype=torch.bool)], dim=-1)
    slot_scale = None if scale is None else scale.gather(1, (slots - n - 1).clamp(min=0))  # context slots: unused
    probs = model.gray_probs(*model.cached_forward(labels, ids.gather(1, slots), slots, slots <= n, mask,
                                                   positions.gather(1, slots)), slot_scale)
    out = probs.new_zeros(b, 2 * n + 1, model.spec.levels)
    out[rows, slots] = probs
    return out[:, n + 1:]


@register("lpd", description="LPD: locality-aware order, groups decoded in parallel via position queries",
          exact=False, paper="Locality-aware Parallel Decoding for Efficient Autoregressive Image Generation "
          "(arXiv 2507.01957)", variant="lpd",
          steps=Param(0, 0, 4096, help="number of groups (0 = 8 on 8×8, 20 on 16×16)"),
          rho=Param(-1, -1, 64, help="Chebyshev exclusion radius inside a group (-1 = 1 on 8×8, 2 on 16×16)"),
          cfg_schedule=Param("constant", choices=("constant", "linear"), help="guidance per token: constant = "
                             "cfg_scale; linear = 1 + (cfg_scale - 1)·rank/N (the authors' ramp)"))
def lpd(model: ImageModel, labels: torch.Tensor, gens: list[torch.Generator], steps: int = 0,
        rho: int = -1, cfg_schedule: str = "constant") -> tuple[torch.Tensor, list[dict]]:
    spec = model.spec
    n = spec.n
    steps = steps or (8 if n <= 64 else 20)
    rho = rho if rho >= 0 else (1 if n <= 64 else 2)
    if steps > n:
        raise UserError(f"steps must be in [1, {n}] for a {spec.height}×{spec.width} grid, got {steps}")
    orders = [lpd_order(spec.height, spec.width, steps, rho, g) for g in gens]
    gid = torch.empty(len(labels), n, dtype=torch.long)
    for row, groups in enumerate(orders):
        for k, group in enumerate(groups):
            gid[row, group] = k
    tokens = torch.zeros(len(labels), n, dtype=torch.long)
    attend = layouts.lpd_mask(gid)
    scale = linear_cfg(orders, n, model.processing.cfg_scale) if cfg_schedule == "linear" and model.guided else None
    for k in range(steps):
        probs = _query_probs(model, labels, tokens, attend, gid, k, scale)
        for row, (groups, gen) in enumerate(zip(orders, gens)):
            group = torch.tensor(groups[k])
            tokens[row, group] = sample(probs[row, group], [gen] * len(group))
    return tokens, [_stats(steps, steps=steps, order=[g for g in groups]) for groups in orders]
