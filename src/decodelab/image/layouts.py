"""Sequence layouts and attention masks of the three model variants, shared by training and decoding.

* raster — `[class, x_0 … x_{N-2}]`, the output at slot p predicts x_p (model.py `raster_probs`).
* LPD (Locality-aware Parallel Decoding, arXiv 2507.01957) — `[class, x_0 … x_{N-1}, q_0 … q_{N-1}]`:
  every token at its raster position id p+1, and a *position query* q_p = the `<mask>` token at
  position id p+1 (with RoPE the position query is the mask embedding rotated to the target
  position). Tokens are split into groups g(p); context is block-causal by group and bidirectional
  inside a group; a query sees the context of earlier groups and the queries of its own group;
  nothing attends to queries. Training draws a random order and group schedule per sample;
  decoding feeds the decoded groups as context and reads the queries of the next group — the same
  mask, so one forward pass per group.
* NAR (Neighboring Autoregressive modeling, arXiv 2503.10696) — `[class, x_0 … x_{N-1}]`, a token at
  Manhattan distance d = i+j attends the class and every token at distance ≤ d. x_{i,j}'s logits are
  the mean of the horizontal head at (i, j-1) and the vertical head at (i-1, j) (one head where the
  other neighbour is outside the grid; both heads at the class token for (0, 0)).
"""

from __future__ import annotations

import math

import torch

from ..errors import UserError


def group_sizes(n: int, steps: int) -> list[int]:
    """LPD's increasing-cosine schedule: group k holds round(n·(cos(π/2·(k-1)/steps) - cos(π/2·k/steps)))
    tokens (≥ 1; the largest groups absorb any rounding surplus so that the sizes sum to n).

    Reproduces the authors' 16×16 / 20-step schedule [1, 2, 4, 5, 7, 8, 10, …, 20, 20, 20];
    group_sizes(64, 8) == [1, 4, 6, 8, 10, 11, 12, 12].
    """
    if not 1 <= steps <= n:
        raise UserError(f"steps must be in [1, {n}], got {steps}")
    edges = [math.cos(math.pi / 2 * k / steps) for k in range(steps + 1)]
    sizes = [max(1, round(n * (a - b))) for a, b in zip(edges, edges[1:])]
    while sum(sizes) > n:
        big = max(range(steps), key=lambda k: (sizes[k], k))
        sizes[big] -= 1
    sizes[-1] += n - sum(sizes)
    return sizes


def lpd_mask(gid: torch.Tensor) -> torch.Tensor:
    """gid [B, N] group of every raster position → attend [B, 1+2N, 1+2N] bool (layout above)."""
    b, n = gid.shape
    t = 1 + 2 * n
    attend = torch.zeros(b, t, t, dtype=torch.bool)
    earlier_or_same = gid[:, None, :] <= gid[:, :, None]  # [B, query row i, key j]: g(j) ≤ g(i)
    attend[:, 1:n + 1, 1:n + 1] = earlier_or_same
    attend[:, n + 1:, 1:n + 1] = gid[:, None, :] < gid[:, :, None]
    attend[:, n + 1:, n + 1:] = gid[:, None, :] == gid[:, :, None]
    attend[:, :, 0] = True
    attend |= torch.eye(t, dtype=torch.bool)
    return attend


def lpd_inputs(tokens: torch.Tensor, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [B, N] (placeholders where unknown) → ids, positions [B, 1+2N] (slot 0 = class)."""
    b, n = tokens.shape
    ids = torch.cat([tokens.new_zeros(b, 1), tokens.clamp(min=0), tokens.new_full((b, n), mask_id)], dim=1)
    pos = torch.arange(1, n + 1)
    positions = torch.cat([torch.zeros(1, dtype=torch.long), pos, pos]).expand(b, -1)
    return ids, positions


def diagonals(height: int, width: int) -> torch.Tensor:
    """[N] Manhattan distance i + j of every raster position."""
    return (torch.arange(height)[:, None] + torch.arange(width)[None, :]).flatten()


def nar_mask(height: int, width: int) -> torch.Tensor:
    """attend [1+N, 1+N]: a token at distance d sees the class and all tokens at distance ≤ d."""
    d = torch.cat([torch.tensor([-1]), diagonals(height, width)])
    attend = d[None, :] <= d[:, None]
    attend[:, 0] = True
    attend[0] = False
    attend[0, 0] = True
    return attend


def nar_sources(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(horizontal, vertical) source slot of every raster position [N] (slot 0 = class, p ↦ p+1);
    -1 where that neighbour is outside the grid. (0, 0) takes both heads from the class slot."""
    i = torch.arange(height)[:, None].expand(height, width).flatten()
    j = torch.arange(width)[None, :].expand(height, width).flatten()
    p = torch.arange(height * width)
    horizontal = torch.where(j > 0, p, -1)  # slot of (i, j-1) is (p-1)+1 = p
    vertical = torch.where(i > 0, p - width + 1, -1)
    horizontal[0] = vertical[0] = 0
    return horizontal, vertical


def nar_logits(out: torch.Tensor, levels: int, vertical_offset: int, height: int, width: int) -> torch.Tensor:
    """out [B, 1+N, V] → logits of every raster position [B, N, K]: mean of the available heads."""
    horizontal, vertical = nar_sources(height, width)
    h_head = out[:, horizontal.clamp(min=0), :levels]
    v_head = out[:, vertical.clamp(min=0), vertical_offset:vertical_offset + levels]
    hw = (horizontal >= 0).float()[None, :, None]
    vw = (vertical >= 0).float()[None, :, None]
    return (h_head * hw + v_head * vw) / (hw + vw)
